"""docker-compose.yml: valid against the compose-spec schema, and wired the way the README says.

No Docker engine (nor the compose plugin) runs here, so `docker compose config` is not available; the file is
validated against the official compose-spec JSON schema that check-jsonschema ships (the schema compose itself
loads), and the wiring compose would only discover at `up` time is checked below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from packcheck import REPO, Tools, load_yaml_docs, run

COMPOSE = REPO / "docker-compose.yml"
ROLES = ("ingress", "api", "projector", "dispatcher")


def _services() -> dict[str, Any]:
    (doc,) = load_yaml_docs(COMPOSE)
    services: dict[str, Any] = doc["services"]
    return services


class TestComposeSchema:
    def test_valid_against_compose_spec(self, tools: Tools) -> None:
        """check-jsonschema accepts the file under the vendored compose-spec schema (offline)."""
        result = run(tools.bin("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", COMPOSE)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_schema_check_rejects_an_unknown_key(self, tools: Tools, tmp_path: Path) -> None:
        """The schema check is strict: a misspelt service key is refused."""
        bad = tmp_path / "docker-compose.yml"
        bad.write_text(COMPOSE.read_text().replace('    restart: "no"\n', '    restart_policy: "no"\n', 1))
        result = run(tools.bin("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", bad)
        assert result.returncode == 1
        assert "restart_policy" in result.stdout + result.stderr


class TestComposeWiring:
    def test_kafka_is_the_official_image_in_kraft_mode(self) -> None:
        """Kafka runs apache/kafka:3.9.1 as broker and controller (KRaft, no ZooKeeper)."""
        kafka = _services()["kafka"]
        assert kafka["image"] == "apache/kafka:3.9.1"
        env = kafka["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller" and "ZOOKEEPER" not in " ".join(env)

    def test_each_role_runs_from_the_one_image_after_migrate(self) -> None:
        """The four roles and migrate share the image; the roles start after migrate completed."""
        services = _services()
        images = {services[s]["image"] for s in (*ROLES, "migrate")}
        assert images == {"qlara-events:local"}
        assert services["migrate"]["command"] == ["migrate", "--topics"]
        for role in ROLES:
            assert services[role]["command"] == ["serve", "--role", role]
            assert services[role]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
        assert set(services["migrate"]["depends_on"]) == {"kafka", "postgres"}

    def test_dependencies_name_existing_services(self) -> None:
        """Every depends_on entry is a service of the file."""
        services = _services()
        for name, svc in services.items():
            assert set(svc.get("depends_on", ())) <= set(services), name

    def test_roles_reach_kafka_and_postgres_by_service_name(self) -> None:
        """The roles' bootstrap and DSN point at the compose services, with the compose Postgres credentials."""
        services = _services()
        env = services["ingress"]["environment"]
        assert env["QLARA_KAFKA_BOOTSTRAP"] == "kafka:9092"
        pg = services["postgres"]["environment"]
        assert env["QLARA_DATABASE_URL"] == (
            f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}")

    def test_published_ports_are_loopback_only(self) -> None:
        """Nothing is published beyond the host's loopback interface."""
        for name, svc in _services().items():
            for port in svc.get("ports", ()):
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"

    def test_bind_mounts_exist(self) -> None:
        """Every ./ bind mount (Prometheus config, Grafana provisioning and dashboards) is in the repository."""
        mounts = [v.split(":")[0] for svc in _services().values() for v in svc.get("volumes", ())
                  if str(v).startswith("./")]
        assert {"./deploy/prometheus", "./deploy/grafana/provisioning", "./deploy/grafana/dashboards"} <= set(mounts)
        for m in mounts:
            assert (REPO / m).is_dir(), m

    def test_prometheus_loads_the_repository_config(self) -> None:
        """Prometheus reads deploy/prometheus/prometheus.yml through the mount."""
        prom = _services()["prometheus"]
        assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
        assert "./deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
