"""The system under test, as separate processes on a three-broker cluster, and one scenario's timeline.

A scenario: a fresh account with a webhook pointing at the receiver; the load starts; at ``fault_at_s`` the
fault is injected, held for the scenario's ``hold_s`` and repaired; the load runs to its end; the harness
waits (bounded) for the pipeline to settle, then accounts exactly. Meanwhile a monitor samples, every
0.25 s, the generator's failures and the oldest acknowledged receipt whose webhook has not arrived, which
gives the recovery time (see docs/reliability.md for the definition).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from chaos import accounting
from chaos.cluster import Cluster, HarnessError, Process, postgres, receiver, role
from chaos.load import Load, Message
from qlara_events.config import Settings
from qlara_events.kafka import ensure_topics
from qlara_events.standard_webhooks import new_secret
from qlara_events.store import accounts, webhooks
from qlara_events.store.migrate import migrate

#: The service's roles under test, each its own process, with the port offset it serves on.
ROLES = {"ingress": 0, "projector": 1, "dispatcher": 2}
RECEIVER_OFFSET = 3
SAMPLE_S = 0.25


@dataclasses.dataclass(frozen=True)
class Config:
    """One run's parameters."""

    short: bool
    events_per_s: float
    duration_s: float
    fault_at_s: float
    settle_s: float
    cluster: Cluster
    port_base: int
    database_url: str
    run_dir: Path
    #: Messages per request (each request carries that many events).
    per_request: int = 5
    #: A receipt acknowledged this long ago without its webhook means the pipeline is behind (or twice the
    #: steady-state p99 measured before the fault, when that is longer).
    caught_up_s: float = 2.0


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A fault, how long it is held, and its repair."""

    name: str
    description: str
    fault: Callable[[Harness], Awaitable[str]]
    repair: Callable[[Harness], Awaitable[None]]
    hold_s: float
    #: Accounts (each with a webhook of its own, all answered by the receiver) the messages are spread over.
    endpoints: int = 1


@dataclasses.dataclass
class Outcome:
    """Everything measured in one scenario."""

    name: str
    description: str
    fault: str = ""
    hold_s: float = 0.0
    recovery_s: float | None = None
    settle_s: float | None = None
    e2e_p50_before_s: float | None = None
    e2e_p99_before_s: float | None = None
    e2e_max_s: float | None = None
    caught_up_s: float | None = None
    #: Roles whose /readyz failed after the scenario (a loop died inside a process that still runs).
    unready: dict[str, str] = dataclasses.field(default_factory=dict)
    load: dict[str, Any] = dataclasses.field(default_factory=dict)
    accounting: accounting.Accounting = dataclasses.field(default_factory=accounting.Accounting)

    @property
    def ok(self) -> bool:
        """No guarantee was broken."""
        return not self.accounting.failures

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        return d


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if it does not exist (connecting to ``postgres`` for that)."""
    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval("select 1 from pg_database where datname = $1", name):
            await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()


