"""Media: streamed uploads judged by their bytes, per-type limits, signed downloads, tenancy."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from qlara_events.storage import sign_url

from support.live import Account, LiveServer

P = "/partner-gateway/v1"


def png(width: int, height: int) -> bytes:
    """A valid PNG of the given size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x00\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def jpeg_head(width: int, height: int) -> bytes:
    """The start of a baseline JPEG: SOI, an APP0 segment, and a SOF0 frame header."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0


def local(server: LiveServer, url: str) -> str:
    """A signed URL (built on the public base URL) pointed at the test server."""
    return url.replace(server.settings.base_url, server.url)


async def upload(http: aiohttp.ClientSession, server: LiveServer, account: Account, data: Any,
                 filename: str = "f.bin", content_type: str | None = None,
                 **fields: str) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    for k, v in fields.items():
        form.add_field(k, v)
    form.add_field("file", data, filename=filename, content_type=content_type or "application/octet-stream")
    async with http.post(f"{server.url}{P}/media", data=form, headers=account.headers) as r:
        return r.status, await r.json()


class TestUpload:
    """Types come from the bytes; dimensions are recorded; the file is served by a signed URL."""

    async def test_png_round_trip(self, http, server, account) -> None:
        """A PNG uploads with its dimensions, is listed, and downloads byte for byte via its signed URL."""
        data = png(40, 30)
        status, item = await upload(http, server, account, data, "banner.png", "image/png", name="banner",
                                    description="Summer banner")
        assert status == 201, item
        assert (item["mimeType"], item["width"], item["height"], item["size"]) == ("image/png", 40, 30, len(data))
        assert item["name"] == "banner" and item["description"] == "Summer banner"
        async with http.get(local(server, item["url"])) as r:
            assert r.status == 200 and await r.read() == data and r.headers["Content-Type"] == "image/png"
        async with http.get(f"{server.url}{P}/media", headers=account.headers,
                            params={"sortBy": "name", "sortOrder": "desc"}) as r:
            assert [m["id"] for m in await r.json()] == [item["id"]]

    async def test_jpeg_dimensions_and_declared_type(self, http, server, account) -> None:
        """JPEG dimensions come from the frame header; a JPEG declared as PNG is refused."""
        data = jpeg_head(1440, 720) + b"\x00" * 1000 + b"\xff\xd9"
        status, item = await upload(http, server, account, data, "photo.jpg", "image/jpeg")
        assert status == 201 and (item["width"], item["height"]) == (1440, 720)
        status, body = await upload(http, server, account, data, "photo.png", "image/png")
        assert status == 400 and "declared image/png" in body["message"]

    async def test_mp4_is_detected(self, http, server, account) -> None:
        """An MP4 (ftyp box) is accepted as video/mp4 whatever its declared type."""
        data = struct.pack(">I", 24) + b"ftypisom" + b"\x00" * 200
        status, item = await upload(http, server, account, data, "clip.bin")
        assert status == 201 and item["mimeType"] == "video/mp4" and item["width"] is None

    async def test_rejections(self, http, server, account) -> None:
        """Unsupported bytes, a missing file part and a non-multipart body are 400s."""
        status, body = await upload(http, server, account, b"%PDF-1.7 not an image" * 10, "doc.pdf")
        assert status == 400 and "unsupported" in body["message"]
        form = aiohttp.FormData()
        form.add_field("name", "no file")
        async with http.post(f"{server.url}{P}/media", data=form, headers=account.headers) as r:
            assert r.status == 400
        async with http.post(f"{server.url}{P}/media", json={"file": "x"}, headers=account.headers) as r:
            assert r.status == 400

    async def test_50_mb_upload_refused_at_limit_without_buffering(self, http, server, account) -> None:
        """A 50 MB JPEG is cut off with 413 at 5 MB; memory stays far below the file size; nothing is left."""
        sent = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            head = jpeg_head(100, 100)
            sent += len(head)
            yield head
            for _ in range(50 * 16):  # 50 MB in 64 KiB chunks
                sent += 65536
                yield b"\x00" * 65536

        storage = Path(server.settings.storage_dir)
        before = {p.name for p in storage.rglob("*")}
        tracemalloc.start()
        try:
            status, result = await upload(http, server, account, body(), "huge.jpg", "image/jpeg")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert status == 413 and "5242880" in result["message"]
        # 1.5 MiB measured; the bound is ten times that and a third of the 50 MB a buffered body would hold.
        assert peak < 16 * 1024 * 1024, f"peak traced memory {peak} bytes: the upload was buffered"
        assert {p.name for p in storage.rglob("*") if p.is_file()} <= before, "a partial file was left behind"
        print(f"413 after the client generated {sent / 2**20:.1f} MiB; peak traced memory {peak / 2**20:.1f} MiB")


class TestAccess:
    """Signed URLs expire and cannot be forged; other accounts see nothing."""

    async def test_signed_url_rules(self, http, server, account) -> None:
        """A tampered or expired link is 401; deleting the item makes its link 404."""
        status, item = await upload(http, server, account, png(2, 2), "a.png")
        assert status == 201
        async with http.get(local(server, item["url"]).replace("signature=", "signature=0")) as r:
            assert r.status == 401
        path = item["url"].split(server.settings.base_url, 1)[1].split("?")[0]
        assert server.settings.url_signing_key
        expired, _ = sign_url(server.settings.url_signing_key.encode(), server.url, path, ttl_s=-1)
        async with http.get(expired) as r:
            assert r.status == 401 and "expired" in (await r.json())["message"]
        async with http.delete(f"{server.url}{P}/media/{item['id']}", headers=account.headers) as r:
            assert r.status == 204
        async with http.get(local(server, item["url"])) as r:
            assert r.status == 404
        async with http.get(f"{server.url}{P}/media/{item['id']}", headers=account.headers) as r:
            assert r.status == 404

    async def test_other_account(self, http, server, account, other_account) -> None:
        """Another account's media is 404 for GET and DELETE, and absent from its list."""
        _, item = await upload(http, server, account, png(2, 2), "a.png")
        for method in ("GET", "DELETE"):
            async with http.request(method, f"{server.url}{P}/media/{item['id']}",
                                    headers=other_account.headers) as r:
                assert r.status == 404
        async with http.get(f"{server.url}{P}/media", headers=other_account.headers) as r:
            assert await r.json() == []

    async def test_bad_listing_params(self, http, server, account) -> None:
        """Invalid paging or sorting is a 400."""
        for params in ({"limit": "0"}, {"page": "-1"}, {"sortBy": "owner"}, {"sortOrder": "up"}, {"limit": "x"}):
            async with http.get(f"{server.url}{P}/media", params=params, headers=account.headers) as r:
                assert r.status == 400, params
