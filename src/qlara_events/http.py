"""HTTP plumbing shared by every role: errors as JSON, request ids, metrics, health and readiness.

One middleware translates :class:`~qlara_events.errors.QlaraError` (and aiohttp's own HTTP errors) into the
JSON body ``{"status", "error", "message"}``; views never build error responses themselves.

The server cancels a request's task when its client disconnects (``server.HANDLER_CANCELLATION``); only views
marked with :func:`cancel_on_disconnect` (the ingress's) are stopped by that, every other view runs to its end
as if the client were still there (:func:`finish_unless_cancellable`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Final

import asyncpg
import orjson
import structlog
from aiohttp import BodyPartReader, web

from qlara_events import metrics
from qlara_events.errors import BadRequest, NotFound, PayloadTooLarge, QlaraError, TooManyRequests, Unavailable
from qlara_events.logs import get_logger

log = get_logger("http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadinessCheck = Callable[[], Awaitable[None]]

READINESS_CHECKS: Final = web.AppKey("readiness_checks", list[tuple[str, ReadinessCheck]])
ROLE: Final = web.AppKey("role", str)

#: Status recorded (metrics, log) for a request cancelled before it was answered: its client went away.
CLIENT_GONE: Final = 499

#: The largest JSON body a Platform API view reads unless it passes its own ``limit`` (the views that take
#: long id or number arrays do): no object the API documents needs more.
JSON_LIMIT: Final = 64 * 1024
#: Bytes read from a multipart part per ``read_chunk``.
PART_CHUNK: Final = 16 * 1024

_CANCELLABLE: Final[set[Handler]] = set()
#: Tasks of views that run on after their client left (strong references until they end).
_RUNNING_ON: Final[set[asyncio.Task[web.StreamResponse]]] = set()


def cancel_on_disconnect(view: Handler) -> Handler:
    """Mark ``view`` as one to stop (``CancelledError`` at its current ``await``) when its client disconnects.

    Only for views that are safe to abandon anywhere: nothing acknowledged, nothing half-written that a retry
    would not redo (the ingress: an unanswered request is retried, and event ids deduplicate).
    """
    _CANCELLABLE.add(view)
    return view


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response serialised with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: object) -> web.Response:
    """The documented error body for ``status``."""
    body = {"status": status, "error": HTTPStatus(status).phrase, "message": message, **extra}
    return json_response(body, status=status, headers=headers)


def _route(request: web.Request) -> str:
    """What logs and metrics name a request by: its route's pattern, never the path itself.

    A path can carry a credential (``GET /authentication/{value}`` takes a raw API key) and any id a client
    chose, so no log line holds one.
    """
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id to every log line of the request, time it and count it."""
    rid = request.headers.get("X-Request-Id", "")
    if not rid or len(rid) > 128 or not rid.isascii() or not rid.isprintable():
        rid = os.urandom(16).hex()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid)
    route = _route(request)
    role = request.app.get(ROLE, "all")
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = rid
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_GONE
        raise
    finally:
        elapsed = time.perf_counter() - started
        metrics.HTTP_REQUESTS.labels(role, route, str(status)).inc()
        metrics.HTTP_LATENCY.labels(role, route).observe(elapsed)
        if status >= 500 or route == "unmatched":
            log.info("http_request", method=request.method, route=route, status=status,
                     duration_ms=round(elapsed * 1000, 2))


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into the documented JSON body; never leak a traceback."""
    try:
        return await handler(request)
    except (Unavailable, TooManyRequests) as exc:
        return json_response(exc.body(), status=exc.status, headers={"Retry-After": str(exc.retry_after)})
    except QlaraError as exc:
        return json_response(exc.body(), status=exc.status)
    except web.HTTPRequestEntityTooLarge:
        return json_response(PayloadTooLarge("request body too large").body(), status=413)
    except (asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError, asyncpg.InterfaceError,
            asyncpg.InternalClientError, ConnectionError) as exc:
        # The database is restarting or unreachable: a retryable 503, like Kafka being down, not a 500.
        log.warning("database_unavailable", error=repr(exc), route=_route(request))
        return json_response(Unavailable("the database is unavailable; retry later").body(), status=503,
                             headers={"Retry-After": "5"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, message or exc.reason, headers=headers or None)
    except Exception:
        log.exception("unhandled_error", method=request.method, route=_route(request))
        return error_response(500, "internal error; retry after a short delay")


@web.middleware
async def finish_unless_cancellable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run a view not marked :func:`cancel_on_disconnect` to its end even if its client disconnects.

    The view runs in a task of its own, shielded: a disconnect cancels only the wait for it (the request is
    recorded with status 499), as before the server cancelled handlers at all.
    """
    if request.match_info.handler in _CANCELLABLE:
        return await handler(request)
    task = asyncio.ensure_future(handler(request))
    _RUNNING_ON.add(task)
    task.add_done_callback(_RUNNING_ON.discard)
    return await asyncio.shield(task)


