"""Row readers for imported files: delimited text, XLSX and XLS, each yielding one row of strings at a time.

Nothing here loads a whole file: text is decoded and split incrementally, XLSX is read with openpyxl's
read-only (streaming) mode. XLS is the exception the format imposes: BIFF needs random access, so xlrd maps
the workbook, but an XLS sheet holds at most 65,536 rows.

What a format cannot stream is bounded before it is parsed (``Limits``): openpyxl holds the shared strings and
every part but the worksheets in memory, so an XLSX is judged by its ZIP directory first (declared sizes,
compression ratio, entry count); an XLS by its size, before xlrd maps it.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import datetime as dt
import os
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Final, Literal

if TYPE_CHECKING:
    from openpyxl.reader.excel import ExcelReader
    from openpyxl.workbook.workbook import Workbook

CSV: Final = "CSV"
XLSX: Final = "XLSX"
XLS: Final = "XLS"
EXTENSIONS: Final = {".csv": CSV, ".txt": CSV, ".tsv": CSV, ".xlsx": XLSX, ".xlsm": XLSX, ".xls": XLS}
DELIMITERS: Final = (",", ";", "\t", "|")
SNIFF_CHARS: Final = 64 * 1024
_ZIP_MAGIC: Final = b"PK\x03\x04"
_OLE2_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_EOCD: Final = b"PK\x05\x06"
_EOCD_SIZE: Final = 22
_ZIP64_LOCATOR: Final = b"PK\x06\x07"
_ZIP64_LOCATOR_SIZE: Final = 20
#: Far more parts than any workbook has; bounds what zipfile allocates for the directory.
MAX_ZIP_ENTRIES: Final = 10_000
MAX_ZIP_DIRECTORY: Final = 16 * 1024 * 1024
#: Parts smaller than this are never refused for their compression ratio (tiny XML compresses oddly well).
RATIO_FLOOR: Final = 1024 * 1024
MiB: Final = 1024 * 1024


class UnreadableFile(Exception):
    """The file is not of the format its name says, or is corrupt (the API answers 400)."""


class LimitExceeded(Exception):
    """The file passes one of the import limits (the API answers 413 with this message)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """What one import may hold (settings ``import_*``, documented in docs/configuration.md)."""

    #: Data rows (blank ones included) of any format; reading stops at the first row past it.
    max_rows: int = 1_000_000
    #: Sum of the declared uncompressed sizes of an XLSX's ZIP entries.
    xlsx_max_uncompressed: int = 512 * MiB
    #: Any XLSX part openpyxl reads whole (shared strings, styles, workbook...): all but the worksheets.
    xlsx_max_part: int = 32 * MiB
    #: Declared uncompressed size / compressed size of an XLSX entry (above RATIO_FLOOR); XML deflates ~10-20x.
    xlsx_max_ratio: int = 200
    #: Size of an XLS file, which xlrd maps whole.
    xls_max_bytes: int = 32 * MiB


DEFAULT_LIMITS: Final = Limits()


def format_for(file_name: str) -> str | None:
    """The format implied by the file name's extension (case-insensitive), or None if unsupported."""
    _, dot, extension = file_name.rpartition(".")
    return EXTENSIONS.get("." + extension.lower()) if dot else None


