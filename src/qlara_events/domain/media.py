"""Media types from a file's bytes (never only from what the client declared), and image dimensions."""

from __future__ import annotations

import struct
from typing import Final

JPEG: Final = "image/jpeg"
PNG: Final = "image/png"
GIF: Final = "image/gif"
MP4: Final = "video/mp4"
SUPPORTED: Final = (JPEG, PNG, GIF, MP4)
#: Bytes needed to recognise every supported type.
SNIFF_BYTES: Final = 32


def sniff(head: bytes) -> str | None:
    """The media type of a file starting with ``head``, or None when unsupported."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return MP4
    return None


def is_image(mime: str) -> bool:
    """JPEG, PNG or GIF."""
    return mime.startswith("image/")


def dimensions(mime: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) of an image from its first bytes (JPEG: up to the first frame header), or None."""
    try:
        if mime == PNG and len(data) >= 24 and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return int(w), int(h)
        if mime == GIF and len(data) >= 10:
            w, h = struct.unpack("<HH", data[6:10])
            return int(w), int(h)
        if mime == JPEG:
            return _jpeg_dimensions(data)
    except struct.error:
        return None
    return None


_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker in _SOF:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return int(w), int(h)
        i += 2 + length
    return None
