"""One error hierarchy for the whole server, and the one table every transport answers it with.

The core raises these. Each class carries Triton's error code (:class:`ErrorCode`); the HTTP edge
answers Triton's ``{"error": "..."}`` body with that code's HTTP status (Triton's
``HttpCodeFromError``) and the gRPC edge ends the call with its gRPC status code (Triton's
``GrpcStatusUtil::CodeToStatus``), both from :data:`STATUS` below. Nothing here imports aiohttp or
grpc: gRPC codes are kept as their numbers.
"""

from __future__ import annotations

import enum
from http import HTTPStatus
from typing import ClassVar


class ErrorCode(enum.Enum):
    """Triton's error codes (``TRITONSERVER_Error_Code``)."""

    UNKNOWN = "UNKNOWN"
    INTERNAL = "INTERNAL"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARG = "INVALID_ARG"
    UNAVAILABLE = "UNAVAILABLE"
    UNSUPPORTED = "UNSUPPORTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CANCELLED = "CANCELLED"


#: Triton's code -> (HTTP status, gRPC status code number), as Triton answers each transport
STATUS: dict[ErrorCode, tuple[HTTPStatus, int]] = {
    ErrorCode.UNKNOWN: (HTTPStatus.BAD_REQUEST, 2),  # grpc UNKNOWN
    ErrorCode.INTERNAL: (HTTPStatus.INTERNAL_SERVER_ERROR, 13),  # INTERNAL
    ErrorCode.NOT_FOUND: (HTTPStatus.NOT_FOUND, 5),  # NOT_FOUND
    ErrorCode.INVALID_ARG: (HTTPStatus.BAD_REQUEST, 3),  # INVALID_ARGUMENT
    ErrorCode.UNAVAILABLE: (HTTPStatus.SERVICE_UNAVAILABLE, 14),  # UNAVAILABLE
    ErrorCode.UNSUPPORTED: (HTTPStatus.NOT_IMPLEMENTED, 12),  # UNIMPLEMENTED
    ErrorCode.ALREADY_EXISTS: (HTTPStatus.BAD_REQUEST, 6),  # ALREADY_EXISTS
    ErrorCode.CANCELLED: (HTTPStatus.BAD_REQUEST, 1),  # CANCELLED
}

#: an HTTP status given to an error (``error.status = ...``) -> the code it stands for
_CODE_OF_STATUS = {
    HTTPStatus.BAD_REQUEST: ErrorCode.INVALID_ARG,
    HTTPStatus.NOT_FOUND: ErrorCode.NOT_FOUND,
    HTTPStatus.INTERNAL_SERVER_ERROR: ErrorCode.INTERNAL,
    HTTPStatus.SERVICE_UNAVAILABLE: ErrorCode.UNAVAILABLE,
    HTTPStatus.NOT_IMPLEMENTED: ErrorCode.UNSUPPORTED,
}


class NaiadError(Exception):
    """Base class. ``code`` is Triton's error code; ``status`` and ``grpc_code`` follow from it."""

    code: ErrorCode = ErrorCode.INVALID_ARG
    #: an HTTP status of the class's own, in place of its code's (a 413 has no Triton code)
    http_status: ClassVar[HTTPStatus | None] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @property
    def status(self) -> HTTPStatus:
        """The HTTP status Triton answers this error with."""
        if self.http_status is not None:
            return self.http_status
        return STATUS[self.code][0]

    @status.setter
    def status(self, value: int) -> None:
        self.code = _CODE_OF_STATUS.get(HTTPStatus(value), ErrorCode.UNKNOWN)

    @property
    def grpc_code(self) -> int:
        """The gRPC status code number Triton ends a call with for this error."""
        return STATUS[self.code][1]


class InvalidArgument(NaiadError):
    """Triton INVALID_ARG: the request (or a config) is wrong. HTTP 400."""

    code = ErrorCode.INVALID_ARG


class NotFound(NaiadError):
    """Triton NOT_FOUND: unknown model, version or region. HTTP 404."""

    code = ErrorCode.NOT_FOUND


class Unavailable(NaiadError):
    """Triton UNAVAILABLE: not ready, queue full, timed out, exiting. HTTP 503."""

    code = ErrorCode.UNAVAILABLE


class RequestTooLarge(NaiadError):
    """A request larger than a limit of the server (body, decoded tensors). HTTP 413."""

    http_status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Unsupported(NaiadError):
    """Triton UNSUPPORTED. HTTP 501, gRPC UNIMPLEMENTED."""

    code = ErrorCode.UNSUPPORTED


class InternalError(NaiadError):
    """Triton INTERNAL: something failed inside the server or a backend. HTTP 500."""

    code = ErrorCode.INTERNAL


class AlreadyExists(NaiadError):
    """Triton ALREADY_EXISTS (a shared memory region name taken). HTTP 400."""

    code = ErrorCode.ALREADY_EXISTS


class Cancelled(NaiadError):
    """Triton CANCELLED: the client cancelled the request. HTTP 400."""

    code = ErrorCode.CANCELLED


class RepositoryPollError(InternalError):
    """Triton's "failed to poll from model repository" (INTERNAL): a model's folder or the
    files and config a load request sends cannot be read or written (not found, names the
    file system refuses, JSON nested too deep). The detail is logged, never answered."""

    def __init__(self, message: str = "failed to poll from model repository") -> None:
        super().__init__(message)


class ModelLoadError(NaiadError):
    """A model could not be loaded; the model becomes UNAVAILABLE with this message as reason."""

    code = ErrorCode.INVALID_ARG
