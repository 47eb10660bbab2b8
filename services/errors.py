"""Domain errors, each carrying the gRPC status a client gets for it."""

from __future__ import annotations

import grpc


class HeraldError(Exception):
    """An error the client caused or can act on; its message is shown to the client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


class FailedPrecondition(HeraldError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(HeraldError):
    """The server ended the call; the client should retry (e.g. resume a stream)."""

    code = grpc.StatusCode.ABORTED


class Unavailable(HeraldError):
    code = grpc.StatusCode.UNAVAILABLE