class Harness:
    """Owns the cluster, the service's processes, the receiver, and runs scenarios one at a time."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.run_id = uuid.uuid4().hex[:8]
        prefix = f"chaos{self.run_id}."
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("QLARA_")},
            "QLARA_KAFKA_BOOTSTRAP": config.cluster.bootstrap,
            "QLARA_DATABASE_URL": config.database_url,
            "QLARA_KAFKA_TOPIC_PREFIX": prefix,
            "QLARA_PROJECTOR_GROUP": f"{prefix}projector",
            "QLARA_DISPATCHER_GROUP": f"{prefix}dispatcher",
            "QLARA_KAFKA_REPLICATION": "3",
            "QLARA_KAFKA_PARTITIONS": "6",
            "QLARA_INGEST_SECRET": new_secret(),
            "QLARA_URL_SIGNING_KEY": new_secret(),
            "QLARA_WEBHOOK_REQUIRE_HTTPS": "false",
            "QLARA_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
            "QLARA_WEBHOOK_ALLOWED_PORTS": "1024-65535",  # the loopback receivers' ephemeral ports
            # Long enough to outlast the 30 s receiver outage: about 38 s of attempts, plus breaker pauses.
            "QLARA_WEBHOOK_RETRY_SCHEDULE": "0,1,2,5,5,5,5,5,5,5",
            "QLARA_WEBHOOK_BREAKER_COOLDOWN": "2",
            "QLARA_WEBHOOK_TIMEOUT": "5",
            "QLARA_WEBHOOK_LEASE_MARGIN": "5",
            # At the default 10 attempts in flight per endpoint the dispatcher fell behind 250 webhooks/s on the
            # shared two-core machine (20 s backlog before any fault); the receiver is local and answers at once.
            "QLARA_WEBHOOK_CONCURRENCY_PER_ENDPOINT": "50",
            "QLARA_LOG_LEVEL": "info",
        }
        self.settings = Settings.from_env(self.env)
        config.run_dir.mkdir(parents=True, exist_ok=True)
        self.services: dict[str, Process] = {
            name: role(name, port=config.port_base + off, env=self.env, log_dir=config.run_dir)
            for name, off in ROLES.items()
        }
        self.deliveries_path = config.run_dir / "deliveries.jsonl"
        self.services["receiver"] = receiver(port=config.port_base + RECEIVER_OFFSET, out=self.deliveries_path,
                                             log_dir=config.run_dir)
        self.receiver_log = accounting.ReceiverLog(self.deliveries_path)
        self.cluster_started = False

    @property
    def ingress_url(self) -> str:
        """Where the generator sends."""
        return f"http://127.0.0.1:{self.services['ingress'].port}"

    async def setup(self, log: Callable[[str], None]) -> None:
        """Cluster, database, topics, then the processes."""
        log(f"starting the three-broker cluster {self.config.cluster.name} ({self.config.cluster.bootstrap})")
        self.cluster_started = True
        await self.config.cluster.up()
        if not self.config.short:
            await postgres("start")  # idempotent: the shared PostgreSQL normally runs already
        await ensure_database(self.config.database_url)
        conn = await asyncpg.connect(self.config.database_url)
        try:
            await migrate(conn)
            # Earlier runs' webhooks (and, cascading, their queued deliveries) would otherwise be retried by
            # this run's dispatcher against a receiver that no longer knows them.
            await conn.execute("delete from webhooks where account_id in"
                               " (select account_id from accounts where name like 'chaos-%')")
        finally:
            await conn.close()
        await ensure_topics(self.settings)
        for name, proc in self.services.items():
            await proc.start()
            log(f"{name} runs (pid {proc.pid}, port {proc.port})")
        await self.warm_up(log)

    async def warm_up(self, log: Callable[[str], None], *, timeout_s: float = 90.0) -> None:
        """A few messages end to end, so consumer groups have formed before the first scenario is timed."""
        token = f"warmup-{self.run_id}"
        account_ids = await self._new_accounts(token, 1)
        started = time.monotonic()
        load = Load(url=self.ingress_url, secret=self.env["QLARA_INGEST_SECRET"], account_ids=account_ids,
                    tag=f"warmup{self.run_id}", events_per_s=20, duration_s=2)
        await load.run()
        wanted = {m.message_id for m in load.messages if m.delivered_acked_at is not None}
        while True:
            self.receiver_log.poll()
            got = {d.message_id for d in self.receiver_log.by_token.get(token, []) if d.status == "DELIVERED"}
            if wanted and wanted <= got:
                break
            if time.monotonic() - started > timeout_s:
                raise HarnessError(f"warm-up: {len(got)}/{len(wanted)} webhooks within {timeout_s:.0f} s")
            await asyncio.sleep(0.25)
        log(f"warm-up: {len(wanted)} messages end to end in {time.monotonic() - started:.1f} s")

    async def teardown(self) -> None:
        """Stop every process, then the cluster."""
        for proc in self.services.values():
            await proc.stop()
        if self.cluster_started:
            await self.config.cluster.down()

    async def _new_accounts(self, token: str, n: int) -> list[str]:
        """``n`` accounts whose webhooks all post to the receiver under ``token`` (one lane each)."""
        conn = await asyncpg.connect(self.config.database_url)
        out = []
        try:
            for k in range(n):
                account_id, _ = await accounts.create_account(conn, f"chaos-{token}-{k}")
                url = f"http://127.0.0.1:{self.services['receiver'].port}/hook/{token}"
                await webhooks.create(conn, account_id, url, new_secret())
                out.append(account_id)
        finally:
            await conn.close()
        return out

    async def unready(self) -> dict[str, str]:
        """Roles whose /readyz does not answer 200, with what it said."""
        found: dict[str, str] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for name in ROLES:
                url = f"http://127.0.0.1:{self.services[name].port}/readyz"
                try:
                    async with http.get(url) as resp:
                        if resp.status != 200:
                            found[name] = f"{resp.status} {(await resp.text())[:300]}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    found[name] = repr(exc)
        return found

    async def heal(self, names: list[str], log: Callable[[str], None]) -> None:
        """Restart roles left broken by a scenario, so the next scenario measures only its own fault."""
        for name in names:
            proc = self.services[name]
            await proc.kill()
            await proc.start()
            log(f"  restarted {name} (it was not ready after the scenario) before the next scenario")

    async def queued(self, account_ids: list[str]) -> int:
        """Deliveries of these accounts still in the retry schedule or leased to an attempt."""
        conn = await asyncpg.connect(self.config.database_url)
        try:
            n: int = await conn.fetchval(
                "select count(*) from webhook_deliveries where account_id = any($1::text[])"
                " and state in ('scheduled', 'in_flight')", account_ids)
        finally:
            await conn.close()
        return n

    async def lags(self) -> tuple[int | None, int | None]:
        """Consumer lag of the projector and the dispatcher groups."""
        s = self.settings
        return (await accounting.consumer_lag(s.kafka_bootstrap, s.consumer_group_projector, s.topics.delivery_events),
                await accounting.consumer_lag(s.kafka_bootstrap, s.consumer_group_dispatcher, s.topics.status_changes))

    async def run(self, sc: Scenario, log: Callable[[str], None]) -> Outcome:
        """One scenario, from a fresh account to its accounting."""
        cfg = self.config
        out = Outcome(sc.name, sc.description, hold_s=sc.hold_s)
        token = f"{sc.name}-{self.run_id}"
        account_ids = await self._new_accounts(token, sc.endpoints)
        pending: dict[str, float] = {}  # message id -> when its receipt was acknowledged (insertion order)
        webhooked: dict[str, float] = {}  # message id -> first DELIVERED webhook's arrival
        acked_at: dict[str, float] = {}

        def on_ack(m: Message) -> None:
            assert m.delivered_acked_at is not None
            acked_at[m.message_id] = m.delivered_acked_at
            if m.message_id not in webhooked:
                pending[m.message_id] = m.delivered_acked_at

        load = Load(url=self.ingress_url, secret=self.env["QLARA_INGEST_SECRET"], account_ids=account_ids,
                    tag=f"{sc.name}{self.run_id}", events_per_s=cfg.events_per_s, duration_s=cfg.duration_s,
                    per_request=cfg.per_request, on_delivered_ack=on_ack)
        marks: dict[str, float] = {}

        def sample() -> None:
            now = time.time()
            for d in self.receiver_log.poll():
                if d.token == token and d.status == "DELIVERED" and d.message_id not in webhooked:
                    webhooked[d.message_id] = d.at
                    pending.pop(d.message_id, None)
            if "caught_up_s" in marks:
                # Recovered = caught up for good: any later moment behind (a backlog building up after the
                # repair, as while a killed consumer's session expires) moves the recovery point past it.
                oldest = now - next(iter(pending.values())) if pending else 0.0
                behind = ("repaired" not in marks or oldest > marks["caught_up_s"]
                          or now - load.stats.last_failure_at < 1.0)
                if behind:
                    marks.pop("recovered", None)
                elif "recovered" not in marks:
                    marks["recovered"] = now

        stop_monitor = asyncio.Event()

        async def monitor() -> None:
            while not stop_monitor.is_set():
                sample()
                await asyncio.sleep(SAMPLE_S)

        monitor_task = asyncio.create_task(monitor())
        load_task = asyncio.create_task(load.run())
        try:
            await asyncio.sleep(cfg.fault_at_s)
            sample()
            marks["fault"] = time.time()
            # "Caught up" is relative to the steady state just measured: a loaded machine is slower throughout.
            steady = sorted(webhooked[m] - acked_at[m] for m in webhooked if m in acked_at)
            p99 = steady[min(len(steady) - 1, int(len(steady) * 0.99))] if steady else 0.0
            marks["caught_up_s"] = max(cfg.caught_up_s, 2 * p99)
            out.fault = await sc.fault(self)
            log(f"  fault at {cfg.fault_at_s:.0f} s: {out.fault}")
            await asyncio.sleep(sc.hold_s)
            await sc.repair(self)
            marks["repaired"] = time.time()
            log(f"  repaired {marks['repaired'] - marks['fault']:.1f} s after the fault")
            await load_task
            marks["load_done"] = time.time()
            log(f"  load done: {load.stats.acknowledged} events acknowledged, {load.stats.rejected} non-2xx answers,"
                f" {load.stats.connection_errors} connection errors, {load.stats.gave_up} given up")
            lags: tuple[int | None, int | None] = (None, None)
            deadline = time.monotonic() + cfg.settle_s
            while time.monotonic() < deadline:
                sample()
                if not pending:
                    lags = await self.lags()
                    # Lag 0 means every change is delivered *or durable in the retry schedule*; a receipt
                    # whose 2xx the generator never saw (it is not in ``pending``) may still be waiting there.
                    if lags == (0, 0) and not await self.queued(account_ids):
                        marks["settled"] = time.time()
                        break
                await asyncio.sleep(1.0)
            else:
                lags = await self.lags()
            sample()
        finally:
            stop_monitor.set()
            await monitor_task
            if not load_task.done():
                load_task.cancel()
        out.unready = await self.unready()
        out.caught_up_s = round(marks.get("caught_up_s", cfg.caught_up_s), 2)
        if "recovered" in marks:
            out.recovery_s = round(marks["recovered"] - marks["fault"], 1)
        if "settled" in marks:
            out.settle_s = round(marks["settled"] - marks["load_done"], 1)
        # Steady state: messages whose webhook arrived before the fault.
        before = sorted(webhooked[m] - acked_at[m] for m in webhooked
                        if m in acked_at and webhooked[m] < marks["fault"])
        if before:
            out.e2e_p50_before_s = round(statistics.median(before), 3)
            out.e2e_p99_before_s = round(before[min(len(before) - 1, int(len(before) * 0.99))], 3)
        every = [webhooked[m] - acked_at[m] for m in webhooked if m in acked_at]
        if every:
            out.e2e_max_s = round(max(every), 3)
        st = load.stats
        out.load = {"events_per_s": cfg.events_per_s, "duration_s": cfg.duration_s, "per_request": cfg.per_request,
                    "requests": st.requests,
                    "acknowledged": st.acknowledged, "non_2xx": st.rejected, "connection_errors": st.connection_errors,
                    "gave_up": st.gave_up, "answers": {str(k): v for k, v in sorted(st.answers.items())}}
        pool = await asyncpg.create_pool(cfg.database_url, min_size=1, max_size=2)
        try:
            out.accounting = await accounting.account(
                pool, account_ids=account_ids, messages=load.messages,
                deliveries=self.receiver_log.by_token.get(token, []), lag_projector=lags[0], lag_dispatcher=lags[1],
                bootstrap=self.settings.kafka_bootstrap, topic=self.settings.topics.delivery_events)
        finally:
            await pool.close()
        if st.gave_up:
            out.accounting.failures.append(f"{st.gave_up} events were never acknowledged within the generator's bound")
        for name, said in out.unready.items():
            out.accounting.failures.append(f"{name} not ready after the scenario (/readyz: {said})")
        if out.recovery_s is None:
            out.accounting.failures.append("the pipeline did not catch up (no recovery) before the settle deadline")
        return out
