"""Parsing of the Platform API's typed inputs exactly as the OpenAPI document describes them.

The document's formats (RFC 3339 ``date-time`` and ``date``) and JSON Schema's ``integer`` are parsed here
once, so a view accepts neither less (a schema-valid value refused) nor more (a value the document forbids).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Final

from qlara_events.errors import BadRequest

#: RFC 3339 ``date-time`` (section 5.6): the offset is mandatory, T/Z may be lower case.
DATE_TIME: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})")
#: RFC 3339 ``full-date``.
DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: A query-string integer: ASCII digits with an optional sign (``int()`` alone would also take " 5", "5_0" or
#: non-ASCII digits).
_INTEGER: Final = re.compile(r"-?[0-9]{1,19}")
_UTC_MIN: Final = dt.datetime.min.replace(tzinfo=dt.UTC)
_UTC_MAX: Final = dt.datetime.max.replace(tzinfo=dt.UTC)


def date_time(raw: object, name: str) -> dt.datetime:
    """An RFC 3339 date-time (offset required), as an aware datetime; 400 otherwise.

    A valid value whose UTC equivalent falls outside Python's years 1 to 9999 (``0001-01-01T00:00:00+01:00``)
    is clamped to that range: as a window bound it means "since the beginning" or "until the end".
    """
    if not isinstance(raw, str) or not DATE_TIME.fullmatch(raw):
        raise BadRequest(f"{name} must be an RFC 3339 date-time with offset, e.g. 2026-03-01T00:00:00+01:00")
    try:
        t = dt.datetime.fromisoformat(raw.upper())
    except ValueError:
        raise BadRequest(f"{name} is not a valid date-time: {raw}") from None
    try:
        t.astimezone(dt.UTC)
    except OverflowError:  # -- only at the edges of year 1 and 9999, where the offset crosses the range
        return _UTC_MIN if t.year == 1 else _UTC_MAX
    return t


def date_or_date_time(raw: str, name: str) -> dt.datetime:
    """An RFC 3339 full-date (midnight UTC) or date-time; 400 otherwise."""
    if DATE.fullmatch(raw):
        try:
            return dt.datetime.combine(dt.date.fromisoformat(raw), dt.time(), dt.UTC)
        except ValueError:
            raise BadRequest(f"{name} is not a valid date: {raw}") from None
    return date_time(raw, name)


def json_int(value: object, lo: int, hi: int) -> int | None:
    """A JSON integer in [lo, hi], or None. As in JSON Schema, 5.0 is the integer 5; booleans are not numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    number = int(value)
    return number if lo <= number <= hi else None


def query_int(q: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """An optional integer query parameter in [lo, hi]; present but empty or malformed is a 400."""
    raw = q.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise BadRequest(f"{name} must be an integer between {lo} and {hi}")
    return int(raw)


#: The deepest row a paged list reaches (page * limit): an offset is read and skipped row by row, so a page of
#: 1,000 at page 10,000,000 would make Postgres skip ten billion rows. Past it, filter or export instead.
MAX_OFFSET: Final = 100_000


def offset(page: int, limit: int) -> int:
    """The row offset of ``page`` (0-based) of ``limit`` rows; 400 past :data:`MAX_OFFSET`."""
    if page * limit > MAX_OFFSET:
        raise BadRequest(f"page * limit must be at most {MAX_OFFSET}: filter the list or use an export to read "
                         "further")
    return page * limit


def query_bool(q: Mapping[str, str], name: str) -> bool | None:
    """An optional boolean query parameter: exactly true or false."""
    raw = q.get(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false")
    return raw == "true"
