"""Row readers for imported files: delimited text, XLSX and XLS, each yielding one row of strings at a time.

Nothing here loads a whole file: text is decoded and split incrementally, XLSX is read with openpyxl's
read-only (streaming) mode. XLS is the exception the format imposes: BIFF needs random access, so xlrd maps
the workbook, but an XLS sheet holds at most 65,536 rows.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from openpyxl.workbook.workbook import Workbook

CSV: Final = "CSV"
XLSX: Final = "XLSX"
XLS: Final = "XLS"
EXTENSIONS: Final = {".csv": CSV, ".txt": CSV, ".tsv": CSV, ".xlsx": XLSX, ".xlsm": XLSX, ".xls": XLS}
DELIMITERS: Final = (",", ";", "\t", "|")
SNIFF_CHARS: Final = 64 * 1024
_ZIP_MAGIC: Final = b"PK\x03\x04"
_OLE2_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


class UnreadableFile(Exception):
    """The file is not of the format its name says, or is corrupt (the API answers 400)."""


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


def xlsx_rows(path: Path) -> Iterator[list[str]]:
    """Rows of the first sheet of an XLSX workbook, streamed (openpyxl read-only mode)."""
    from openpyxl import load_workbook  # -- imported on use: a heavy import most processes never need
    from openpyxl.utils.exceptions import InvalidFileException

    with path.open("rb") as f:
        if f.read(4) != _ZIP_MAGIC:
            raise UnreadableFile("not an XLSX workbook (an XLSX file is a ZIP archive)")
        f.seek(0)
        # A file object, not the path: openpyxl judges a path by its extension, and the upload's has none.
        try:
            wb = load_workbook(f, read_only=True, data_only=True)
        except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError, ValueError) as exc:
            raise UnreadableFile(f"corrupt XLSX workbook: {exc}") from None
        yield from _sheet_rows(wb)


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


def xls_rows(path: Path) -> Iterator[list[str]]:
    """Rows of the first sheet of a legacy XLS (BIFF) workbook."""
    import xlrd  # -- imported on use, like openpyxl

    with path.open("rb") as f:
        if f.read(8) != _OLE2_MAGIC:
            raise UnreadableFile("not an XLS workbook (an XLS file is an OLE2 compound document)")
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


def rows(path: Path, fmt: str, file_name: str) -> Iterator[list[str]]:
    """Rows of ``path`` read as ``fmt`` (``file_name`` picks the tab delimiter of .tsv files)."""
    if fmt == XLSX:
        return xlsx_rows(path)
    if fmt == XLS:
        return xls_rows(path)
    return text_rows(path, delimiter="\t" if file_name.lower().endswith(".tsv") else None)
