"""The client side of the chain: a delivery (or an inbox item) back to its Notification, verified.

`Opener.open` undoes the chain in reverse order: decompress (bounded), verify the signature over
`signed_message(format, payload)` with the key named by `key_id`, parse the format. A client that
verifies (`verify=True`) refuses a delivery without a signature, with a key it does not know
(after one refresh of the keys), or whose signature does not verify: `Rejected` with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from herald.v1 import notification_pb2, stream_pb2
from services.chain.compression import Codec, DecodeFailed, codecs
from services.chain.formats import FormatError, parse
from services.chain.signing import ALGORITHM, SIGNATURE_BYTES, signed_message, verify

UNSIGNED = "unsigned"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
UNDECODABLE = "undecodable"
REASONS = (UNSIGNED, UNKNOWN_KEY, BAD_SIGNATURE, UNDECODABLE)


class Rejected(Exception):
    """A delivery the client must not use; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str, key_id: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.key_id = key_id


class Opener:
    """Decodes (and, with `verify`, verifies) deliveries with the keys it was given."""

    def __init__(self, *, verify: bool = False, keys: Iterable[stream_pb2.SigningKey] = ()) -> None:
        self.verify = verify
        self._codecs: dict[str, Codec] = codecs()
        self._keys: dict[str, Ed25519PublicKey] = {}
        self.set_keys(keys)

    def set_keys(self, keys: Iterable[stream_pb2.SigningKey]) -> None:
        """Replaces the known keys (a key no longer listed is retired: it stops verifying)."""
        known: dict[str, Ed25519PublicKey] = {}
        for key in keys:
            if key.algorithm != ALGORITHM or len(key.public_key) != 32:
                continue  # an algorithm this client does not know cannot verify anything
            known[key.key_id] = Ed25519PublicKey.from_public_bytes(key.public_key)
        self._keys = known

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def open(
        self, delivery: stream_pb2.Delivery | stream_pb2.InboxItem
    ) -> notification_pb2.Notification:
        """The notification of a delivery, or of a ListInbox item (the same two fields).

        Raises:
            Rejected: see the module docstring.
        """
        if not delivery.HasField("sealed"):
            if self.verify:
                raise Rejected(UNSIGNED, "the delivery is not signed")
            return delivery.notification
        sealed = delivery.sealed
        codec = self._codecs.get(sealed.encoding)
        if codec is None:
            raise Rejected(UNDECODABLE, "unknown encoding")
        try:
            payload = codec.decompress(sealed.payload)
        except DecodeFailed as exc:
            raise Rejected(UNDECODABLE, str(exc)) from None
        if self.verify:
            if not sealed.signature:
                raise Rejected(UNSIGNED, "the delivery is not signed")
            key = self._keys.get(sealed.key_id)
            if key is None:
                raise Rejected(
                    UNKNOWN_KEY, "signed by a key this client does not know", sealed.key_id
                )
            if len(sealed.signature) != SIGNATURE_BYTES or not verify(
                key, sealed.signature, signed_message(sealed.format, payload)
            ):
                raise Rejected(BAD_SIGNATURE, "the signature does not verify", sealed.key_id)
        try:
            return parse(payload, sealed.format)
        except FormatError as exc:
            raise Rejected(UNDECODABLE, str(exc)) from None
