"""Dockerfile: parsed by Docker's own parser (the `dockerfile` package wraps BuildKit's), and its build step replayed.

No Docker engine runs here, so the image is not built; instead the test builds the wheel from exactly the files
the build stage copies (minus what .dockerignore drops) and checks the package data the runtime needs is in it.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packcheck import REPO, Tools, run

PARSE = """
import json, sys, dockerfile
print(json.dumps([{"cmd": c.cmd, "flags": list(c.flags), "value": list(c.value), "json": c.json}
                  for c in dockerfile.parse_file(sys.argv[1])]))
"""


@pytest.fixture(scope="module")
def instructions(tools: Tools) -> list[dict[str, Any]]:
    """The Dockerfile's instructions as BuildKit's parser reads them."""
    result = run(tools.python, "-c", PARSE, REPO / "Dockerfile")
    assert result.returncode == 0, result.stderr
    parsed: list[dict[str, Any]] = json.loads(result.stdout)
    return parsed


def _stages(instructions: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    stages: list[list[dict[str, Any]]] = []
    for ins in instructions:
        if ins["cmd"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _last(stage: list[dict[str, Any]], cmd: str) -> dict[str, Any]:
    return [i for i in stage if i["cmd"] == cmd][-1]


class TestDockerfile:
    def test_parser_rejects_a_broken_file(self, tools: Tools, tmp_path: Path) -> None:
        """The parser is a real check: an unterminated heredoc is a parse error."""
        bad = tmp_path / "Dockerfile"
        bad.write_text("FROM python:3.11-slim\nRUN <<EOF\necho never closed\n")
        result = run(tools.python, "-c", PARSE, bad)
        assert result.returncode != 0 and "unterminated heredoc" in result.stderr

    def test_multi_stage_and_only_the_build_output_reaches_runtime(self, instructions: list[dict[str, Any]]) -> None:
        """Two stages; the runtime copies only from the build stage, by name."""
        stages = _stages(instructions)
        assert len(stages) == 2
        build_name = stages[0][0]["value"][-1]
        assert stages[0][0]["value"][-2].upper() == "AS"
        copies = [i for i in stages[1] if i["cmd"] == "COPY"]
        assert copies and all(f"--from={build_name}" in i["flags"] for i in copies)

    def test_runtime_runs_as_a_numeric_non_root_user(self, instructions: list[dict[str, Any]]) -> None:
        """USER is numeric (so Kubernetes' runAsNonRoot can verify it) and not 0."""
        user = _last(_stages(instructions)[1], "USER")["value"][0]
        uid = user.split(":")[0]
        assert uid.isdigit() and int(uid) != 0

    def test_one_image_for_every_role(self, instructions: list[dict[str, Any]]) -> None:
        """The entrypoint is the CLI, so `serve --role X` and `migrate` are just arguments."""
        runtime = _stages(instructions)[1]
        assert _last(runtime, "ENTRYPOINT")["value"] == ["qlara-events"]
        assert _last(runtime, "CMD")["value"][0] == "serve"
        assert "/healthz" in " ".join(_last(runtime, "HEALTHCHECK")["value"])
        assert _last(runtime, "EXPOSE")["value"] == ["8080"]

    def test_copied_sources_exist_and_pass_dockerignore(self, instructions: list[dict[str, Any]]) -> None:
        """Every COPY source of the build stage exists and is re-included by .dockerignore."""
        allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
                   if line.startswith("!")]
        for ins in _stages(instructions)[0]:
            if ins["cmd"] == "COPY":
                for src in ins["value"][:-1]:
                    assert (REPO / src).exists(), src
                    assert src.rstrip("/") in allowed, src


class TestImageContent:
    def test_the_wheel_carries_the_package_data(self, tools: Tools, tmp_path: Path) -> None:
        """The wheel built from the build stage's context holds every package-data file (migrations first)."""
        context = tmp_path / "context"
        context.mkdir()
        shutil.copy(REPO / "pyproject.toml", context)
        shutil.copy(REPO / "README.md", context)
        shutil.copytree(REPO / "src", context / "src",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        out = tmp_path / "wheels"
        # --no-build-isolation: the tools venv has setuptools, so nothing is downloaded at test time.
        result = run(tools.python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                     "--wheel-dir", out, context, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        (wheel,) = out.glob("qlara_events-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
        package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
        expected = {
            f"{pkg}/{f.relative_to(REPO / 'src' / pkg).as_posix()}"
            for pkg, globs in package_data.items()
            for pattern in globs
            for f in (REPO / "src" / pkg).rglob("*")
            if f.is_file() and fnmatch.fnmatch(f.relative_to(REPO / "src" / pkg).as_posix(), pattern)
        }
        assert any(n.startswith("qlara_events/store/migrations/") and n.endswith(".sql") for n in expected)
        assert expected - names == set()
        assert "qlara_events/cli.py" in names
