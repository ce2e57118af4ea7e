"""Resources the Platform API modules share: the blob store, the download-link key, the Kafka publisher."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from qlara_events.ingress.publisher import Publisher
from qlara_events.storage import BlobStore

STORE: Final = web.AppKey("blob_store", BlobStore)
SIGNING_KEY: Final = web.AppKey("url_signing_key", bytes)
#: Produces to qlara.send-requests (inbox replies, campaign messages).
PUBLISHER: Final = web.AppKey("api_publisher", Publisher)
