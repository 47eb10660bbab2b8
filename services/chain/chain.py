"""The transformer chain: each notification turned into a variant once, shared by every session.

Invariants:

- Order: format, then signature, then compression. The signature covers the bytes a client
  parses (after decompression), so it does not depend on a compressor's output, and a payload is
  compressed once it has its final form.
- A variant of a notification is built once per `(variant, notification bytes)` and kept in a
  bounded cache (first in, first out): a fan-out to N sessions of one variant transforms it once
  and then only splices cached bytes into each session's stream message.
- Plain (the empty variant) is never touched: those sessions get today's bytes.
- `transform` takes the encoded `SubscribeResponse` a session writer produced and returns the
  one to send: deliveries get `sealed` instead of `notification`, SessionStarted gets
  `encodings`; heartbeats and closing pass through. The same function serves every transport.
- `transform_inbox` does the same to an encoded `ListInboxResponse`: each item gets `sealed`
  instead of `notification`, from the same cache, so a page lists the very bytes the stream sent.
"""

from __future__ import annotations

from herald.v1 import stream_pb2
from services import metrics, wire
from services.chain.compression import Codec, codecs
from services.chain.formats import convert
from services.chain.policy import (
    COMPRESSIONS,
    FORMATS,
    IDENTITY,
    PROTOBUF,
    ChainPolicy,
    PolicyProvider,
    Variant,
    negotiate,
    policy_of,
)
from services.chain.signing import KeyRing, signed_message
from services.config import ChainSettings, StartupError

_TAG_DELIVERIES = 0x0A  # SubscribeResponse.deliveries (and DeliveryBatch.deliveries)
_TAG_STARTED = 0x1A  # SubscribeResponse.session_started
_TAG_NOTIFICATION = 0x0A  # Delivery.notification
_TAG_SEALED = b"\x32"  # Delivery.sealed, field 6, length-delimited
_TAG_ENCODINGS = b"\x42"  # SessionStarted.encodings, field 8, length-delimited
_TAG_ITEMS = 0x0A  # ListInboxResponse.items
_TAG_ITEM_SEALED = b"\x3a"  # InboxItem.sealed, field 7, length-delimited


def default_policy(settings: ChainSettings) -> ChainPolicy:
    """Every tenant's policy from HERALD_CHAIN_* (until the registry's tenant settings say
    otherwise).

    Raises:
        StartupError: a compression or format that does not exist.
    """
    compression = settings.compressions
    formats = settings.format_names
    for name in compression:
        if name not in COMPRESSIONS:
            raise StartupError(
                f"HERALD_CHAIN_COMPRESSION: unknown compression {name!r} (zstd, gzip)"
            )
    for name in formats:
        if name not in FORMATS:
            raise StartupError(f"HERALD_CHAIN_FORMATS: unknown format {name!r} (protobuf, json)")
    return ChainPolicy(
        compression=compression,
        compression_min_bytes=settings.compression_min_bytes,
        signing_required=settings.signing_required,
        formats=tuple(dict.fromkeys((PROTOBUF, *formats))),
    )


