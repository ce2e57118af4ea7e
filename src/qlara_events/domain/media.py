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
#: Major brands of the ISO base media files served as video/mp4 (ISO 14496-12/-14, Apple's M4V, 3GPP, DASH).
#: ``ftyp`` at bytes 4 to 8 alone is not enough: any file (an HTML page) can carry it there.
MP4_BRANDS: Final = frozenset({
    b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso7", b"iso8", b"iso9", b"mp41", b"mp42", b"avc1",
    b"M4V ", b"M4VH", b"M4VP", b"mmp4", b"MSNV", b"dash", b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"qt  "})
#: An ``ftyp`` box: size (big-endian, 16 bytes plus 4 per compatible brand), type, major brand, minor version.
MAX_FTYP: Final = 1024


def sniff(head: bytes) -> str | None:
    """The media type of a file starting with ``head``, or None when unsupported."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if _is_mp4(head):
        return MP4
    return None


def _is_mp4(head: bytes) -> bool:
    """An ISO base media file: a well-formed leading ``ftyp`` box whose major brand is an MP4 one."""
    if len(head) < 16 or head[4:8] != b"ftyp":
        return False
    (size,) = struct.unpack(">I", head[:4])
    return 16 <= size <= MAX_FTYP and size % 4 == 0 and head[8:12] in MP4_BRANDS


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
