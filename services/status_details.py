"""`grpc-status-details-bin`: a google.rpc.Status with a google.rpc.RetryInfo detail.

This is the trailer gRPC's rich error model reads (grpcio-status `rpc_status.from_call`, Go's
`status.FromError` + `errdetails.RetryInfo`, Java's `StatusProto`). googleapis-common-protos
is not a dependency, so the two small messages are encoded here by hand:

- google.rpc.Status: `int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3`;
- google.rpc.RetryInfo: `google.protobuf.Duration retry_delay = 1`.

`tests/test_rate_limits.py` decodes them with descriptors built from those definitions.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2

from services.wire import varint

STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_INFO_TYPE_URL = "type.googleapis.com/google.rpc.RetryInfo"


def _length_delimited(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


def retry_info(delay_s: float) -> bytes:
    """An encoded google.rpc.RetryInfo asking to retry after `delay_s` seconds."""
    seconds = math.floor(delay_s)
    nanos = round((delay_s - seconds) * 1e9)
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, 0
    duration = duration_pb2.Duration(seconds=seconds, nanos=nanos).SerializeToString()
    return _length_delimited(0x0A, duration)


def status_with_retry_info(code: grpc.StatusCode, message: str, delay_s: float) -> bytes:
    """An encoded google.rpc.Status of `code` and `message` (the call's own: readers check that
    they match) whose one detail is a RetryInfo of `delay_s`."""
    detail = any_pb2.Any(type_url=RETRY_INFO_TYPE_URL, value=retry_info(delay_s))
    number: int = code.value[0]
    encoded = b"\x08" + varint(number) if number else b""
    if message:
        encoded += _length_delimited(0x12, message.encode())
    return encoded + _length_delimited(0x1A, detail.SerializeToString())
