"""Where the tests find Kafka and Postgres.

1. ``QLARA_TEST_KAFKA_BOOTSTRAP`` / ``QLARA_TEST_DATABASE_URL`` when set;
2. else testcontainers, when a Docker engine answers;
3. else the local infrastructure ``make test`` starts (deploy/local/infra.sh).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

LOCAL_KAFKA = "127.0.0.1:9092"
LOCAL_DATABASE = "postgresql://postgres@127.0.0.1:55432/qlara_test"


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]  # -- testcontainers' dependency, untyped
    except ImportError:
        return False
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not os.path.exists("/var/run/docker.sock"):
        return False
    try:
        client = docker.from_env(timeout=3)
    except Exception:  # -- any failure means no usable engine
        return False
    try:
        return bool(client.ping())
    except Exception:  # -- a socket with no engine behind it
        return False
    finally:
        client.close()


@contextlib.contextmanager
def infrastructure() -> Iterator[tuple[str, str]]:
    """Yield (kafka bootstrap, database URL) for the test session."""
    kafka = os.environ.get("QLARA_TEST_KAFKA_BOOTSTRAP")
    database = os.environ.get("QLARA_TEST_DATABASE_URL")
    if kafka and database:
        yield kafka, database
        return
    if not kafka and not database and _docker_available():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with KafkaContainer().with_kraft() as k, PostgresContainer("postgres:16", driver=None) as pg:
            yield k.get_bootstrap_server(), pg.get_connection_url()
        return
    yield kafka or LOCAL_KAFKA, database or LOCAL_DATABASE
