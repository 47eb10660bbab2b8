"""Domain errors, each carrying the gRPC status a client gets for it."""

from __future__ import annotations

import math

import grpc

from services.status_details import STATUS_DETAILS_KEY, status_with_retry_info

Metadata = tuple[tuple[str, str | bytes], ...]

# Trailing metadata of a rate-limited call: seconds to wait, a decimal (e.g. `0.25`).
RETRY_AFTER_KEY = "retry-after"


class HeraldError(Exception):
    """An error the client caused or can act on; its message is shown to the client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def trailing_metadata(self, message: str) -> Metadata:
        """Trailers sent with the status (`message` is the one the client gets)."""
        return ()


class InvalidArgument(HeraldError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(HeraldError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(HeraldError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(HeraldError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(HeraldError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RateLimited(ResourceExhausted):
    """A rate limit refused the call: retry after `retry_after_s` seconds, which the client
    gets in the message, as `retry-after` trailing metadata (seconds) and as a google.rpc
    RetryInfo in `grpc-status-details-bin`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        # Rounded up to the millisecond: a client waiting exactly this long finds the tokens.
        self.retry_after_s = math.ceil(retry_after_s * 1000) / 1000

    def trailing_metadata(self, message: str) -> Metadata:
        return (
            (RETRY_AFTER_KEY, f"{self.retry_after_s:.3f}"),
            (STATUS_DETAILS_KEY, status_with_retry_info(self.code, message, self.retry_after_s)),
        )


class AlreadyExists(HeraldError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(HeraldError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(HeraldError):
    """The server ended the call; the client should retry (e.g. resume a stream)."""

    code = grpc.StatusCode.ABORTED


class Unavailable(HeraldError):
    code = grpc.StatusCode.UNAVAILABLE
