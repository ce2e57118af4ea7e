"""Outside ``--dev``, ``serve`` refuses to start on a configuration that would be unsafe or lose data (#11 items
4 and 16): placeholders left in, the development secrets, an api without a shared download-signing key, or
several api replicas on storage that is not shared. Each case runs the real command and reads its exit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from qlara_events.config import DEV_SECRETS


def serve(role: str, infra: tuple[str, str], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``serve --role ROLE`` on a port nobody uses, expected to refuse before it listens."""
    base = {**{k: v for k, v in os.environ.items() if not k.startswith("QLARA_")},
            "QLARA_KAFKA_BOOTSTRAP": infra[0], "QLARA_DATABASE_URL": infra[1], "QLARA_HTTP_PORT": "18299",
            "QLARA_URL_SIGNING_KEY": "a-signing-key-of-this-deployment"}
    base.update(env)
    return subprocess.run([sys.executable, "-m", "qlara_events.cli", "serve", "--role", role, *args],
                          env={k: v for k, v in base.items() if v != "<unset>"}, capture_output=True, text=True,
                          timeout=60)


def refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "refusing to start outside --dev" in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


class TestRefusals:
    def test_a_placeholder(self, infra: tuple[str, str]) -> None:
        refused(serve("ingress", infra, QLARA_TWILIO_AUTH_TOKEN="REPLACE_ME"),
                "QLARA_TWILIO_AUTH_TOKEN still holds the placeholder REPLACE_ME")

    @pytest.mark.parametrize("name", ["QLARA_INGEST_SECRET", "QLARA_TWILIO_AUTH_TOKEN", "QLARA_URL_SIGNING_KEY"])
    def test_a_development_secret(self, infra: tuple[str, str], name: str) -> None:
        refused(serve("api" if name == "QLARA_URL_SIGNING_KEY" else "ingress", infra, **{name: DEV_SECRETS[name]}),
                f"{name} is the development secret")

    def test_an_api_without_a_signing_key(self, infra: tuple[str, str]) -> None:
        refused(serve("api", infra, QLARA_URL_SIGNING_KEY="<unset>"), "the api role needs QLARA_URL_SIGNING_KEY")

    def test_api_replicas_on_storage_that_is_not_shared(self, infra: tuple[str, str]) -> None:
        refused(serve("api", infra, QLARA_API_REPLICAS="3"), "QLARA_API_REPLICAS is 3 but QLARA_STORAGE_SHARED")

    def test_every_problem_at_once(self, infra: tuple[str, str]) -> None:
        """One start attempt lists everything to fix, not one problem per attempt."""
        result = serve("api", infra, QLARA_URL_SIGNING_KEY="<unset>", QLARA_API_REPLICAS="2",
                       QLARA_JASMIN_TOKEN="REPLACE_ME")
        refused(result, "QLARA_JASMIN_TOKEN", "QLARA_URL_SIGNING_KEY", "QLARA_API_REPLICAS is 2")


class TestAllowed:
    def test_dev_accepts_the_development_secrets(self, infra: tuple[str, str]) -> None:
        """--dev is for `make run`: development secrets and no signing key pass (``--check`` exits there)."""
        result = serve("all", infra, "--dev", "--check", QLARA_URL_SIGNING_KEY="<unset>",
                       QLARA_TWILIO_AUTH_TOKEN=DEV_SECRETS["QLARA_TWILIO_AUTH_TOKEN"])
        assert (result.returncode, result.stdout.strip()) == (0, "configuration ok for ingress,api,projector,"
                                                                 "dispatcher (--dev)"), result.stderr

    def test_shared_storage_for_several_replicas(self, infra: tuple[str, str]) -> None:
        result = serve("api", infra, "--check", QLARA_API_REPLICAS="3", QLARA_STORAGE_SHARED="true")
        assert (result.returncode, result.stdout.strip()) == (0, "configuration ok for api"), result.stderr

    def test_check_refuses_what_a_start_refuses(self, infra: tuple[str, str]) -> None:
        refused(serve("api", infra, "--check", QLARA_API_REPLICAS="3"), "QLARA_API_REPLICAS is 3")
