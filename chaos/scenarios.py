"""The faults, one at a time: a Kafka broker, the projector, PostgreSQL, the ingress, the dispatcher (during a
load spread over 50 webhooks), the partner receiver."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from chaos.cluster import postgres
from chaos.harness import Harness, Scenario

_killed_broker: dict[str, int] = {}


async def _coordinator(h: Harness) -> int:
    """The broker coordinating the projector's consumer group (it also leads partitions): the worst one to lose."""
    admin = AIOKafkaAdminClient(bootstrap_servers=h.settings.kafka_bootstrap, client_id="chaos-admin")
    try:
        await admin.start()
        return int(await admin.find_coordinator(h.settings.consumer_group_projector))
    except KafkaError:
        return 2
    finally:
        await admin.close()


async def kill_broker(h: Harness) -> str:
    """kill -9 the projector group's coordinator."""
    node = await _coordinator(h)
    _killed_broker[h.run_id] = node
    await h.config.cluster.kill(node)
    return f"kill -9 of broker {node} (127.0.0.1:{h.config.cluster.port(node)}, the projector group's coordinator)"


async def restart_broker(h: Harness) -> None:
    """Start the killed broker again with its data."""
    await h.config.cluster.start(_killed_broker.pop(h.run_id))


def _kill(name: str, endpoints: int = 1) -> Scenario:
    async def fault(h: Harness) -> str:
        proc = h.services[name]
        pid = proc.pid
        await proc.kill()
        return f"kill -9 of the {name} process (pid {pid})"

    async def repair(h: Harness) -> None:
        await h.services[name].start()

    spread = f" (messages spread over {endpoints} webhooks)" if endpoints > 1 else ""
    return Scenario(name, f"kill -9 the {name} and restart it{spread}", fault, repair, hold_s=1.0,
                    endpoints=endpoints)


async def stop_postgres(_: Harness) -> str:
    """Fast shutdown of the shared PostgreSQL (every connection is cut)."""
    await postgres("stop")
    return "deploy/local/postgres.sh stop (fast shutdown of the shared PostgreSQL)"


async def start_postgres(_: Harness) -> None:
    """Start it again."""
    await postgres("start")


async def receiver_down(h: Harness) -> str:
    """kill -9 the partner receiver: its port refuses connections until it is back."""
    proc = h.services["receiver"]
    pid = proc.pid
    await proc.kill()
    return f"partner receiver killed (pid {pid}); its port refuses connections"


async def receiver_up(h: Harness) -> None:
    """Bring the receiver back on the same port."""
    await h.services["receiver"].start()


def full() -> list[Scenario]:
    """Every scenario of `make chaos`, in the order they run."""
    return [
        Scenario("broker", "kill -9 a Kafka broker, restart it after 10 s", kill_broker, restart_broker, hold_s=10.0),
        _kill("projector"),
        Scenario("postgres", "restart PostgreSQL (postgres.sh stop, then start)", stop_postgres, start_postgres,
                 hold_s=0.0),
        _kill("ingress"),
        _kill("dispatcher", endpoints=50),
        Scenario("receiver", "partner receiver down for 30 s", receiver_down, receiver_up, hold_s=30.0),
    ]


def short() -> list[Scenario]:
    """The reduced set run inside `make test`: never PostgreSQL, which other tests share."""
    return [
        Scenario("broker", "kill -9 a Kafka broker, restart it after 3 s", kill_broker, restart_broker, hold_s=3.0),
        _kill("projector"),
    ]
