"""From file rows to contacts: header recognition, per-row validation, and upsert batches without duplicates."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from qlara_events.contacts import fields, phones

#: Canonical column -> header spellings, compared after lower-casing and dropping spaces, "_", "-" and ".".
HEADER_ALIASES: Final = {
    "phoneNumber": ("phonenumber", "phone", "mobile", "mobilephone", "mobilenumber", "cell", "cellphone",
                    "msisdn", "telephone", "tel", "number", "telefono", "cellulare", "numero"),
    "firstName": ("firstname", "first", "givenname", "nome"),
    "lastName": ("lastname", "last", "surname", "familyname", "cognome"),
    "fullName": ("fullname", "name", "nomecompleto"),
    "email": ("email", "emailaddress", "mail", "posta"),
    "gender": ("gender", "sex", "sesso", "genere"),
}
_LOOKUP: Final = {alias: column for column, aliases in HEADER_ALIASES.items() for alias in aliases}
_NOISE: Final = re.compile(r"[\s_\-.]")
#: Column order of a file without a header row (removeHead=false).
POSITIONAL: Final = ("phoneNumber", "firstName", "lastName", "email", "gender")


def canonical_header(text: str) -> str | None:
    """The column a header cell names ("First Name", "e-mail", "PHONE"), or None if unrecognised."""
    return _LOOKUP.get(_NOISE.sub("", text.strip().lstrip("\ufeff").lower()))


@dataclasses.dataclass(frozen=True)
class Columns:
    """Where each recognised column is in a row, and the header cells that were not recognised."""

    index: dict[str, int]
    ignored: tuple[str, ...] = ()

    @classmethod
    def from_header(cls, cells: Sequence[str]) -> Columns:
        """Map a header row; the first occurrence of a column wins."""
        index: dict[str, int] = {}
        ignored = []
        for i, cell in enumerate(cells):
            column = canonical_header(cell)
            if column is None:
                if cell.strip():
                    ignored.append(cell.strip()[:100])
            elif column not in index:
                index[column] = i
        return cls(index, tuple(ignored))

    @classmethod
    def positional(cls) -> Columns:
        """The fixed order used when the file has no header row."""
        return cls({c: i for i, c in enumerate(POSITIONAL)})

    def looks_like_header(self) -> bool:
        """True when the row names a phone or email column (how a header is recognised automatically)."""
        return "phoneNumber" in self.index or "email" in self.index


@dataclasses.dataclass(frozen=True, slots=True)
class ImportRow:
    """One valid row, ready to upsert."""

    row: int
    phone: phones.Phone | None
    email: str | None
    first_name: str | None
    last_name: str | None
    gender: str | None

    @property
    def key(self) -> str:
        """The match key: the phone number, or for contacts without one the lower-cased email."""
        return f"p:{self.phone.e164}" if self.phone else f"e:{(self.email or '').lower()}"

    def preview(self) -> dict[str, object]:
        """The row as echoed in the import response."""
        return {"row": self.row, "phoneNumber": self.phone.e164 if self.phone else None, "email": self.email,
                "firstName": self.first_name, "lastName": self.last_name, "gender": self.gender,
                "isValid": bool(self.phone and self.phone.is_valid)}


@dataclasses.dataclass(frozen=True, slots=True)
class RowError:
    """A row that was not imported, and why."""

    row: int
    reason: str


def _cell(cells: Sequence[str], columns: Columns, column: str) -> str:
    i = columns.index.get(column)
    return cells[i].strip() if i is not None and i < len(cells) else ""


def parse_row(row: int, cells: Sequence[str], columns: Columns) -> ImportRow | RowError | None:
    """Validate one data row: an ImportRow, a RowError, or None for a blank row (skipped)."""
    if not any(c.strip() for c in cells):
        return None
    try:
        raw_phone = _cell(cells, columns, "phoneNumber")
        raw_email = _cell(cells, columns, "email")
        if not raw_phone and not raw_email:
            raise ValueError("a phoneNumber or an email is required")
        first = _cell(cells, columns, "firstName")
        last = _cell(cells, columns, "lastName")
        full = _cell(cells, columns, "fullName")
        if full and not first and not last:
            # "Maria Grazia Rossi": the last word is the last name, the rest the first name.
            first, _, last = full.rpartition(" ")
            first, last = (first, last) if first else (last, "")
        gender = _cell(cells, columns, "gender")
        return ImportRow(
            row=row, phone=phones.from_cell(raw_phone) if raw_phone else None,
            email=fields.email(raw_email) if raw_email else None,
            first_name=fields.name(first, "firstName") or None, last_name=fields.name(last, "lastName") or None,
            gender=fields.gender_from_cell(gender) if gender else None)
    except ValueError as exc:
        return RowError(row, str(exc))


def batches(rows: Iterable[ImportRow], size: int) -> Iterator[list[ImportRow]]:
    """Group rows into upsert batches of at most ``size`` with no match key twice in one batch.

    One INSERT ... ON CONFLICT DO UPDATE cannot touch the same row twice, so a repeated key closes the batch:
    the later row then updates what the earlier one created, exactly as if it came in a later batch.
    """
    batch: list[ImportRow] = []
    keys: set[str] = set()
    for r in rows:
        if len(batch) >= size or r.key in keys:
            yield batch
            batch, keys = [], set()
        batch.append(r)
        keys.add(r.key)
    if batch:
        yield batch
