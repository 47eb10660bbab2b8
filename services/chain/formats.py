"""Format conversion: a Notification as protobuf bytes (as stored) or as canonical JSON.

Canonical JSON is protobuf's JSON mapping (`google.protobuf.json_format`: lowerCamelCase field
names, enums by name, 64-bit integers as strings, Timestamps in RFC 3339, `content.data` a plain
JSON object, fields at their default value left out) written with sorted keys, no whitespace, and
UTF-8 (no `\\u` escapes but those JSON requires). It is what the signature covers for "json", so a
client verifies the bytes it received and never has to re-serialize anything.
"""

from __future__ import annotations

import json

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from herald.v1 import notification_pb2
from services.chain.policy import JSON, PROTOBUF


class FormatError(ValueError):
    """A payload that is not a Notification in the format it claims."""


def canonical_json(notification: notification_pb2.Notification) -> bytes:
    return json.dumps(
        json_format.MessageToDict(notification),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


def convert(encoded: bytes, fmt: str) -> bytes:
    """The stored Notification bytes in `fmt`."""
    if fmt == PROTOBUF:
        return encoded
    if fmt == JSON:
        return canonical_json(notification_pb2.Notification.FromString(encoded))
    raise ValueError(f"unknown format {fmt!r}")


def parse(payload: bytes, fmt: str) -> notification_pb2.Notification:
    """The Notification a payload of `fmt` holds.

    Raises:
        FormatError: it does not hold one.
    """
    notification = notification_pb2.Notification()
    try:
        if fmt == PROTOBUF:
            notification.MergeFromString(payload)
        elif fmt == JSON:
            # Fields a newer server adds are skipped, as the protobuf decoder would.
            json_format.Parse(payload, notification, ignore_unknown_fields=True)
        else:
            raise FormatError(f"unknown format {fmt[:32]!r}")
    except (DecodeError, json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise FormatError(f"the payload is not a Notification in {fmt}") from None
    return notification
