"""Field rules shared by the JSON API and the importers, so a contact is valid the same way everywhere."""

from __future__ import annotations

import re
from typing import Final

GENDERS: Final = ("MALE", "FEMALE", "OTHER")
CHANNELS: Final = ("SMS", "RCS", "WHATSAPP")
MAX_NAME: Final = 200
MAX_EMAIL: Final = 254
#: Deliberately loose (one @, no spaces or control characters, a dot in the domain): the mailbox is proven by
#: sending, not by a regex. Spelled with explicit ranges, not ``\s``, and matched whole (``fullmatch``): the same
#: pattern is the OpenAPI document's, and ECMA-262 and Python disagree on ``\s`` (U+001C-U+001F) and on ``$``
#: (Python's also matches before a final newline).
EMAIL: Final = re.compile(r"^[^@\x00-\x20\x7f]+@[^@\x00-\x20\x7f]+\.[^@\x00-\x20\x7f]+$")
EMAIL_PATTERN: Final = EMAIL.pattern
#: Import spellings of the gender values (English and Italian, any case); anything else is a row error.
GENDER_ALIASES: Final = {
    "m": "MALE", "male": "MALE", "man": "MALE", "maschio": "MALE", "uomo": "MALE",
    "f": "FEMALE", "female": "FEMALE", "woman": "FEMALE", "femmina": "FEMALE", "donna": "FEMALE",
    "o": "OTHER", "other": "OTHER", "altro": "OTHER",
}


def name(value: str, field: str) -> str:
    """A first or last name: at most MAX_NAME characters, no NUL (PostgreSQL text cannot hold it)."""
    if len(value) > MAX_NAME or "\x00" in value:
        raise ValueError(f"{field} must be text of at most {MAX_NAME} characters")
    return value


def email(value: str) -> str:
    """An email address (as given: callers trim file cells, the API takes the value verbatim)."""
    if len(value) > MAX_EMAIL or not EMAIL.fullmatch(value):
        raise ValueError(f"email {value[:60]!r} is not a valid address")
    return value


def gender_from_cell(value: str) -> str:
    """A gender written in a file (``M``, ``female``, ``Donna``...) as one of GENDERS."""
    found = GENDER_ALIASES.get(value.strip().lower()) or (value.strip().upper() if value.strip().upper() in GENDERS
                                                          else None)
    if found is None:
        raise ValueError(f"gender {value[:20]!r} is not one of MALE, FEMALE, OTHER (or M, F, O)")
    return found
