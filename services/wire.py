"""Hand-built protobuf framing for the stream hot path.

A notification is serialized once, at ingest. What a session writes is assembled from those bytes
by concatenation, which protobuf defines to be the same as merging:

- a `Delivery` is `notification` (field 1, the stored bytes) followed by its per-session fields;
- a `DeliveryBatch` is each delivery as repeated field 1;
- a `SubscribeResponse` carrying the batch is field 1 of the oneof.

The same goes for the answer to `SendBatch`: one `SendResult` per notification, built from the
notification id and two numbers without a message object per result.

The functions here are the only place that knows those field numbers; tests check them against
the generated classes.
"""

from __future__ import annotations

_TAG_LEN_1 = b"\x0a"  # field 1, wire type 2 (length-delimited)
_TAG_LOG = b"\x12"  # Delivery.log, field 2, length-delimited
_TAG_CURSOR = b"\x18"  # Delivery.cursor, field 3, varint
_TAG_ATTEMPT = b"\x20"  # Delivery.attempt, field 4, varint
_TAG_RESUME = b"\x28"  # Delivery.resume_cursor, field 5, varint
_TAG_DUPLICATE_TRUE = b"\x10\x01"  # SendResponse.duplicate, field 2, varint 1
_TAG_RECIPIENTS = b"\x18"  # SendResponse.recipient_count, field 3, varint
_TAG_SCHEDULED_TRUE = b"\x20\x01"  # SendResponse.scheduled, field 4, varint 1


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Cursors, attempts and lengths are nearly always small: look their encoding up.
_SMALL = tuple(_encode_varint(i) for i in range(1 << 14))


def varint(value: int) -> bytes:
    """Encodes a non-negative integer as a protobuf varint."""
    if value < 16384:
        return _SMALL[value]
    return _encode_varint(value)


def notification_field(notification: bytes) -> bytes:
    """The `Delivery.notification` field for an encoded Notification; computed once per entry."""
    return _TAG_LEN_1 + varint(len(notification)) + notification


def notification_bytes(field: bytes) -> bytes:
    """The encoded Notification inside a field made by `notification_field`."""
    index, length, shift = 1, 0, 0
    while True:
        byte = field[index]
        length |= (byte & 0x7F) << shift
        index += 1
        if byte < 0x80:
            return field[index : index + length]
        shift += 7


def log_field(log: str) -> bytes:
    """The `Delivery.log` field; computed once per log."""
    raw = log.encode()
    return _TAG_LOG + varint(len(raw)) + raw


def delivery(
    notification_field_bytes: bytes,
    log_field_bytes: bytes,
    cursor: int,
    attempt: int,
    resume_cursor: int,
) -> bytes:
    """An encoded `Delivery` from the precomputed fields and this session's numbers."""
    return b"".join(
        (
            notification_field_bytes,
            log_field_bytes,
            _TAG_CURSOR,
            varint(cursor),
            _TAG_ATTEMPT,
            varint(attempt),
            _TAG_RESUME,
            varint(resume_cursor),
        )
    )


def repeated_field_1(items: list[bytes]) -> bytes:
    """Encoded messages as the repeated field 1 of their parent (`DeliveryBatch.deliveries`,
    `SendBatchResponse.results`)."""
    parts: list[bytes] = []
    for item in items:
        parts.append(_TAG_LEN_1)
        parts.append(varint(len(item)))
        parts.append(item)
    return b"".join(parts)


def batch_response(deliveries: list[bytes]) -> bytes:
    """An encoded `SubscribeResponse` whose `deliveries` batch holds the given deliveries."""
    inner = repeated_field_1(deliveries)
    return _TAG_LEN_1 + varint(len(inner)) + inner


def accepted_result(
    notification_id: str, duplicate: bool, recipient_count: int, scheduled: bool = False
) -> bytes:
    """An encoded `SendResult` whose `accepted` is the `SendResponse` with these fields."""
    raw = notification_id.encode()
    response = _TAG_LEN_1 + varint(len(raw)) + raw
    if duplicate:
        response += _TAG_DUPLICATE_TRUE
    if recipient_count:
        response += _TAG_RECIPIENTS + varint(recipient_count)
    if scheduled:
        response += _TAG_SCHEDULED_TRUE
    return _TAG_LEN_1 + varint(len(response)) + response