def detect_encoding(path: Path) -> str:
    """UTF-8 (with or without BOM) when the whole file decodes as such, else Windows-1252 (Excel's default).

    Checked in one streaming pass before parsing, so an import never switches encoding half-way.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        head = f.read(3)
        f.seek(0)
        try:
            while chunk := f.read(1024 * 1024):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "cp1252"
    return "utf-8-sig" if head == codecs.BOM_UTF8 else "utf-8"


def sniff_delimiter(sample: str) -> str:
    """The delimiter that splits the sample's first lines into the most columns, consistently.

    For each candidate, the lines of the sample (quotes respected) are split; a candidate scores when most
    lines get the same number (> 1) of fields. csv.Sniffer guesses too eagerly on short samples (a comma
    inside a name), hence this explicit vote. Default ",".
    """
    lines = sample.splitlines()[:50]
    if len(sample) >= SNIFF_CHARS and len(lines) > 1:
        lines = lines[:-1]  # the last line of a truncated sample is partial
    best, best_score = ",", (0, 0)
    for delimiter in DELIMITERS:
        counts = [len(r) for r in csv.reader(lines, delimiter=delimiter) if r]
        if not counts:
            continue
        typical = max(set(counts), key=counts.count)
        if typical < 2:
            continue
        score = (counts.count(typical), typical)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def text_rows(path: Path, *, delimiter: str | None = None) -> Iterator[list[str]]:
    """Rows of a delimited text file, decoded and split as it is read."""
    encoding = detect_encoding(path)
    # "replace": the five bytes Windows-1252 leaves undefined must not make a whole file unreadable.
    with path.open("r", encoding=encoding, errors="replace", newline="") as f:
        if delimiter is None:
            delimiter = sniff_delimiter(f.read(SNIFF_CHARS))
            f.seek(0)  # resets the decoder too, so utf-8-sig skips the BOM again
        try:
            for row in csv.reader(f, delimiter=delimiter):
                yield [c.replace("\x00", "\ufffd") for c in row] if any("\x00" in c for c in row) else row
        except csv.Error as exc:
            raise UnreadableFile(f"malformed delimited text: {exc}") from None


def _cell_text(value: object) -> str:
    """A spreadsheet cell as text; whole numbers lose the ".0" spreadsheets give them (phone numbers)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def _check_zip_directory(f: BinaryIO) -> None:
    """Refuse a ZIP whose end record announces more entries or directory than a workbook needs, or ZIP64.

    Read from the end record alone, before zipfile builds a ZipInfo per directory entry (a 256 MiB upload
    could announce millions). The search mirrors zipfile's: the last end record in the final 64 KiB + 22 bytes.
    """
    size = f.seek(0, os.SEEK_END)
    tail_size = min(size, _EOCD_SIZE + 0xFFFF + _ZIP64_LOCATOR_SIZE)
    f.seek(size - tail_size)
    tail = f.read(tail_size)
    at = tail.rfind(_EOCD)
    if at < 0 or tail_size - at < _EOCD_SIZE:
        raise UnreadableFile("corrupt XLSX workbook: no ZIP end-of-directory record")
    entries, directory = struct.unpack_from("<HI", tail, at + 10)
    zip64 = at >= _ZIP64_LOCATOR_SIZE and tail[at - _ZIP64_LOCATOR_SIZE:at - 16] == _ZIP64_LOCATOR
    if zip64 or entries == 0xFFFF or directory == 0xFFFFFFFF:
        raise LimitExceeded("ZIP64 workbooks are not accepted for import (no contact workbook needs one)")
    if entries > MAX_ZIP_ENTRIES or directory > MAX_ZIP_DIRECTORY:
        raise LimitExceeded(f"the workbook has {entries} ZIP entries ({directory} bytes of directory); "
                            f"imports accept at most {MAX_ZIP_ENTRIES} entries")


def _check_zip_entries(archive: zipfile.ZipFile, limits: Limits) -> None:
    """Refuse by the declared sizes: the sum past ``xlsx_max_uncompressed``, any entry with an absurd ratio.

    Declared sizes are what zipfile holds a reader to: it stops decompressing an entry at its declared size
    and fails the CRC check if the data was longer, so a lying directory cannot expand past what was checked.
    """
    total = 0
    for info in archive.infolist():
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UnreadableFile(f"corrupt XLSX workbook: {info.filename!r} uses a compression workbooks do not use")
        total += info.file_size
        if info.file_size > RATIO_FLOOR and info.file_size > limits.xlsx_max_ratio * max(info.compress_size, 1):
            raise LimitExceeded(f"the workbook part {info.filename[:100]!r} expands {info.file_size} bytes from "
                                f"{info.compress_size} (more than {limits.xlsx_max_ratio} times): refused as a "
                                "ZIP bomb")
    if total > limits.xlsx_max_uncompressed:
        raise LimitExceeded(f"the workbook expands to {total} bytes; imports accept at most "
                            f"{limits.xlsx_max_uncompressed} bytes uncompressed")


class _GuardedZip(zipfile.ZipFile):
    """A ZipFile that refuses to open a part larger than ``part_limit`` unless it is in ``streamed``.

    openpyxl reads every part of a read-only workbook whole (the shared strings, styles, the workbook and
    whatever [Content_Types].xml and the relationships point at) except the worksheets, which it streams.
    ``_Reader`` names those once the workbook's relationships are known, so the cap applies to exactly what
    is held in memory, whatever the parts are named.
    """

    part_limit: int = 0
    streamed: frozenset[str] = frozenset()

    def open(self, name: str | zipfile.ZipInfo, mode: Literal["r", "w"] = "r", pwd: bytes | None = None, *,
             force_zip64: bool = False) -> IO[bytes]:
        """Open a part, as ZipFile does, once it passes the cap."""
        info = name if isinstance(name, zipfile.ZipInfo) else self.getinfo(name)
        if info.filename not in self.streamed and info.file_size > self.part_limit:
            raise LimitExceeded(f"the workbook part {info.filename[:100]!r} holds {info.file_size} bytes, read "
                                f"whole by the parser; imports accept at most {self.part_limit} bytes per part "
                                "(shared strings included)")
        return super().open(name, mode, pwd, force_zip64=force_zip64)


