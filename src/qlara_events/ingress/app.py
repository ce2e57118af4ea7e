"""Ingress routes: where a provider's receipt enters the system.

``POST /ingest/v1/events``                      canonical events from the upstream senders
``GET|POST /ingest/v1/providers/{provider}``    provider-native callbacks (providers/ verifies and normalises)

Order of checks, the same on every route: admission (503 at once past ``QLARA_INGEST_MAX_IN_FLIGHT``
requests in flight in this process) → size (413) → authenticity (401, counted, never stored) → format (400,
raw payload kept in ``qlara.ingest-rejected``) → produce and wait for acks (503 if Kafka does not
acknowledge) → 2xx.

A request counts against the cap from the moment its view starts (headers read; a body still arriving holds
its slot) until it is answered or abandoned. A client that disconnects stops its request where it is
waiting (:func:`~qlara_events.http.cancel_on_disconnect`): it was never acknowledged, so its sender retries,
and whatever of it already reached Kafka is deduplicated downstream by event id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from qlara_events import metrics
from qlara_events.config import Settings
from qlara_events.domain.events import Event
from qlara_events.errors import (
    InvalidEvent,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QlaraError,
    Unauthorized,
    Unavailable,
)
from qlara_events.http import READINESS_CHECKS, Handler, cancel_on_disconnect, json_response, read_body
from qlara_events.ingress.canonical import decode_events
from qlara_events.ingress.publisher import Publisher
from qlara_events.logs import get_logger
from qlara_events.providers import build_providers
from qlara_events.providers.base import Callback, Provider
from qlara_events.standard_webhooks import secret_key, verify

log = get_logger("ingress")

PUBLISHER: Final = web.AppKey("publisher", Publisher)
PROVIDERS: Final = web.AppKey("providers", dict[str, Provider])
SETTINGS: Final = web.AppKey("ingress_settings", Settings)
INGEST_KEY: Final = web.AppKey("ingest_key", bytes)


@dataclasses.dataclass(slots=True)
class Admission:
    """How many ingest requests this process is working on, and how many it admits at once."""

    limit: int
    retry_after_s: int
    in_flight: int = 0


ADMISSION: Final = web.AppKey("ingest_admission", Admission)


def get_publisher(app: web.Application) -> Publisher:
    """The ingress's Kafka publisher."""
    return app[PUBLISHER]


def _media_type(request: web.Request) -> str:
    return request.content_type.lower() if request.body_exists else ""


async def canonical_events(request: web.Request) -> web.Response:
    """Accept signed canonical events from the upstream sending services."""
    app = request.app
    settings = app[SETTINGS]
    if INGEST_KEY not in app:
        metrics.INGEST_REQUESTS.labels("canonical", "disabled").inc()
        raise NotFound("canonical ingest is disabled: QLARA_INGEST_SECRET is not set")
    received_at = dt.datetime.now(dt.UTC)
    try:
        body = await read_body(request, settings.ingest_max_body_bytes)
    except PayloadTooLarge:
        metrics.INGEST_REQUESTS.labels("canonical", "too_large").inc()
        raise
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        verify(app[INGEST_KEY], headers, body, time.time(), settings.ingest_timestamp_tolerance_s)
    except Unauthorized:
        metrics.INGEST_REQUESTS.labels("canonical", "unauthorized").inc()
        raise
    try:
        events = decode_events(body, _media_type(request), max_events=settings.ingest_max_events)
    except (InvalidEvent, PayloadTooLarge) as exc:
        await _reject("canonical", exc, request, headers, body, received_at)
        raise
    await _publish("canonical", events, received_at, app)
    return json_response({"accepted": len(events)}, status=202)


async def provider_callback(request: web.Request) -> web.StreamResponse:
    """Accept one provider-native callback."""
    name = request.match_info["provider"]
    provider = request.app[PROVIDERS].get(name)
    if provider is None:
        metrics.INGEST_REQUESTS.labels("unknown" if name not in _KNOWN else name, "disabled").inc()
        raise NotFound(f"provider endpoint '{name}' is not enabled on this server")
    received_at = dt.datetime.now(dt.UTC)
    try:
        body = await read_body(request, provider.max_body_bytes)
    except PayloadTooLarge:
        metrics.INGEST_REQUESTS.labels(name, "too_large").inc()
        raise
    settings = request.app[SETTINGS]
    headers = {k.lower(): v for k, v in request.headers.items()}
    cb = Callback(
        method=request.method,
        url=settings.base_url + request.raw_path,
        headers=headers,
        query=list(request.rel_url.query.items()),
        body=body,
        content_type=_media_type(request),
        received_at=received_at,
    )
    try:
        reply = provider.handshake(cb)
        if reply is None:
            provider.verify(cb)
    except QlaraError as exc:
        if exc.status in (401, 403):
            metrics.INGEST_REQUESTS.labels(name, "unauthorized").inc()
        raise
    if reply is not None:
        metrics.INGEST_REQUESTS.labels(name, "handshake").inc()
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)
    try:
        events = provider.normalize(cb)
    except InvalidEvent as exc:
        await _reject(name, exc, request, headers, body, received_at)
        raise
    await _publish(name, events, received_at, request.app)
    reply = provider.accepted(events)
    return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)


