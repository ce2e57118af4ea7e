"""A streaming vCard (2.1, 3.0, 4.0) reader for contact import: FN, N, TEL and EMAIL of each card.

Lines are unfolded (RFC 6350 §3.2: a line starting with a space or tab continues the previous one, and
vCard 2.1 quoted-printable values continue after a trailing "="); values are unescaped (``\\,`` ``\\;``
``\\n`` ``\\\\``). One card at a time is held in memory.
"""

from __future__ import annotations

import dataclasses
import quopri
from collections.abc import Iterable, Iterator
from typing import Final

MAX_LINE: Final = 64 * 1024
MAX_CARD_LINES: Final = 1000


class VCardError(Exception):
    """The file is not vCard (the API answers 400)."""


@dataclasses.dataclass(frozen=True)
class Property:
    """One content line: name (upper-case, group dropped), parameters, raw value."""

    name: str
    params: dict[str, list[str]]
    value: str


@dataclasses.dataclass
class Card:
    """One BEGIN:VCARD ... END:VCARD block, numbered from 1, with the line it starts on."""

    number: int
    line: int
    properties: list[Property] = dataclasses.field(default_factory=list)

    def first(self, name: str) -> Property | None:
        """The first property called ``name``."""
        return next((p for p in self.properties if p.name == name), None)


def unfold(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """Logical lines with the number of the physical line each starts on."""
    pending: str | None = None
    start = 0
    qp_soft_break = False
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if pending is not None and (qp_soft_break or line[:1] in (" ", "\t")):
            pending = pending[:-1] + line if qp_soft_break else pending + line[1:]
        else:
            if pending is not None:
                yield start, pending
            pending, start = line, number
        if len(pending) > MAX_LINE:
            raise VCardError(f"line {start} is longer than {MAX_LINE} characters")
        qp_soft_break = "QUOTED-PRINTABLE" in pending.split(":", 1)[0].upper() and pending.endswith("=")
    if pending is not None:
        yield start, pending


def _unescape(value: str) -> str:
    out = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append("\n" if nxt in ("n", "N") else nxt)
        else:
            out.append(ch)
    return "".join(out)


def _split_unescaped(value: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not escaped with a backslash, then unescape each piece."""
    parts, current, escaped = [], [], False
    for ch in value:
        if escaped:
            current.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [_unescape(p) for p in parts]


def parse_property(line: str) -> Property | None:
    """A content line as a Property; None for a line without a colon (tolerated, ignored)."""
    head, sep, value = line.partition(":")
    if not sep:
        return None
    name, *raw_params = head.split(";")
    params: dict[str, list[str]] = {}
    for p in raw_params:
        key, eq, val = p.partition("=")
        if eq:
            params.setdefault(key.strip().upper(), []).extend(v.strip().strip('"').upper() for v in val.split(","))
        else:  # vCard 2.1 bare types: TEL;CELL:...
            params.setdefault("TYPE", []).append(key.strip().upper())
    if "QUOTED-PRINTABLE" in params.get("ENCODING", []):
        charset = (params.get("CHARSET") or ["UTF-8"])[0]
        try:
            value = quopri.decodestring(value.encode("latin-1", "replace")).decode(charset, "replace")
        except LookupError:
            value = quopri.decodestring(value.encode("latin-1", "replace")).decode("utf-8", "replace")
    return Property(name.rsplit(".", 1)[-1].strip().upper(), params, value)


def cards(lines: Iterable[str]) -> Iterator[Card]:
    """The cards of a vCard stream, one at a time; VCardError when the structure is broken."""
    card: Card | None = None
    count = 0
    seen_any = False
    for number, line in unfold(lines):
        if not line.strip():
            continue
        upper = line.strip().upper()
        if upper == "BEGIN:VCARD":
            if card is not None:
                raise VCardError(f"line {number}: BEGIN:VCARD inside the card started on line {card.line}")
            count += 1
            card = Card(count, number)
            seen_any = True
        elif upper == "END:VCARD":
            if card is None:
                raise VCardError(f"line {number}: END:VCARD without BEGIN:VCARD")
            yield card
            card = None
        elif card is None:
            raise VCardError(f"line {number}: content outside BEGIN:VCARD ... END:VCARD")
        else:
            if len(card.properties) >= MAX_CARD_LINES:
                raise VCardError(f"the card starting on line {card.line} has more than {MAX_CARD_LINES} lines")
            prop = parse_property(line)
            if prop is not None:
                card.properties.append(prop)
    if card is not None:
        raise VCardError(f"the card starting on line {card.line} has no END:VCARD")
    if not seen_any:
        raise VCardError("no BEGIN:VCARD found: not a vCard file")


def to_cells(card: Card) -> dict[str, str]:
    """The importable fields of a card: phoneNumber (a CELL/MOBILE TEL if any, else the first), email,
    firstName, lastName (from N, else split from FN)."""
    tels = [p for p in card.properties if p.name == "TEL" and p.value.strip()]
    mobile = [p for p in tels if {"CELL", "MOBILE"} & set(p.params.get("TYPE", []))]
    chosen = mobile or tels
    phone = chosen[0].value.strip() if chosen else ""
    if phone.lower().startswith("tel:"):  # vCard 4.0 TEL;VALUE=uri:tel:+39...
        phone = phone[4:]
    email = card.first("EMAIL")
    out = {"phoneNumber": phone, "email": _unescape(email.value).strip() if email else ""}
    n = card.first("N")
    if n is not None:
        parts = [*_split_unescaped(n.value, ";"), "", ""]
        out["lastName"], out["firstName"] = parts[0].strip(), parts[1].strip()
    fn = card.first("FN")
    if fn is not None and not out.get("firstName") and not out.get("lastName"):
        out["fullName"] = _unescape(fn.value).strip()
    return out
