# syntax=docker/dockerfile:1
# One image for every role:
#   docker run IMAGE serve --role ingress|api|projector|dispatcher   (or: migrate --topics, once per release)
# Stage 1 builds the package and its dependencies into a virtualenv; stage 2 copies only that virtualenv,
# so no build tool, cache or source tree reaches the runtime image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/qlara
WORKDIR /src
RUN /opt/qlara/bin/pip install --upgrade pip
# Dependencies first, from pyproject.toml alone: this layer is reused until the dependency list changes.
COPY pyproject.toml README.md ./
RUN /opt/qlara/bin/python -c "import tomllib; \
print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/qlara/bin/pip wheel --wheel-dir /wheels -r /tmp/requirements.txt
COPY src ./src
# A wheel, not an editable install: package data declared in pyproject.toml (store/migrations/*.sql, ...)
# is copied into site-packages, where `qlara-events migrate` finds it through importlib.resources;
# the last command fails the build if the migrations did not make it into the package.
RUN /opt/qlara/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/qlara/bin/pip install --no-index --find-links /wheels qlara-events \
 && /opt/qlara/bin/python -c "from qlara_events.store.migrate import migrations; assert migrations()"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="qlara-events" \
      org.opencontainers.image.description="Delivery-event backbone: provider callbacks -> Kafka -> Postgres -> partner webhooks" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it; no login shell, no home to write to.
RUN groupadd --system --gid 10001 qlara \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin qlara
# Owned by root and read-only for the service user: the process cannot modify its own code.
COPY --from=build /opt/qlara /opt/qlara
ENV PATH=/opt/qlara/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    QLARA_HTTP_HOST=0.0.0.0 \
    QLARA_HTTP_PORT=8080 \
    QLARA_LOG_FORMAT=json
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
# Liveness only (the process answers); readiness (/readyz) is the orchestrator's business.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
# aiohttp handles SIGTERM: in-flight requests finish and consumer offsets are committed before exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["qlara-events"]
CMD ["serve", "--role", "all"]