_KNOWN: Final = frozenset({"twilio", "vonage", "infobip", "whatsapp", "rbm", "jasmin"})


def _via(request: web.Request) -> str:
    """The metrics label of an ingest request: ``canonical``, a known provider, or ``unknown``."""
    name = request.match_info.get("provider")
    if name is None:
        return "canonical"
    return name if name in _KNOWN else "unknown"


def admitted(view: Handler) -> Handler:
    """``view`` behind the process's in-flight cap, and stopped when its client disconnects.

    Past the cap the answer is an immediate 503 with ``Retry-After`` (nothing read, nothing produced).
    """

    async def admit(request: web.Request) -> web.StreamResponse:
        gate = request.app[ADMISSION]
        if gate.in_flight >= gate.limit:
            metrics.INGEST_OVERLOADED.labels(_via(request)).inc()
            raise Overloaded(f"the ingress is at its limit of {gate.limit} requests in flight; "
                             f"retry after {gate.retry_after_s} s", retry_after=gate.retry_after_s)
        gate.in_flight += 1
        metrics.INGEST_IN_FLIGHT.inc()
        try:
            return await view(request)
        except asyncio.CancelledError:
            metrics.INGEST_REQUESTS.labels(_via(request), "abandoned").inc()
            raise
        finally:
            gate.in_flight -= 1
            metrics.INGEST_IN_FLIGHT.dec()

    admit.__doc__ = view.__doc__
    return cancel_on_disconnect(admit)


async def _publish(via: str, events: list[Event], received_at: dt.datetime, app: web.Application) -> None:
    try:
        await get_publisher(app).publish(events, via=via, received_at=received_at)
    except Unavailable:
        metrics.INGEST_REQUESTS.labels(via, "unavailable").inc()
        raise
    metrics.INGEST_REQUESTS.labels(via, "accepted").inc()


async def _reject(via: str, exc: QlaraError, request: web.Request, headers: dict[str, str], body: bytes,
                  received_at: dt.datetime) -> None:
    """Keep an authenticated but invalid payload; if even that fails, answer 503 so the sender retries."""
    metrics.INGEST_REQUESTS.labels(via, "rejected").inc()
    log.info("ingest_rejected", via=via, reason=exc.message, bytes=len(body))
    await get_publisher(request.app).dead_letter(
        via=via, reason=exc.message, headers=headers, query=request.rel_url.query_string,
        body=body, received_at=received_at,
    )


def setup(app: web.Application, settings: Settings) -> None:
    """Add the ingress routes and its Kafka publisher to ``app``."""
    app[SETTINGS] = settings
    app[ADMISSION] = Admission(settings.ingest_max_in_flight, settings.ingest_overload_retry_after_s)
    app[PROVIDERS] = build_providers(
        twilio_auth_token=settings.twilio_auth_token,
        vonage_signature_secret=settings.vonage_signature_secret,
        vonage_signature_method=settings.vonage_signature_method,
        infobip_token=settings.infobip_token,
        whatsapp_app_secret=settings.whatsapp_app_secret,
        whatsapp_verify_token=settings.whatsapp_verify_token,
        rbm_client_token=settings.rbm_client_token,
        jasmin_token=settings.jasmin_token,
    )
    if settings.ingest_secret:
        app[INGEST_KEY] = secret_key(settings.ingest_secret)
    publisher = Publisher(settings)
    app[PUBLISHER] = publisher

    async def publisher_ctx(_: web.Application) -> AsyncIterator[None]:
        await publisher.start()
        yield
        await publisher.stop()

    app.cleanup_ctx.append(publisher_ctx)
    app[READINESS_CHECKS].append(("kafka", publisher.check))
    callback = admitted(provider_callback)
    app.router.add_post("/ingest/v1/events", admitted(canonical_events))
    app.router.add_route("GET", "/ingest/v1/providers/{provider}", callback)
    app.router.add_route("POST", "/ingest/v1/providers/{provider}", callback)