def _reader(f: BinaryIO, archive: _GuardedZip) -> ExcelReader:
    """openpyxl's workbook reader (what load_workbook runs), reading through ``archive``.

    Used directly, not through load_workbook, to read through the guarded archive and tell it which parts are
    worksheets: the targets of the workbook's sheet relationships, chartsheets excepted (those are read whole).
    """
    from openpyxl.reader.excel import ExcelReader  # -- imported on use: a heavy import most processes never need

    class _Reader(ExcelReader):
        def read_worksheets(self) -> None:
            sheets = [rel for _, rel in self.parser.find_sheets()]
            charts = {rel.target for rel in sheets if "chartsheet" in rel.Type}
            archive.streamed = frozenset(rel.target for rel in sheets) - charts
            super().read_worksheets()

    reader = _Reader(f, read_only=True, data_only=True)
    reader.archive = archive
    return reader


def xlsx_rows(path: Path, limits: Limits = DEFAULT_LIMITS) -> Iterator[list[str]]:
    """Rows of the first sheet of an XLSX workbook, streamed (openpyxl read-only mode), within ``limits``."""
    from openpyxl.utils.exceptions import InvalidFileException

    with path.open("rb") as f:
        if f.read(4) != _ZIP_MAGIC:
            raise UnreadableFile("not an XLSX workbook (an XLSX file is a ZIP archive)")
        _check_zip_directory(f)
        f.seek(0)
        # A file object, not the path: openpyxl judges a path by its extension, and the upload's has none.
        try:
            archive = _GuardedZip(f)
            archive.part_limit = limits.xlsx_max_part
            _check_zip_entries(archive, limits)
            reader = _reader(f, archive)
            reader.read()
        except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError, ValueError) as exc:
            raise UnreadableFile(f"corrupt XLSX workbook: {exc}") from None
        yield from _sheet_rows(reader.wb)


def _sheet_rows(wb: Workbook) -> Iterator[list[str]]:
    """The first sheet's rows as text; the workbook is closed at the end."""
    try:
        ws = wb.worksheets[0] if wb.worksheets else None
        if ws is None:
            raise UnreadableFile("the workbook has no sheet")
        try:
            for values in ws.iter_rows(values_only=True):
                yield [_cell_text(v) for v in values]
        except (zipfile.BadZipFile, KeyError, OSError, ValueError, TypeError) as exc:
            raise UnreadableFile(f"corrupt XLSX workbook: {exc}") from None
    finally:
        wb.close()


def xls_rows(path: Path, limits: Limits = DEFAULT_LIMITS) -> Iterator[list[str]]:
    """Rows of the first sheet of a legacy XLS (BIFF) workbook of at most ``limits.xls_max_bytes``."""
    import xlrd  # -- imported on use, like openpyxl

    with path.open("rb") as f:
        if f.read(8) != _OLE2_MAGIC:
            raise UnreadableFile("not an XLS workbook (an XLS file is an OLE2 compound document)")
    size = path.stat().st_size
    if size > limits.xls_max_bytes:  # xlrd reads the whole file and every cell of the sheet it opens
        raise LimitExceeded(f"the XLS workbook has {size} bytes; imports accept XLS files of at most "
                            f"{limits.xls_max_bytes} bytes (XLSX and CSV files may be larger)")
    try:
        book = xlrd.open_workbook(str(path), on_demand=True)
        sheet = book.sheet_by_index(0)
    except (xlrd.biffh.XLRDError, AssertionError, IndexError, OSError, ValueError, KeyError) as exc:
        raise UnreadableFile(f"corrupt XLS workbook: {exc}") from None
    try:
        for i in range(sheet.nrows):
            out = []
            for cell in sheet.row(i):
                if cell.ctype == xlrd.XL_CELL_DATE:
                    out.append(xlrd.xldate_as_datetime(float(cell.value), book.datemode).isoformat())
                else:
                    out.append(_cell_text(cell.value))
            yield out
    finally:
        book.release_resources()


def rows(path: Path, fmt: str, file_name: str, limits: Limits) -> Iterator[list[str]]:
    """Rows of ``path`` read as ``fmt`` (``file_name`` picks the tab delimiter of .tsv files).

    The row cap is the importer's (it counts data rows); ``limits`` bounds what a format parses whole.
    """
    if fmt == XLSX:
        return xlsx_rows(path, limits)
    if fmt == XLS:
        return xls_rows(path, limits)
    return text_rows(path, delimiter="\t" if file_name.lower().endswith(".tsv") else None)
