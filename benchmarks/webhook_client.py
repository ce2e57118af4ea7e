"""``webhook_client``: CPU per webhook POST of the dispatcher's HTTP client (``dispatcher/http1.py``) against
aiohttp's client (the baseline, what the dispatcher used before), same receiver process, same run.

Each client sends N POSTs of a webhook-sized body with 40 in flight to the bench receiver (its own process,
``benchmarks/receiver.py``), after a warm-up; the figure is the CPU (user + system) the client's process
spent per request, read with getrusage around the timed part. Both clients run in this process, one after
the other, on the event loop the bench runs (the dispatcher's own loop is the same kind).
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import yarl

from benchmarks.common import PORTS, Context, progress
from benchmarks.receiver import Receiver
from qlara_events.dispatcher.http1 import Http1Pool
from qlara_events.dispatcher.ssrf import parse_networks

TARGET = "report (the dispatcher's client costs less CPU per request than aiohttp's)"
BODY = (b'{"eventType":"DELIVERY","messageId":"5b0e2d7c-9a41-4f0b-b3c2-6f1d2a7e9c10","customerMessageId":"ship-55012",'
        b'"destination":"+393331112233","statusCode":3,"description":"Message delivered","channel":"SMS",'
        b'"timestamp":"2026-04-02T09:01:12Z","deliveryStatus":"DELIVERED"}')


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measure(post: Callable[[int], Awaitable[int]], n: int) -> dict[str, float]:
    sem = asyncio.Semaphore(40)

    async def one(i: int) -> None:
        async with sem:
            status = await post(i)
            assert status == 204, status

    await asyncio.gather(*(one(i) for i in range(200)))  # warm-up: connections, caches
    c0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    c1, t1 = _cpu(), time.perf_counter()
    return {"cpu_us_per_request": round((c1 - c0) * 1e6 / n, 1), "requests_per_s": round(n / (t1 - t0))}


async def run(ctx: Context, shared: dict[str, Any]) -> dict[str, Any]:
    """Both clients against one receiver process."""
    n = 3_000 if ctx.quick else 20_000
    recv = Receiver()
    async with recv.serve(PORTS["receiver"]) as base:
        await recv.add("c", "whsec_" + "A" * 43 + "=")
        url = f"{base}/ok/c"

        def headers(i: int) -> dict[str, str]:
            return {"Content-Type": "application/json", "webhook-id": f"msg_{i}", "webhook-timestamp": "1",
                    "webhook-signature": "v1,bm90IGNoZWNrZWQgaGVyZQ=="}

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False) as http:
            async def via_aiohttp(i: int) -> int:
                async with http.post(url, data=BODY, headers=headers(i), allow_redirects=False) as r:
                    await r.content.read(16 * 1024)
                    return r.status

            baseline = await _measure(via_aiohttp, n)
        progress(f"webhook_client: aiohttp {baseline}")
        pool = Http1Pool(allowed=parse_networks("127.0.0.0/8"), read_limit=16 * 1024, user_agent="bench")
        target = yarl.URL(url)

        async def via_http1(i: int) -> int:
            return (await pool.post(target, list(headers(i).items()), BODY)).status

        ours = await _measure(via_http1, n)
        pool.close()
        progress(f"webhook_client: dispatcher/http1.py {ours}")
    ratio = ours["cpu_us_per_request"] / baseline["cpu_us_per_request"]
    return {
        "value": ours["cpu_us_per_request"], "unit": "µs CPU per webhook POST (dispatcher client)",
        "baseline": baseline["cpu_us_per_request"], "ratio": round(ratio, 3), "target": TARGET, "met": ratio < 1,
        "requests": n, "ours": ours, "aiohttp": baseline, "loop": type(asyncio.get_running_loop()).__module__,
    }
