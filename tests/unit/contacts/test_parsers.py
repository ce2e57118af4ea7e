"""Pure contact-import logic: phone normalisation, header aliases, delimiter sniffing, vCard, batching."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlara_events.contacts import fields, phones, readers, vcard
from qlara_events.contacts.importer import Import
from qlara_events.contacts.rows import Columns, ImportRow, RowError, batches, canonical_header, parse_row


class TestPhones:
    """E.164 for the API, lenient cleanup for files, validity and channels from libphonenumber."""

    def test_valid_mobile(self) -> None:
        """An Italian mobile is valid and reachable by SMS."""
        assert phones.from_e164("+393331234567") == phones.Phone("+393331234567", True, ("SMS",))

    def test_normalises_trunk_zero(self) -> None:
        """A UK number written with its national 0 is stored in its E.164 form."""
        assert phones.from_e164("+4407911123456").e164 == "+447911123456"

    @pytest.mark.parametrize("value", ["+99912345", "+3912", "+12"])
    def test_e164_shaped_but_invalid(self, value: str) -> None:
        """Unassigned country codes and impossible lengths are kept, not valid, without channels."""
        assert phones.from_e164(value) == phones.Phone(value, False, ())

    @pytest.mark.parametrize("value", ["393331234567", "+39 333 1234567", "+0123", "", "+39333123456789012"])
    def test_api_syntax(self, value: str) -> None:
        """The API takes E.164 only."""
        with pytest.raises(ValueError, match=r"E\.164"):
            phones.from_e164(value)

    @pytest.mark.parametrize(("cell", "e164"), [
        ("+39 333 123-4567", "+393331234567"), ("0039 (333) 1234567", "+393331234567"),
        ("393331234567", "+393331234567"), ("+39.333.123.4567", "+393331234567"),
    ])
    def test_cells(self, cell: str, e164: str) -> None:
        """Separators go, 00 becomes +, a digits-only cell lost its +."""
        assert phones.from_cell(cell).e164 == e164

    @pytest.mark.parametrize("cell", ["abc", "+39 333 12a", "++39333"])
    def test_bad_cells(self, cell: str) -> None:
        """Letters or a broken prefix are a row error."""
        with pytest.raises(ValueError):
            phones.from_cell(cell)


class TestFields:
    """Emails and gender spellings."""

    def test_email(self) -> None:
        """A plausible address passes; one without a domain dot or with a space does not."""
        assert fields.email("a.b@example.com") == "a.b@example.com"
        for bad in ("a@b", "a b@c.d", "@c.d"):
            with pytest.raises(ValueError):
                fields.email(bad)

    def test_email_rule_is_the_documents(self) -> None:
        """The server's rule and the OpenAPI pattern (read by ECMA-262 engines) agree: control characters
        such as U+001D (whitespace to Python's \\s, not to ECMA's) and a final newline (matched by Python's
        $) are refused; non-ASCII letters pass."""
        assert fields.email("é@ü.it") == "é@ü.it"
        for bad in ("x\x1d@y.z", "x@y.z\n", "x\x0e@y.z", "x@y\x7f.z"):
            with pytest.raises(ValueError):
                fields.email(bad)

    @pytest.mark.parametrize(("cell", "value"), [("m", "MALE"), ("Female", "FEMALE"), ("Donna", "FEMALE"),
                                                  ("OTHER", "OTHER")])
    def test_gender(self, cell: str, value: str) -> None:
        """English and Italian spellings, any case."""
        assert fields.gender_from_cell(cell) == value

    def test_unknown_gender(self) -> None:
        """Anything else is an error."""
        with pytest.raises(ValueError, match="gender"):
            fields.gender_from_cell("x")


class TestHeaders:
    """Header cells map to columns whatever their case, spaces or punctuation."""

    @pytest.mark.parametrize(("cell", "column"), [
        ("First Name", "firstName"), ("first_name", "firstName"), ("PHONE", "phoneNumber"),
        ("Mobile Number", "phoneNumber"), ("e-mail", "email"), ("E-Mail Address", "email"),
        ("\ufeffphoneNumber", "phoneNumber"), ("Cognome", "lastName"), ("sex", "gender"), ("Name", "fullName"),
        ("notes", None),
    ])
    def test_aliases(self, cell: str, column: str | None) -> None:
        """Each alias names its column; unknown headers name none."""
        assert canonical_header(cell) == column

    def test_columns_from_header(self) -> None:
        """The first occurrence wins; unknown headers are listed as ignored."""
        cols = Columns.from_header(["Phone", "Notes", "mobile", "Email"])
        assert cols.index == {"phoneNumber": 0, "email": 3} and cols.ignored == ("Notes",)
        assert cols.looks_like_header() and not Columns.from_header(["a", "b"]).looks_like_header()


class TestRows:
    """Row validation and upsert batching."""

    cols = Columns({"phoneNumber": 0, "email": 1, "fullName": 2, "gender": 3})

    def test_valid_row_and_full_name_split(self) -> None:
        """fullName splits at the last space when there are no first/last columns."""
        row = parse_row(7, ["+393331234567", " a@b.io ", "Maria Grazia Rossi", "f"], self.cols)
        assert isinstance(row, ImportRow)
        assert (row.row, row.email, row.first_name, row.last_name, row.gender) == \
            (7, "a@b.io", "Maria Grazia", "Rossi", "FEMALE")

    def test_blank_and_errors(self) -> None:
        """A blank row is None; no phone and no email, or a bad value, is a RowError with its reason."""
        assert parse_row(2, ["", " ", ""], self.cols) is None
        assert parse_row(3, ["", "", "Solo", ""], self.cols) == RowError(3, "a phoneNumber or an email is required")
        err = parse_row(4, ["+39333", "x@", "", ""], self.cols)
        assert isinstance(err, RowError) and "email" in err.reason

    def test_short_row(self) -> None:
        """Missing trailing cells are empty."""
        row = parse_row(2, ["+393331234567"], self.cols)
        assert isinstance(row, ImportRow) and row.email is None

    def test_batches_split_on_repeated_key(self) -> None:
        """A batch never holds a match key twice, and never more than its size."""
        def r(n: int, phone: str) -> ImportRow:
            return ImportRow(n, phones.from_e164(phone), None, None, None, None)
        rows = [r(1, "+393331000001"), r(2, "+393331000002"), r(3, "+393331000001"), r(4, "+393331000003")]
        assert [[x.row for x in b] for b in batches(rows, 10)] == [[1, 2], [3, 4]]
        assert [[x.row for x in b] for b in batches(rows, 1)] == [[1], [2], [3], [4]]

    def test_email_only_key(self) -> None:
        """Without a phone the key is the lower-cased email."""
        assert ImportRow(1, None, "A@B.io", None, None, None).key == "e:a@b.io"


class TestImportRun:
    """Header detection, counts, capped error list and preview."""

    def test_auto_header_and_counts(self) -> None:
        """A first row naming a phone column is a header; rows are numbered as in the file."""
        imp = Import(iter([["phone", "name"], ["+393331234567", "A B"], ["", ""], ["x", "C"]]), header=None,
                     preview=1)
        valid = [r for b in imp.batches(1000) for r in b]
        assert [r.row for r in valid] == [2] and imp.has_header
        assert (imp.total, imp.skipped, imp.error_count, [e.row for e in imp.errors]) == (3, 1, 1, [4])
        assert imp.preview == [valid[0].preview()]

    def test_no_header_is_positional(self) -> None:
        """A first row without known headers is data, read in the positional order."""
        imp = Import(iter([["+393331234567", "Ada", "Lovelace"]]), header=None, preview=10)
        valid = [r for b in imp.batches(10) for r in b]
        assert not imp.has_header and (valid[0].first_name, valid[0].last_name) == ("Ada", "Lovelace")

    def test_error_list_is_capped(self) -> None:
        """Every error is counted, at most MAX_ERRORS are listed."""
        imp = Import(iter([["phone"]] + [["bad"]] * 1500), header=True, preview=0)
        assert [r for b in imp.batches(10) for r in b] == []
        assert imp.error_count == 1500 and len(imp.errors) == 1000


class TestDelimitedText:
    """Delimiter sniffing and encodings."""

    @pytest.mark.parametrize(("sample", "delimiter"), [
        ("a,b,c\n1,2,3\n", ","), ("a;b;c\n1;2;3\n", ";"), ("a\tb\n1\t2\n", "\t"), ("a|b\n1|2\n", "|"),
        ('name;phone\n"Rossi, Anna";+39333\n"Neri, Ugo";+39334\n', ";"), ("phone\n+39333\n", ","),
    ])
    def test_sniff(self, sample: str, delimiter: str) -> None:
        """The delimiter giving a consistent column count wins; commas inside quotes do not count."""
        assert readers.sniff_delimiter(sample) == delimiter

    def test_rows_utf8_bom_and_cp1252(self, tmp_path: Path) -> None:
        """A UTF-8 BOM is dropped; a file that is not UTF-8 is read as Windows-1252."""
        bom = tmp_path / "bom.csv"
        bom.write_bytes(b"\xef\xbb\xbfphone;name\n+39333;Nicol\xc3\xb2\n")
        assert list(readers.text_rows(bom)) == [["phone", "name"], ["+39333", "Nicolò"]]
        legacy = tmp_path / "legacy.csv"
        legacy.write_bytes("phone;name\n+39333;Nicolò\n".encode("cp1252"))
        assert readers.detect_encoding(legacy) == "cp1252"
        assert list(readers.text_rows(legacy))[1] == ["+39333", "Nicolò"]

    @pytest.mark.parametrize(("name", "fmt"), [("a.CSV", "CSV"), ("b.txt", "CSV"), ("c.xlsx", "XLSX"),
                                               ("d.xls", "XLS"), ("e.pdf", None), ("csv", None), (".csv", "CSV")])
    def test_format_from_name(self, name: str, fmt: str | None) -> None:
        """The extension gives the format, case-insensitively."""
        assert readers.format_for(name) == fmt

    def test_workbook_magic(self, tmp_path: Path) -> None:
        """A file named .xlsx or .xls that is not one is UnreadableFile."""
        f = tmp_path / "x"
        f.write_bytes(b"phone\n")
        for read in (readers.xlsx_rows, readers.xls_rows):
            with pytest.raises(readers.UnreadableFile):
                list(read(f))


class TestVcard:
    """Unfolding, properties, structure errors."""

    def test_folded_and_quoted_printable(self) -> None:
        """Folded lines join; vCard 2.1 quoted-printable soft breaks join and decode."""
        lines = ["BEGIN:VCARD", "FN:Anna", " Maria", "N;ENCODING=QUOTED-PRINTABLE;CHARSET=UTF-8:Nicol=C3=",
                 "=B2;Anna", "TEL;CELL:+39 333", "\t1234567", "item1.EMAIL;type=INTERNET:a@b.io", "END:VCARD"]
        [card] = list(vcard.cards(lines))
        assert vcard.to_cells(card) == {"phoneNumber": "+39 3331234567", "email": "a@b.io", "lastName": "Nicolò",
                                        "firstName": "Anna"}

    def test_prefers_mobile_and_unescapes(self) -> None:
        """A CELL number beats the first TEL; FN is used when N is absent; escapes are undone."""
        lines = ["BEGIN:VCARD", "TEL;TYPE=WORK:+390612345678", "TEL;TYPE=cell,voice:+393331234567",
                 "FN:Rossi\\, Anna", "END:VCARD"]
        cells = vcard.to_cells(next(vcard.cards(lines)))
        assert cells["phoneNumber"] == "+393331234567" and cells["fullName"] == "Rossi, Anna"

    def test_uri_tel_v4(self) -> None:
        """vCard 4.0 tel: URIs lose their scheme."""
        cells = vcard.to_cells(next(vcard.cards(["BEGIN:VCARD", "TEL;VALUE=uri:tel:+393331234567", "END:VCARD"])))
        assert cells["phoneNumber"] == "+393331234567"

    @pytest.mark.parametrize("lines", [
        ["hello"], [], ["BEGIN:VCARD", "FN:x"], ["END:VCARD"], ["BEGIN:VCARD", "BEGIN:VCARD"],
    ])
    def test_structure_errors(self, lines: list[str]) -> None:
        """Content outside cards, no card, an unterminated or nested card: VCardError."""
        with pytest.raises(vcard.VCardError):
            list(vcard.cards(lines))
