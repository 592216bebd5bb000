"""One error hierarchy for the whole server.

The core raises these; the HTTP edge turns them into Triton's ``{"error": "..."}`` body with the
status code of Triton's table (``HttpCodeFromError``). Nothing here imports aiohttp.
"""

from __future__ import annotations

from http import HTTPStatus


class NaiadError(Exception):
    """Base class. ``status`` is the HTTP status Triton uses for this kind of error."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(NaiadError):
    """Triton INVALID_ARG: the request (or a config) is wrong. HTTP 400."""

    status = HTTPStatus.BAD_REQUEST


class NotFound(NaiadError):
    """Triton NOT_FOUND: unknown model, version or region. HTTP 404."""

    status = HTTPStatus.NOT_FOUND


class Unavailable(NaiadError):
    """Triton UNAVAILABLE: not ready, queue full, timed out, exiting. HTTP 503."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class RequestTooLarge(NaiadError):
    """A request larger than a limit of the server (body, decoded tensors). HTTP 413."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Unsupported(NaiadError):
    """Triton UNSUPPORTED. HTTP 501."""

    status = HTTPStatus.NOT_IMPLEMENTED


class InternalError(NaiadError):
    """Triton INTERNAL: something failed inside the server or a backend. HTTP 500."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR


class RepositoryPollError(InternalError):
    """Triton's "failed to poll from model repository" (INTERNAL): a model's folder or the
    files and config a load request sends cannot be read or written (not found, names the
    file system refuses, JSON nested too deep). The detail is logged, never answered."""

    def __init__(self, message: str = "failed to poll from model repository") -> None:
        super().__init__(message)


class ModelLoadError(NaiadError):
    """A model could not be loaded; the model becomes UNAVAILABLE with this message as reason."""

    status = HTTPStatus.BAD_REQUEST


class AlreadyExists(NaiadError):
    """Triton ALREADY_EXISTS. HTTP 400."""

    status = HTTPStatus.BAD_REQUEST


class Cancelled(NaiadError):
    """Triton CANCELLED: the request was cancelled (its client went away). HTTP 400."""

    status = HTTPStatus.BAD_REQUEST
