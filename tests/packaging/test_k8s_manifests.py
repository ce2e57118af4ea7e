"""deploy/k8s: validated against the official Kubernetes schemas (kubernetes-validate, offline) and wired as documented."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from packcheck import REPO, Tools, load_yaml_docs, run

K8S = REPO / "deploy" / "k8s"
ROLES = ("ingress", "api", "projector", "dispatcher")
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@functools.cache
def _objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in load_yaml_docs(path)]


def _one(kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


class TestSchemas:
    def test_manifests_validate_strictly(self, tools: Tools) -> None:
        """kubernetes-validate --strict accepts every manifest (unknown fields are errors)."""
        assert len(MANIFESTS) >= 7
        result = run(tools.bin("kubernetes-validate"), "--strict", *MANIFESTS)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count(" passed for resource ") == len(_objects())

    def test_validator_rejects_an_unknown_field(self, tools: Tools, tmp_path: Path) -> None:
        """The schema check is real: a misspelt field of a Deployment is an error."""
        bad = tmp_path / "bad.yaml"
        bad.write_text((K8S / "ingress.yaml").read_text().replace("readinessProbe:", "readynessProbe:", 1))
        result = run(tools.bin("kubernetes-validate"), "--strict", bad)
        assert result.returncode != 0
        assert "readynessProbe" in result.stdout + result.stderr

    def test_kustomization_lists_every_manifest(self) -> None:
        """`kubectl apply -k deploy/k8s` applies every manifest of the folder."""
        (kust,) = load_yaml_docs(K8S / "kustomization.yaml")
        assert sorted(kust["resources"]) == sorted(p.name for p in MANIFESTS)


class TestRoles:
    def test_a_deployment_service_and_pdb_per_role(self) -> None:
        """Each role has a Deployment running `serve --role ROLE`, a Service and a PodDisruptionBudget selecting it."""
        for role in ROLES:
            dep = _one("Deployment", f"qlara-{role}")
            labels = dep["spec"]["template"]["metadata"]["labels"]
            assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
            assert _container(dep)["args"] == ["serve", "--role", role]
            assert _one("Service", f"qlara-{role}")["spec"]["selector"].items() <= labels.items()
            assert _one("PodDisruptionBudget", f"qlara-{role}")["spec"]["selector"]["matchLabels"].items() \
                <= labels.items()

    def test_hpa_for_ingress_and_api_only(self) -> None:
        """ingress and api scale on CPU; projector and dispatcher are bounded by partitions, not autoscaled."""
        hpas = {o["spec"]["scaleTargetRef"]["name"]: o for o in _objects() if o["kind"] == "HorizontalPodAutoscaler"}
        assert set(hpas) == {"qlara-ingress", "qlara-api"}
        for name, hpa in hpas.items():
            assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
            assert "replicas" not in _one("Deployment", name)["spec"], "the HPA owns the replica count"

    def test_probes_resources_and_security(self) -> None:
        """Every role probes /healthz and /readyz, has requests and limits, and runs as the image's non-root uid."""
        user = re.search(r"^USER (\d+)", (REPO / "Dockerfile").read_text(), re.M)
        assert user is not None, "the Dockerfile sets no numeric USER"
        uid = int(user.group(1))
        for role in ROLES:
            dep = _one("Deployment", f"qlara-{role}")
            c = _container(dep)
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert set(c["resources"]) == {"requests", "limits"}
            assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {"cpu", "memory"}
            pod = dep["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]

    def test_projectors_do_not_exceed_the_partition_count(self) -> None:
        """Projector replicas stay within the partitions the ConfigMap gives qlara.delivery-events."""
        partitions = int(_one("ConfigMap", "qlara-events")["data"]["QLARA_KAFKA_PARTITIONS"])
        assert 1 <= _one("Deployment", "qlara-projector")["spec"]["replicas"] <= partitions

    def test_migrate_job(self) -> None:
        """A Job runs `migrate --topics` once, never restarting in place."""
        (job,) = [o for o in _objects() if o["kind"] == "Job"]
        assert _container(job)["args"] == ["migrate", "--topics"]
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


class TestConfiguration:
    def test_env_comes_from_the_configmap_and_secret(self) -> None:
        """Every container reads the one ConfigMap and the one Secret, which exist."""
        _one("ConfigMap", "qlara-events")
        _one("Secret", "qlara-events")
        for obj in _objects():
            if obj["kind"] in {"Deployment", "Job"}:
                assert _container(obj)["envFrom"] == [
                    {"configMapRef": {"name": "qlara-events"}}, {"secretRef": {"name": "qlara-events"}}]

    def test_secret_holds_placeholders_only(self) -> None:
        """No real secret is committed: every value is marked REPLACE_ME."""
        for key, value in _one("Secret", "qlara-events")["stringData"].items():
            assert "REPLACE_ME" in value, key

    def test_every_variable_is_documented(self) -> None:
        """Each ConfigMap/Secret key is a setting listed in docs/configuration.md."""
        documented = set(re.findall(r"`(QLARA_[A-Z0-9_]+)`", (REPO / "docs" / "configuration.md").read_text()))
        keys = set(_one("ConfigMap", "qlara-events")["data"]) | set(_one("Secret", "qlara-events")["stringData"])
        assert keys - documented == set()


class TestStorageAndOps:
    """Files the api acknowledged survive restarts and are seen by every replica; ops endpoints are apart."""

    def test_api_storage_is_one_shared_volume(self) -> None:
        """The api mounts a ReadWriteMany claim at QLARA_STORAGE_DIR and declares it shared for its replicas."""
        config = _one("ConfigMap", "qlara-events")["data"]
        dep = _one("Deployment", "qlara-api")
        (mount,) = [m for m in _container(dep)["volumeMounts"] if m["mountPath"] == config["QLARA_STORAGE_DIR"]]
        (volume,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
        claim = _one("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert config["QLARA_STORAGE_SHARED"] == "true"
        hpa = next(o for o in _objects() if o["kind"] == "HorizontalPodAutoscaler"
                   and o["spec"]["scaleTargetRef"]["name"] == "qlara-api")
        assert int(config["QLARA_API_REPLICAS"]) >= hpa["spec"]["maxReplicas"]

    def test_probes_and_scrapes_use_the_ops_port(self) -> None:
        """/healthz, /readyz and /metrics are reached on QLARA_OPS_PORT, not on the serving port."""
        ops = int(_one("ConfigMap", "qlara-events")["data"]["QLARA_OPS_PORT"])
        for role in ROLES:
            dep = _one("Deployment", f"qlara-{role}")
            c = _container(dep)
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports["ops"] == ops and ports["http"] != ops
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert c[probe]["httpGet"]["port"] == "ops", (role, probe)
            assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(ops)

    def test_the_shipped_configuration_passes_the_startup_checks_once_filled_in(self) -> None:
        """As shipped, every role refuses to start (placeholders); with them replaced, none does."""
        from qlara_events.config import Settings, production_problems

        env = {**_one("ConfigMap", "qlara-events")["data"], **_one("Secret", "qlara-events")["stringData"]}
        shipped = production_problems(env, Settings.from_env(env), ROLES)
        assert any("QLARA_URL_SIGNING_KEY still holds the placeholder" in p for p in shipped), shipped
        filled = {k: v.replace("REPLACE_ME", f"operator-value-{i}") for i, (k, v) in enumerate(env.items())}
        filled["QLARA_INGEST_SECRET"] = "whsec_b3BlcmF0b3ItaW5nZXN0LXNlY3JldA=="
        assert production_problems(filled, Settings.from_env(filled), ROLES) == []
