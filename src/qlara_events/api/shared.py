"""Resources the Platform API modules share: the blob store, the download-link key, the Kafka publisher."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import asyncpg
from aiohttp import web

from qlara_events.errors import NotFound, Unauthorized
from qlara_events.ingress.publisher import Publisher
from qlara_events.storage import BlobStore, check_signature

STORE: Final = web.AppKey("blob_store", BlobStore)
SIGNING_KEY: Final = web.AppKey("url_signing_key", bytes)
#: Produces to qlara.send-requests (inbox replies, campaign messages).
PUBLISHER: Final = web.AppKey("api_publisher", Publisher)
#: Headers of every served file: browsers must not guess another type than the stored one (an upload sniffed
#: as HTML would run as script on this origin), and a file opened directly runs in a sandbox without scripts.
SAFE_FILE_HEADERS: Final = {"X-Content-Type-Options": "nosniff",
                            "Content-Security-Policy": "default-src 'none'; sandbox"}


async def serve_signed(request: web.Request, prefix: str, lookup: Callable[[str], Awaitable[asyncpg.Record | None]],
                       headers: Callable[[asyncpg.Record], Mapping[str, str]], gone: str) -> web.StreamResponse:
    """Serve ``{prefix}/{key}`` from the blob store if its signed link is valid and its row still exists.

    No API key: the HMAC signature and expiry in the query are the credential (see storage.sign_url).
    """
    key = request.match_info["key"]
    problem = check_signature(request.app[SIGNING_KEY], f"{prefix}/{key}", request.query.get("expires"),
                              request.query.get("signature"))
    if problem:
        raise Unauthorized(f"download link refused: {problem}")
    row = await lookup(key)
    if row is None:
        raise NotFound(gone)
    return web.FileResponse(request.app[STORE].path(key), headers={**headers(row), **SAFE_FILE_HEADERS})
