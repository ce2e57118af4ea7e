"""The loop shared by the lease-based workers (exports, campaigns): claim a job, run it, else wait a little.

Jobs live in Postgres and are claimed with ``FOR UPDATE SKIP LOCKED`` and a lease, so any number of
processes share them and a dead worker's job is resumed when its lease expires; ``wake`` lets a request
that just queued a job skip the poll delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog

T = TypeVar("T")


async def claim_loop(stopping: asyncio.Event, wake: asyncio.Event, claim: Callable[[], Awaitable[T | None]],
                     run: Callable[[T], Awaitable[None]], *, poll_s: float,
                     log: structlog.typing.FilteringBoundLogger, what: str) -> None:
    """Until ``stopping``: claim the next job and run it; when there is none, wait for ``wake`` or ``poll_s``."""
    while not stopping.is_set():
        try:
            job = await claim()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning(f"{what}_claim_failed", error=repr(exc))
            job = None
        if job is not None:
            await run(job)
            continue
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), poll_s)
        except TimeoutError:
            pass


class Worker:
    """A worker driven by :func:`claim_loop`: ``wake`` skips its poll delay, :meth:`stop` ends it."""

    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self.wake = asyncio.Event()

    def stop(self) -> None:
        """Stop after the current job (a job cut short is resumed through its lease)."""
        self._stopping.set()
        self.wake.set()
