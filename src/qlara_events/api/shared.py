"""The blob store and the download-link key shared by media and exports."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from qlara_events.storage import BlobStore

STORE: Final = web.AppKey("blob_store", BlobStore)
SIGNING_KEY: Final = web.AppKey("url_signing_key", bytes)


def get_store(app: web.Application) -> BlobStore:
    """The application's blob store."""
    return app[STORE]
