#!/usr/bin/env bash
# Installs the benchmark tooling into the project: vegeta (open-loop HTTP load generator, built from the Go
# module proxy into .local/bin) and py-spy (sampling profiler, from PyPI into .venv). Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
VEGETA_VERSION=v12.12.0
mkdir -p "$root/.local/bin" "$root/.local/go"
# `go install` leaves vegeta's version string empty, so a stamp file records which version was built.
stamp="$root/.local/bin/.vegeta-$VEGETA_VERSION"
if [[ ! -x "$root/.local/bin/vegeta" || ! -f "$stamp" ]]; then
  command -v go >/dev/null || { echo "Go is required to build vegeta (https://go.dev/dl/)" >&2; exit 1; }
  # -modcacherw keeps the module cache deletable by `make clean` (Go makes it read-only otherwise).
  GOBIN="$root/.local/bin" GOPATH="$root/.local/go" GOMODCACHE="$root/.local/go/pkg/mod" \
    GOCACHE="$root/.local/go/cache" GOFLAGS="-mod=mod -modcacherw" \
    go install "github.com/tsenart/vegeta/v12@${VEGETA_VERSION}"
  touch "$stamp"
fi
if ! "$root/.venv/bin/py-spy" --version >/dev/null 2>&1; then
  "$root/.venv/bin/pip" install -q 'py-spy>=0.3.14'
fi
echo "bench tools: vegeta $VEGETA_VERSION, $("$root/.venv/bin/py-spy" --version)"
