"""structlog configuration: one JSON object per line, with context bound at the edge.

Request ids (HTTP) and event ids (consumers) are bound with ``structlog.contextvars`` so every line a
request or batch causes carries them. Secrets are never passed to a logger; :func:`redact` guards the few
places that log request metadata.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote_plus

import orjson
import structlog

#: Header names whose values are credentials and never reach a log line.
SENSITIVE_HEADERS: Final = frozenset(
    {"authorization", "x-api-key", "webhook-signature", "x-twilio-signature", "x-hub-signature-256",
     "x-goog-signature", "cookie"}
)
SENSITIVE_QUERY: Final = frozenset({"token", "sig", "hub.verify_token"})


def redact(items: Mapping[str, str], sensitive: frozenset[str] = SENSITIVE_HEADERS) -> dict[str, str]:
    """A copy of headers/query parameters with credential values replaced."""
    return {k: ("[redacted]" if k.lower() in sensitive else v) for k, v in items.items()}


def redact_query(query_string: str) -> str:
    """A raw query string with the values of :data:`SENSITIVE_QUERY` parameters replaced, the rest as sent."""
    if not query_string:
        return query_string
    parts = []
    for part in query_string.split("&"):
        name, sep, _ = part.partition("=")
        if sep and unquote_plus(name).lower() in SENSITIVE_QUERY:
            part = f"{name}=[redacted]"
        parts.append(part)
    return "&".join(parts)


def configure(level: str = "info", fmt: str = "json") -> None:
    """Configure structlog (and the stdlib loggers of our dependencies) once per process."""
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=lambda o, **_: orjson.dumps(o).decode())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiokafka and aiohttp log through the stdlib: route warnings and above through the same renderer.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(lvl, logging.WARNING))
    # aiohttp's access log duplicates our own request line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger that names its component."""
    return structlog.get_logger(component=name)  # type: ignore[no-any-return]  # -- structlog returns Any
