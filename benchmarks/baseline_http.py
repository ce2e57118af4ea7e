"""``baseline_http``: a bare aiohttp handler served the way the ingress is (``web.run_app``, one process).

It reads the body and answers 202 like ``POST /ingest/v1/events`` does, with no verification, parsing or
Kafka: the ceiling one aiohttp process on this machine sets before any of the ingress's own work.
Run: ``python -m benchmarks.baseline_http PORT``.
"""

from __future__ import annotations

import sys

from aiohttp import web

ACCEPTED = b'{"accepted":1}'


async def accept(request: web.Request) -> web.Response:
    """Read the whole body, answer 202."""
    await request.read()
    return web.Response(status=202, body=ACCEPTED, content_type="application/json")


async def ready(_: web.Request) -> web.Response:
    """Readiness, like the service's /readyz."""
    return web.Response(text="ok")


def main() -> None:
    """Serve on 127.0.0.1:PORT until SIGTERM."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", accept)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, shutdown_timeout=5)


if __name__ == "__main__":
    main()
