"""Keeps the history's monthly partitions ready: at start, then every hour (runs with the projector).

A missed run costs nothing but speed: rows of a month without a partition go to the default one, and
the next run moves them into their month.
"""

from __future__ import annotations

import asyncio
from typing import Final

import asyncpg

from qlara_events.logs import get_logger
from qlara_events.store import partitions

log = get_logger("partitions")

INTERVAL_S: Final = 3600.0


class PartitionKeeper:
    """Creates next months' partitions of ``messages`` before the projector needs them."""

    def __init__(self, pool: asyncpg.Pool, interval_s: float = INTERVAL_S) -> None:
        self._pool = pool
        self._interval_s = interval_s
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Ensure the partitions now and every ``interval_s`` until :meth:`stop`."""
        while not self._stopping.is_set():
            created = await partitions.ensure(self._pool)
            if created:
                log.info("partitions_created", count=created)
            try:
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)
            except TimeoutError:
                pass

    def stop(self) -> None:
        """Stop at the next wake-up (immediately if waiting)."""
        self._stopping.set()
