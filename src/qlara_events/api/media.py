"""Media (Qlara §9): streamed multipart upload with type sniffing and per-type limits, signed downloads."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from qlara_events.api import params
from qlara_events.api.auth import PREFIX, get_pool, principal
from qlara_events.api.shared import SIGNING_KEY, STORE, serve_signed
from qlara_events.config import Settings
from qlara_events.domain import media as kinds
from qlara_events.errors import BadRequest, NotFound, PayloadTooLarge, QlaraError
from qlara_events.http import json_response, path_int, text_part
from qlara_events.storage import new_key, sign_url
from qlara_events.store import media as store

BASE: Final = f"{PREFIX}/media"
FILES: Final = "/files/media"
SETTINGS: Final = web.AppKey("media_settings", Settings)
CHUNK: Final = 64 * 1024
#: Bytes kept in memory to read image dimensions (a JPEG's frame header is near the start).
HEAD_BYTES: Final = 64 * 1024
MAX_FIELD: Final = 2000
#: folderId: a positive 64-bit id (the column is a bigint), in decimal.
MAX_FOLDER_ID: Final = 2**63 - 1
_DIGITS: Final = re.compile(r"[0-9]{1,19}")
MAX_PAGE: Final = 1_000_000


def _ts(v: dt.datetime) -> str:
    return v.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def media_json(app: web.Application, r: asyncpg.Record) -> dict[str, Any]:
    """A media item with a fresh signed download URL."""
    s = app[SETTINGS]
    url, expires = sign_url(app[SIGNING_KEY], s.base_url, f"{FILES}/{r['storage_key']}", s.download_url_ttl_s)
    return {
        "id": r["media_id"], "name": r["name"], "description": r["description"], "folderId": r["folder_id"],
        "mimeType": r["mime_type"], "size": r["size"], "width": r["width"], "height": r["height"],
        "sha256": r["sha256"], "createdAt": _ts(r["created_at"]), "url": url,
        "urlExpiresAt": _ts(dt.datetime.fromtimestamp(expires, dt.UTC)),
    }


def _over_quota(settings: Settings) -> str:
    return (f"the account's media storage quota ({settings.media_quota_bytes} bytes) would be exceeded: delete "
            "media (DELETE /media/{id}) first")


class _Upload:
    """Streams one file part to the blob store, sniffing its type and enforcing the type's size limit."""

    def __init__(self, part: BodyPartReader, settings: Settings, quota_left: int) -> None:
        self.part = part
        self.settings = settings
        self.quota_left = quota_left
        self.mime: str | None = None
        self.head = b""
        self.sha = hashlib.sha256()

    def _limit(self) -> int:
        assert self.mime is not None
        return self.settings.media_max_image_bytes if kinds.is_image(self.mime) else \
            self.settings.media_max_video_bytes

    async def chunks(self) -> AsyncIterator[bytes]:
        size = 0
        pending = b""
        while True:
            chunk = await self.part.read_chunk(CHUNK)
            if not chunk:
                break
            if self.mime is None:
                pending += chunk
                if len(pending) < kinds.SNIFF_BYTES:
                    continue
                chunk, pending = pending, b""
                self._detect(chunk)
            size += len(chunk)
            if size > self._limit():
                raise PayloadTooLarge(f"{self.mime} files are limited to {self._limit()} bytes")
            if size > self.quota_left:
                raise PayloadTooLarge(_over_quota(self.settings))
            if len(self.head) < HEAD_BYTES:
                self.head += chunk[:HEAD_BYTES - len(self.head)]
            self.sha.update(chunk)
            yield chunk
        if self.mime is None:  # a file shorter than the sniffing window
            self._detect(pending)
            self.head, size = pending, len(pending)
            self.sha.update(pending)
            yield pending

    def _detect(self, head: bytes) -> None:
        mime = kinds.sniff(head)
        if mime is None:
            raise BadRequest("unsupported file type: JPEG, PNG, GIF or MP4 (judged from the file's bytes)")
        declared = (self.part.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if declared in kinds.SUPPORTED and declared != mime:
            raise BadRequest(f"the file was declared {declared} but its content is {mime}")
        self.mime = mime


async def upload(request: web.Request) -> web.Response:
    """POST /media (multipart: file, name, description, folderId) → 201 with the media item."""
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("send multipart/form-data with a 'file' part")
    settings = request.app[SETTINGS]
    blobs = request.app[STORE]
    fields: dict[str, str] = {}
    stored: tuple[_Upload, str, int, str] | None = None
    account = principal(request).account_id
    quota_left = settings.media_quota_bytes - await store.used_bytes(get_pool(request.app), account)
    if quota_left <= 0:
        raise PayloadTooLarge(_over_quota(settings))
    reader = await request.multipart()
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart is not supported")
            if part.name == "file":
                if stored is not None:
                    raise BadRequest("one 'file' part per request")
                up = _Upload(part, settings, quota_left)
                key = new_key("m")
                size = await blobs.write(key, up.chunks())
                stored = (up, key, size, part.filename or "file")
            elif part.name in ("name", "description", "folderId"):
                fields[part.name] = await text_part(part, MAX_FIELD)
    except QlaraError:
        if stored:
            await blobs.delete(stored[1])
        raise
    except (ValueError, AssertionError, LookupError, RuntimeError, HttpProcessingError) as exc:
        # -- aiohttp's multipart parser reports malformed bodies with these (a part header with control
        # characters is an InvalidHeader, an HttpProcessingError); they are the client's fault
        if stored:
            await blobs.delete(stored[1])
        raise BadRequest(f"malformed multipart body: {exc}") from None
    except BaseException:
        if stored:
            await blobs.delete(stored[1])
        raise
    if stored is None:
        raise BadRequest("the 'file' part is required")
    up, key, size, filename = stored
    assert up.mime is not None
    folder_id = None
    if "folderId" in fields:
        raw = fields["folderId"]
        if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_FOLDER_ID:
            await blobs.delete(key)
            raise BadRequest(f"folderId must be an integer between 1 and {MAX_FOLDER_ID}")
        folder_id = int(raw)
    wh = kinds.dimensions(up.mime, up.head)
    async with get_pool(request.app).acquire() as conn:
        row = await store.insert(
            conn, account, name=fields.get("name") or filename, description=fields.get("description"),
            folder_id=folder_id, mime_type=up.mime, size=size, width=wh[0] if wh else None,
            height=wh[1] if wh else None, sha256=up.sha.hexdigest(), storage_key=key,
            quota_bytes=settings.media_quota_bytes)
    if row is None:  # another upload of the account took the space meanwhile
        await blobs.delete(key)
        raise PayloadTooLarge(_over_quota(settings))
    return json_response(media_json(request.app, row), status=201)


def _media_id(request: web.Request) -> int:
    return path_int(request, "id", "media item")


async def list_media(request: web.Request) -> web.Response:
    """GET /media?page=&limit=&sortBy=&sortOrder= (plain array, like the other paginated lists)."""
    q = request.query
    page = params.query_int(q, "page", 0, 0, MAX_PAGE)
    limit = params.query_int(q, "limit", 10, 1, 1000)
    sort_by = q.get("sortBy", "id")
    if sort_by not in store.SORTABLE:
        raise BadRequest("sortBy must be one of " + ", ".join(store.SORTABLE))
    order = q.get("sortOrder", "asc")
    if order not in ("asc", "desc"):
        raise BadRequest("sortOrder must be asc or desc")
    rows = await store.page(get_pool(request.app), principal(request).account_id, sort_column=store.SORTABLE[sort_by],
                            descending=order == "desc", limit=limit, offset=params.offset(page, limit))
    return json_response([media_json(request.app, r) for r in rows])


async def get_media(request: web.Request) -> web.Response:
    """GET /media/{id}"""
    row = await store.get(get_pool(request.app), principal(request).account_id, _media_id(request))
    if row is None:
        raise NotFound("no such media item in this account")
    return json_response(media_json(request.app, row))


async def delete_media(request: web.Request) -> web.Response:
    """DELETE /media/{id} → 204; the bytes go too, so old signed URLs stop working."""
    key = await store.delete(get_pool(request.app), principal(request).account_id, _media_id(request))
    if key is None:
        raise NotFound("no such media item in this account")
    await request.app[STORE].delete(key)
    return web.Response(status=204)


async def download(request: web.Request) -> web.StreamResponse:
    """GET /files/media/{key}?expires=&signature= (no API key: the signature is the credential)."""
    return await serve_signed(
        request, FILES, lambda key: store.by_storage_key(get_pool(request.app), key),
        lambda row: {"Content-Type": row["mime_type"], "Cache-Control": "private, max-age=300",
                     "Content-Disposition": f'inline; filename="media-{row["media_id"]}"'},
        "this file no longer exists")


def add_routes(app: web.Application, settings: Settings) -> None:
    """Register the media routes and the signed-download route (the blob store is set up by api/app.py)."""
    app[SETTINGS] = settings
    app.router.add_post(BASE, upload)
    app.router.add_get(BASE, list_media)
    app.router.add_get(f"{BASE}/{{id}}", get_media)
    app.router.add_delete(f"{BASE}/{{id}}", delete_media)
    app.router.add_get(f"{FILES}/{{key}}", download)