def _read_varint(data: bytes, index: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[index]
        index += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index
        shift += 7


def _length_delimited(data: bytes, index: int) -> tuple[bytes, int]:
    length, index = _read_varint(data, index)
    end = index + length
    if end > len(data):
        raise ValueError("truncated field")
    return data[index:end], end


class Chain:
    """Negotiates variants, seals notifications per variant (cached) and rewrites encoded
    stream messages; one per node, shared by every transport."""

    def __init__(
        self,
        keys: KeyRing | None = None,
        cache_entries: int = 4096,
        policy_for: PolicyProvider | None = None,
    ) -> None:
        self.keys = keys or KeyRing.empty()
        default = ChainPolicy()
        self._policy_for: PolicyProvider = policy_for or (lambda _tenant: default)
        self._codecs: dict[str, Codec] = codecs()
        self._limit = cache_entries
        self._cache: dict[tuple[Variant, bytes], bytes] = {}
        self._started_suffix: dict[Variant, bytes] = {}
        self._transforms: dict[Variant, metrics.Tally] = {}
        self._hits = metrics.CHAIN_CACHE.labelled_tally("hit")
        self._misses = metrics.CHAIN_CACHE.labelled_tally("miss")

    @property
    def can_sign(self) -> bool:
        return self.keys.active is not None

    async def variant_for(self, tenant: str, accept: list[str]) -> Variant:
        """The variant of a session of `tenant` that accepts `accept` (any transport).

        Raises:
            FailedPrecondition: the tenant requires signing and this node cannot sign.
        """
        policy = await policy_of(self._policy_for, tenant)
        return negotiate(accept, policy, can_sign=self.can_sign)

    # -- one notification --------------------------------------------------------------------

    def seal(self, notification: bytes, variant: Variant) -> stream_pb2.SealedNotification:
        """The notification (its stored bytes) through the chain; not cached."""
        payload = convert(notification, variant.format)
        sealed = stream_pb2.SealedNotification(format=variant.format, encoding=IDENTITY)
        if variant.signed:
            sealed.key_id, sealed.signature = self.keys.sign(
                signed_message(variant.format, payload)
            )
        if variant.compression != IDENTITY and len(payload) >= variant.compression_min_bytes:
            payload = self._codecs[variant.compression].compress(payload)
            sealed.encoding = variant.compression
        sealed.payload = payload
        return sealed

    def sealed_field(self, notification: bytes, variant: Variant) -> bytes:
        """`Delivery.sealed` (tag, length, message) for the notification, built once per
        variant while it stays in the cache."""
        key = (variant, notification)
        field = self._cache.get(key)
        if field is not None:
            self._hits.inc()
            return field
        self._misses.inc()
        encoded = self.seal(notification, variant).SerializeToString()
        field = _TAG_SEALED + wire.varint(len(encoded)) + encoded
        cache = self._cache
        if len(cache) >= self._limit:
            del cache[next(iter(cache))]
        cache[key] = field
        tally = self._transforms.get(variant)
        if tally is None:
            tally = self._transforms[variant] = metrics.CHAIN_TRANSFORMS.labelled_tally(
                variant.label
            )
        tally.inc()
        return field

    # -- one stream message ------------------------------------------------------------------

    def transform(self, response: bytes, variant: Variant) -> bytes:
        """The encoded SubscribeResponse to send to a session of `variant` (see the module
        docstring); `response` as the session writer made it."""
        if variant.plain or not response:
            return response
        tag = response[0]
        if tag == _TAG_DELIVERIES:
            _, start = _read_varint(response, 1)
            return wire.batch_response(self._deliveries(response, variant, start))
        if tag == _TAG_STARTED:
            started, _ = _length_delimited(response, 1)
            started += self._suffix(variant)
            return bytes((_TAG_STARTED,)) + wire.varint(len(started)) + started
        return response

    def transform_batch(self, batch: bytes, variant: Variant) -> bytes:
        """An encoded DeliveryBatch for `variant` (for a transport that frames batches itself)."""
        if variant.plain:
            return batch
        return wire.repeated_field_1(self._deliveries(batch, variant))

    def transform_inbox(self, response: bytes, variant: Variant) -> bytes:
        """The encoded ListInboxResponse to answer a ListInbox of `variant` with: each item's
        `notification` (field 1) replaced by `sealed` (field 7), the rest as it was."""
        if variant.plain:
            return response
        parts: list[bytes] = []
        index, end = 0, len(response)
        while index < end:
            start = index
            key, index = _read_varint(response, index)
            if key & 7 != 2:
                raise ValueError("unexpected wire type in a ListInboxResponse")
            value, index = _length_delimited(response, index)
            if key == _TAG_ITEMS:
                item = self._fields_sealed(value, variant, _TAG_ITEM_SEALED)
                parts.append(bytes((_TAG_ITEMS,)) + wire.varint(len(item)) + item)
            else:
                parts.append(response[start:index])
        return b"".join(parts)

    def _deliveries(self, batch: bytes, variant: Variant, index: int = 0) -> list[bytes]:
        """The deliveries of the DeliveryBatch that fills `batch` from `index` on, sealed."""
        # The hot path of a transformed stream: run once per session and stream message, so
        # the varints are read inline (lengths under 16 KiB take at most two bytes).
        out: list[bytes] = []
        cache = self._cache
        end = len(batch)
        while index < end:
            if batch[index] != _TAG_DELIVERIES:
                raise ValueError("not a DeliveryBatch")
            byte = batch[index + 1]
            if byte < 0x80:
                length, index = byte, index + 2
            else:
                length, index = _read_varint(batch, index + 1)
            stop = index + length
            if stop > end:
                raise ValueError("truncated delivery")
            if batch[index] == _TAG_NOTIFICATION:
                # The writer puts the notification first (wire.delivery) and never repeats it.
                byte = batch[index + 1]
                if byte < 0x80:
                    size, start = byte, index + 2
                else:
                    size, start = _read_varint(batch, index + 1)
                notification = batch[start : start + size]
                field = cache.get((variant, notification))
                if field is None:
                    field = self.sealed_field(notification, variant)
                else:
                    self._hits.value += 1
                out.append(field + batch[start + size : stop])
            else:
                out.append(self._fields_sealed(batch[index:stop], variant, _TAG_SEALED))
            index = stop
        return out

    def _fields_sealed(self, message: bytes, variant: Variant, sealed_tag: bytes) -> bytes:
        """A Delivery or an InboxItem (fields in any order) with its notification (field 1)
        replaced by the sealed one under `sealed_tag` (a one-byte tag)."""
        parts: list[bytes] = []
        index, end = 0, len(message)
        while index < end:
            start = index
            key, index = _read_varint(message, index)
            wire_type = key & 7
            if wire_type == 0:
                _, index = _read_varint(message, index)
            elif wire_type == 2:
                value, index = _length_delimited(message, index)
                if key >> 3 == 1:
                    field = self.sealed_field(value, variant)
                    parts.append(field if sealed_tag == _TAG_SEALED else sealed_tag + field[1:])
                    continue
            else:
                raise ValueError("unexpected wire type in a Delivery or an InboxItem")
            parts.append(message[start:index])
        return b"".join(parts)

    def _suffix(self, variant: Variant) -> bytes:
        suffix = self._started_suffix.get(variant)
        if suffix is None:
            suffix = self._started_suffix[variant] = b"".join(
                _TAG_ENCODINGS + wire.varint(len(token)) + token.encode()
                for token in variant.tokens
            )
        return suffix
