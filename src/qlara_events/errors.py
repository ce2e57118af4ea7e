"""Every error the service raises on purpose, under one root.

Each class carries its HTTP status and error code; one middleware (``qlara_events.http``) turns them into
the JSON body ``{"status", "error", "message"}`` Qlara documents for 429.
"""

from __future__ import annotations

from http import HTTPStatus


class QlaraError(Exception):
    """Root of the errors the service raises deliberately."""

    status: int = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, object]:
        """The JSON error body for this error."""
        return {
            "status": self.status,
            "error": HTTPStatus(self.status).phrase,
            "message": self.message,
            **self.extra,
        }


class BadRequest(QlaraError):
    """The request is malformed or fails validation."""

    status = HTTPStatus.BAD_REQUEST


class InvalidEvent(BadRequest):
    """A canonical or provider event does not match its schema; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class Unauthorized(QlaraError):
    """Credentials or signature missing or invalid."""

    status = HTTPStatus.UNAUTHORIZED


class Forbidden(QlaraError):
    """Authenticated, but not allowed to do this."""

    status = HTTPStatus.FORBIDDEN


class NotFound(QlaraError):
    """No such resource in the caller's account (another account's resource is also NotFound)."""

    status = HTTPStatus.NOT_FOUND


class Conflict(QlaraError):
    """The resource already exists or is in a state that forbids the change."""

    status = HTTPStatus.CONFLICT


class PayloadTooLarge(QlaraError):
    """The body or the number of events exceeds the limit."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedMediaType(QlaraError):
    """The body's content type is not one this endpoint reads."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class TooManyRequests(QlaraError):
    """The key's rate limit is exhausted; retry after ``retry_after`` s (Qlara's documented 429 body)."""

    status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Rate limit exceeded. Please retry after {retry_after} seconds.", retryAfter=retry_after)
        self.retry_after = retry_after


class ImportsBusy(TooManyRequests):
    """The account already runs as many imports on this process as it may; retry after ``retry_after`` s."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        QlaraError.__init__(self, message, retryAfter=retry_after)
        self.retry_after = retry_after


class Unavailable(QlaraError):
    """A dependency (Kafka, Postgres) is unavailable; the caller should retry after ``retry_after`` s."""

    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, retryAfter=retry_after)
        self.retry_after = retry_after


class Overloaded(Unavailable):
    """This process is already working on as many requests as it admits; retry after ``retry_after`` s."""
