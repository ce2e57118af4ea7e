"""Phone numbers: E.164 syntax, then libphonenumber for normalisation, validity and the supported channels."""

from __future__ import annotations

import dataclasses
import re
from typing import Final

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

#: The API's syntax for phoneNumber: E.164, "+" then up to 15 digits, no leading zero in the country code.
E164: Final = re.compile(r"^\+[1-9][0-9]{1,14}$")
E164_PATTERN: Final = E164.pattern
#: What a spreadsheet cell may add around a number: spaces, dots, dashes, slashes and parentheses.
_SEPARATORS: Final = re.compile(r"[\s.\-/()\u00a0]")
#: Number types that can receive an SMS. Decision: RCS and WhatsApp reachability needs a capability lookup
#: by the upstream senders, which this service does not have, so only SMS is ever derived.
_SMS_TYPES: Final = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})


@dataclasses.dataclass(frozen=True, slots=True)
class Phone:
    """A normalised phone number with what libphonenumber says about it."""

    e164: str
    is_valid: bool
    channels: tuple[str, ...]


def from_e164(value: str) -> Phone:
    """Normalise an E.164 string; ``ValueError`` when its syntax is not E.164.

    A syntactically correct number that libphonenumber cannot place (an unassigned country code, a wrong
    length) is kept as given with ``is_valid`` false: the contact exists, it just cannot be sent to.
    """
    if not E164.match(value):
        raise ValueError("phoneNumber must be in E.164 format, e.g. +393331234567")
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return Phone(value, False, ())
    # number_type() resolves the region exactly as is_valid_number() does and is UNKNOWN exactly when the
    # number is invalid, so one call gives both answers (libphonenumber is ~50 µs per call: it matters in imports).
    kind = phonenumbers.number_type(number)
    if kind == PhoneNumberType.UNKNOWN:
        return Phone(value, False, ())
    return Phone(phonenumbers.format_number(number, PhoneNumberFormat.E164), True,
                 ("SMS",) if kind in _SMS_TYPES else ())


def from_cell(value: str) -> Phone:
    """Normalise a phone number typed by a person or exported by a spreadsheet; ``ValueError`` if unusable.

    Separators are dropped and the ``00`` international prefix becomes ``+``. A digits-only value is read as
    an international number whose ``+`` was lost (spreadsheets store +393331234567 as the number
    393331234567); there is no default country to read national numbers with.
    """
    cleaned = _SEPARATORS.sub("", value)
    if cleaned.startswith("00"):
        cleaned = "+" + cleaned[2:]
    elif cleaned.isdigit():
        cleaned = "+" + cleaned
    if not E164.match(cleaned):
        raise ValueError(f"phoneNumber {value[:40]!r} is not an international number (E.164)")
    return from_e164(cleaned)
