"""One import run over a stream of rows: header handling, per-row errors, preview and counts, in batches.

Synchronous and pure (the API runs it in a worker thread and upserts each batch it yields), so it holds
one batch, the preview and at most MAX_ERRORS error entries, whatever the file's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from qlara_events.contacts.readers import DEFAULT_LIMITS, LimitExceeded, UnreadableFile
from qlara_events.contacts.rows import Columns, ImportRow, RowError, batches, parse_row

#: Error entries kept for the response; the summary still counts every error.
MAX_ERRORS: Final = 1000


class Import:
    """Counts and samples of one import; iterate ``batches()`` to drive it."""

    def __init__(self, rows: Iterable[list[str]], *, header: bool | None, preview: int,
                 max_rows: int = DEFAULT_LIMITS.max_rows,
                 columns: Columns | None = None) -> None:
        """``header``: True = the first row is a header, False = no header (positional columns or ``columns``),
        None = a header when the first row names a phone or email column. ``max_rows``: data rows past it
        raise LimitExceeded as soon as the first one is read."""
        self._rows = rows
        self._max_rows = max_rows
        self._header = header
        self._preview_size = preview
        self.columns = columns
        self.has_header = False
        self.total = 0
        self.skipped = 0
        self.error_count = 0
        self.errors: list[RowError] = []
        self.preview: list[dict[str, object]] = []

    def _valid_rows(self) -> Iterator[ImportRow]:
        columns = self.columns
        rows = iter(self._rows)
        try:
            for number, cells in enumerate(rows, start=1):
                if columns is None:
                    named = Columns.from_header(cells)
                    if self._header is True and not named.looks_like_header():
                        raise UnreadableFile("the header row names no phone number or email column (recognised: "
                                             "phoneNumber, phone, mobile, email, firstName, lastName, ...)")
                    self.has_header = self._header is True or (self._header is None and named.looks_like_header())
                    columns = self.columns = named if self.has_header else Columns.positional()
                    if self.has_header:
                        continue
                self.total += 1
                if self.total > self._max_rows:
                    raise LimitExceeded(f"imports are limited to {self._max_rows} rows (not counting the header); "
                                        "this file has more: split it")
                parsed = parse_row(number, cells, columns)
                if parsed is None:
                    self.skipped += 1
                elif isinstance(parsed, RowError):
                    self.error_count += 1
                    if len(self.errors) < MAX_ERRORS:
                        self.errors.append(parsed)
                else:
                    if len(self.preview) < self._preview_size:
                        self.preview.append(parsed.preview())
                    yield parsed
        finally:
            # A reader stopped half-way (the row cap, an error) closes its file now, not when collected.
            close = getattr(rows, "close", None)
            if close is not None:
                close()

    def batches(self, size: int) -> Iterator[list[ImportRow]]:
        """Upsert batches of valid rows (see rows.batches); the counters are final once exhausted."""
        return batches(self._valid_rows(), size)