async def metrics_view(request: web.Request) -> web.Response:
    """Prometheus exposition."""
    body, content_type = metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: every dependency this role needs answers (Kafka, Postgres).

    The body names each check and says ``ok`` or ``unavailable``, nothing more: the exception (which holds
    addresses and driver messages) goes to the log.
    """
    results: dict[str, str] = {}
    ok = True
    for name, check in request.app.get(READINESS_CHECKS, []):
        try:
            await check()
            results[name] = "ok"
        except Exception as exc:  # -- any failure means not ready; the log has the diagnosis
            ok = False
            results[name] = "unavailable"
            log.warning("not_ready", check=name, error=f"{type(exc).__name__}: {exc}"[:500])
    return json_response({"status": "ok" if ok else "unavailable", "checks": results}, status=200 if ok else 503)


def base_app(role: str, *, ops_routes: bool = True) -> web.Application:
    """An application with the shared middleware and /healthz; /metrics and /readyz too unless they are
    served on a port of their own (:func:`ops_app`)."""
    # client_max_size is a backstop: ingest views enforce their own, smaller limits while streaming.
    app = web.Application(middlewares=[request_context, errors_as_json, finish_unless_cancellable],
                          client_max_size=64 * 1024 * 1024)
    app[ROLE] = role
    app[READINESS_CHECKS] = []
    app.router.add_get("/healthz", healthz)
    if ops_routes:
        _add_ops_routes(app)
    return app


def _add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/readyz", readyz)


def ops_app(main: web.Application) -> web.Application:
    """/metrics, /healthz and /readyz for ``QLARA_OPS_PORT``, reading ``main``'s readiness checks."""
    app = web.Application(middlewares=[errors_as_json])
    app[ROLE] = main[ROLE]
    app[READINESS_CHECKS] = main[READINESS_CHECKS]  # the same list: checks added later count too
    app.router.add_get("/healthz", healthz)
    _add_ops_routes(app)
    return app


def path_int(request: web.Request, name: str, what: str) -> int:
    """A numeric id from the path; anything that cannot be one (too large included) is a 404, not a 500."""
    raw = request.match_info[name]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"no such {what}")
    return int(raw)


async def json_object(request: web.Request, *, limit: int = JSON_LIMIT,
                      empty_is_object: bool = False) -> dict[str, Any]:
    """The request body as a JSON object (400 otherwise; 413 past ``limit``); an empty body is ``{}`` if allowed."""
    raw = await read_body(request, limit)
    if empty_is_object and not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refusing with 413 as soon as it exceeds ``limit`` bytes (never buffered past it)."""
    if request.content_length is not None:
        if request.content_length > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        # The parser delivers exactly Content-Length bytes: one read, no chunk loop.
        return await request.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def text_part(part: BodyPartReader, max_chars: int) -> str:
    """A multipart text field of at most ``max_chars`` characters; 400 as soon as more bytes than such a value can
    take have arrived, so a huge field is never buffered (``part.read()`` would hold all of it first)."""
    problem = f"{part.name} must be text of at most {max_chars} characters"
    # Up to 4 UTF-8 bytes a character, and a transfer encoding (base64: 4/3) on top: enough never to cut short.
    limit = 6 * max_chars + 8
    raw = bytearray()
    while chunk := await part.read_chunk(PART_CHUNK):
        raw += chunk
        if len(raw) > limit:
            raise BadRequest(problem)
    value = bytes(part.decode(bytes(raw))).decode("utf-8", "replace")
    if len(value) > max_chars or "\x00" in value:
        raise BadRequest(problem)
    return value
