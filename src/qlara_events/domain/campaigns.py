"""Campaign rules, pure: sending modes and their required fields, placeholders, SMS segments, schedules."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, Final

#: Sending mode → channels tried in order (fallbacks after the first).
SENDING_MODES: Final[Mapping[str, tuple[str, ...]]] = {
    "SMS": ("SMS",), "RCS": ("RCS",), "WHATSAPP": ("WHATSAPP",), "RCS_SMS": ("RCS", "SMS"),
    "WHATSAPP_SMS": ("WHATSAPP", "SMS"), "WHATSAPP_RCS": ("WHATSAPP", "RCS"),
    "WHATSAPP_RCS_SMS": ("WHATSAPP", "RCS", "SMS"),
}
#: Fields each channel needs; a fallback mode needs the union of its channels' fields.
CHANNEL_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "SMS": ("smsSender", "smsBody"), "RCS": ("rcsAgentId", "rcsTemplateId"),
    "WHATSAPP": ("whatsappPhoneNumberId", "whatsappTemplateId"),
}
SCHEDULE_FORMAT: Final = "%Y-%m-%d %H:%M:%S.%f%z"
_PLACEHOLDER: Final = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
_GSM7: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà")
_GSM7_EXT: Final = frozenset("^{}\\[~]|€\f")


def missing_fields(mode: str, campaign: Mapping[str, Any]) -> list[str]:
    """The channel fields ``mode`` needs that ``campaign`` lacks (empty when complete)."""
    needed = [f for channel in SENDING_MODES[mode] for f in CHANNEL_FIELDS[channel]]
    return [f for f in dict.fromkeys(needed) if campaign.get(f) in (None, "")]


def parse_schedule(raw: str) -> dt.datetime:
    """Qlara's ``yyyy-MM-dd HH:mm:ss.SSSZ`` (e.g. ``2026-05-04 08:30:00.000+0200``); ValueError otherwise."""
    return dt.datetime.strptime(raw, SCHEDULE_FORMAT)


def format_schedule(t: dt.datetime) -> str:
    """The inverse of :func:`parse_schedule` (UTC, millisecond precision)."""
    t = t.astimezone(dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}+0000"


def placeholders(body: str) -> list[str]:
    """The placeholder names used in a body."""
    return _PLACEHOLDER.findall(body)


def render(body: str, contact: Mapping[str, Any]) -> str:
    """Fill ``{{firstName}}``-style placeholders from a contact (custom fields by name too); unknown → ''."""
    custom = contact.get("customFields") or {}

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("custom."):
            name = name[len("custom."):]
        v = contact.get(name)
        if v is None and isinstance(custom, Mapping):
            v = custom.get(name)
        return "" if v is None else str(v)

    return _PLACEHOLDER.sub(value, body)


def sms_segments(text: str) -> int:
    """How many SMS parts ``text`` needs (GSM-7: 160, or 153 per part; otherwise UCS-2: 70, or 67)."""
    if all(c in _GSM7 or c in _GSM7_EXT for c in text):
        units = sum(2 if c in _GSM7_EXT else 1 for c in text)
        return 1 if units <= 160 else -(-units // 153)
    units = sum(2 if ord(c) > 0xFFFF else 1 for c in text)
    return 1 if units <= 70 else -(-units // 67)
