"""The partner's webhook receiver, run as its own process so a scenario can take it down and bring it back.

Every request to ``/hook/{token}`` is appended to a JSON-lines file *before* the 200 goes out, with one
``os.write`` on an ``O_APPEND`` descriptor: the line is in the kernel once the partner acknowledged, so
SIGKILL cannot lose a delivery the dispatcher saw succeed.

    python -m chaos.receiver --port 18103 --out deliveries.jsonl
"""

from __future__ import annotations

import argparse
import os
import time

import orjson
from aiohttp import web

OUT = web.AppKey("out", int)


async def hook(request: web.Request) -> web.Response:
    """Record the delivery (token, webhook-id, timestamp header, body), then acknowledge it."""
    body = await request.read()
    line = orjson.dumps({
        "at": time.time(),
        "token": request.match_info["token"],
        "webhookId": request.headers.get("webhook-id"),
        "webhookTimestamp": request.headers.get("webhook-timestamp"),
        "body": body.decode("utf-8", "replace"),
    }) + b"\n"
    os.write(request.app[OUT], line)
    return web.Response(status=200, text="ok")


async def healthz(_: web.Request) -> web.Response:
    """Liveness for the harness that starts this process."""
    return web.Response(status=200, text="ok")


def main() -> None:
    """Serve on loopback until killed."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True, help="JSON-lines file the deliveries are appended to")
    args = p.parse_args()
    app = web.Application()
    app[OUT] = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    app.router.add_post("/hook/{token}", hook)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, reuse_address=True)


if __name__ == "__main__":
    main()
