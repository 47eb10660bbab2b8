"""The transformer chain as values: every variant round-trips, tampering is caught, the cache
shares work, negotiation follows the policy."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.v1 import notification_pb2, stream_pb2
from services import metrics, wire
from services.chain import Chain, ChainPolicy, KeyRing, Opener, Rejected, Variant, negotiate
from services.chain.compression import MAX_DECODED_BYTES, Gzip, Zstd
from services.chain.formats import canonical_json
from services.chain.keys_http import signing_keys_response
from services.chain.opening import BAD_SIGNATURE, UNDECODABLE, UNKNOWN_KEY, UNSIGNED
from services.chain.policy import PLAIN
from services.chain.signing import load_dir, signed_message, write_private_key
from services.config import StartupError
from services.errors import FailedPrecondition

FORMATS = ("protobuf", "json")
COMPRESSIONS = ("identity", "gzip", "zstd")
VARIANTS = [
    Variant(fmt, compression, signed, min_bytes)
    for fmt, compression, signed, min_bytes in itertools.product(
        FORMATS, COMPRESSIONS, (False, True), (0, 256)
    )
]

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_json_value = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def notifications(draw: st.DrawFn) -> notification_pb2.Notification:
    n = notification_pb2.Notification(
        id=draw(st.text("0123456789abcdef", min_size=1, max_size=32)),
        tenant_id=draw(_text),
        priority=draw(st.sampled_from([0, 1, 2, 3])),  # type: ignore[arg-type]
        ttl_seconds=draw(st.integers(0, 2**32 - 1)),
        idempotency_key=draw(_text),
    )
    n.target.user_id = draw(_text)
    n.content.title = draw(_text)
    n.content.body = draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=1500))
    for _ in range(draw(st.integers(0, 2))):
        n.content.actions.add(id=draw(_text), label=draw(_text), url=draw(_text))
    n.content.data.update(draw(st.dictionaries(_text, _json_value, max_size=4)))
    n.metadata.update(draw(st.dictionaries(_text, _text, max_size=3)))
    n.created_at.seconds = draw(st.integers(0, 2**34))
    n.created_at.nanos = draw(st.integers(0, 999_999_999))
    return n


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    directory = tmp_path_factory.mktemp("keys")
    write_private_key(directory, "k1")
    return load_dir(directory)


def _delivery(sealed_field: bytes) -> stream_pb2.Delivery:
    return stream_pb2.Delivery.FromString(sealed_field + b"\x12\x04user\x18\x07\x20\x01\x28\x07")


@settings(max_examples=60, deadline=None)
@given(notification=notifications(), variant=st.sampled_from(VARIANTS))
def test_every_variant_round_trips(
    ring: KeyRing, notification: notification_pb2.Notification, variant: Variant
) -> None:
    chain = Chain(ring)
    encoded = notification.SerializeToString()
    delivery = _delivery(chain.sealed_field(encoded, variant))
    sealed = delivery.sealed
    assert (sealed.format, bool(sealed.signature)) == (variant.format, variant.signed)
    expect_compressed = variant.compression != "identity" and (
        len(encoded if variant.format == "protobuf" else canonical_json(notification))
        >= variant.compression_min_bytes
    )
    assert sealed.encoding == (variant.compression if expect_compressed else "identity")
    opener = Opener(verify=variant.signed, keys=signing_keys_response(ring).keys)
    assert opener.open(delivery) == notification


@settings(max_examples=40, deadline=None)
@given(
    notification=notifications(),
    variant=st.sampled_from([v for v in VARIANTS if v.signed]),
    where=st.sampled_from(["payload", "signature", "format", "key_id"]),
    position=st.integers(0, 10_000),
    flip=st.integers(1, 255),
)
def test_any_tampering_with_a_signed_delivery_is_rejected(
    ring: KeyRing,
    notification: notification_pb2.Notification,
    variant: Variant,
    where: str,
    position: int,
    flip: int,
) -> None:
    delivery = _delivery(Chain(ring).sealed_field(notification.SerializeToString(), variant))
    value = getattr(delivery.sealed, where)
    raw = bytearray(value.encode() if isinstance(value, str) else value)
    raw[position % len(raw)] ^= flip
    if isinstance(value, str):
        try:
            setattr(delivery.sealed, where, raw.decode())
        except UnicodeDecodeError:
            return  # not a string protobuf would parse: it never reaches the opener
    else:
        setattr(delivery.sealed, where, bytes(raw))
    opener = Opener(verify=True, keys=signing_keys_response(ring).keys)
    with pytest.raises(Rejected) as rejected:
        opener.open(delivery)
    assert rejected.value.reason in (BAD_SIGNATURE, UNDECODABLE, UNKNOWN_KEY)


def test_a_verifying_client_rejects_unsigned_deliveries(ring: KeyRing) -> None:
    n = notification_pb2.Notification(id="a1")
    opener = Opener(verify=True, keys=signing_keys_response(ring).keys)
    plain = stream_pb2.Delivery(notification=n)
    with pytest.raises(Rejected) as rejected:
        opener.open(plain)
    assert rejected.value.reason == UNSIGNED
    compressed_only = _delivery(Chain(ring).sealed_field(n.SerializeToString(), Variant("json")))
    with pytest.raises(Rejected) as rejected:
        opener.open(compressed_only)
    assert rejected.value.reason == UNSIGNED
    # Without `verify` the same deliveries open.
    assert Opener().open(plain) == n
    assert Opener().open(compressed_only) == n


def test_a_signature_of_another_key_or_a_retired_key_is_rejected(
    ring: KeyRing, tmp_path: Path
) -> None:
    write_private_key(tmp_path, "k1")  # same id, another key
    impostor = Chain(load_dir(tmp_path))
    n = notification_pb2.Notification(id="a1").SerializeToString()
    delivery = _delivery(impostor.sealed_field(n, Variant(signed=True)))
    with pytest.raises(Rejected) as rejected:
        Opener(verify=True, keys=signing_keys_response(ring).keys).open(delivery)
    assert rejected.value.reason == BAD_SIGNATURE
    with pytest.raises(Rejected) as rejected:
        Opener(verify=True, keys=[]).open(delivery)
    assert (rejected.value.reason, rejected.value.key_id) == (UNKNOWN_KEY, "k1")


def test_the_signature_covers_exactly_the_documented_bytes(ring: KeyRing) -> None:
    n = notification_pb2.Notification(id="a1", tenant_id="acme")
    n.content.data.update({"k": 1})
    sealed = Chain(ring).seal(n.SerializeToString(), Variant("json", "identity", True))
    assert sealed.payload == b'{"content":{"data":{"k":1.0}},"id":"a1","tenantId":"acme"}'
    assert ring.active is not None
    ring.active.public.verify(sealed.signature, b"herald.notification.v1\njson\n" + sealed.payload)
    assert signed_message("json", sealed.payload) == b"herald.notification.v1\njson\n" + (
        sealed.payload
    )
    assert json_format.Parse(sealed.payload, notification_pb2.Notification()) == n


def test_transform_rewrites_deliveries_and_started_and_keeps_the_rest(ring: KeyRing) -> None:
    chain = Chain(ring)
    variant = Variant("json", "zstd", True, 0)
    notes = [notification_pb2.Notification(id=f"n{i}", tenant_id="acme") for i in range(3)]
    response = wire.batch_response(
        [
            wire.delivery(
                wire.notification_field(n.SerializeToString()), wire.log_field("user"), i + 1, 2, i
            )
            for i, n in enumerate(notes)
        ]
    )
    out = stream_pb2.SubscribeResponse.FromString(chain.transform(response, variant))
    opener = Opener(verify=True, keys=signing_keys_response(ring).keys)
    got = out.deliveries.deliveries
    assert [(d.log, d.cursor, d.attempt, d.resume_cursor) for d in got] == [
        ("user", 1, 2, 0),
        ("user", 2, 2, 1),
        ("user", 3, 2, 2),
    ]
    assert [d.HasField("notification") for d in got] == [False] * 3
    assert [opener.open(d) for d in got] == notes
    # A delivery whose fields come in another order is rewritten the same way.
    shuffled = stream_pb2.Delivery(log="user", cursor=9, notification=notes[0])
    reordered = b"\x12\x04user\x18\x09" + wire.notification_field(notes[0].SerializeToString())
    batch = wire.batch_response([reordered])
    [one] = stream_pb2.SubscribeResponse.FromString(
        chain.transform(batch, variant)
    ).deliveries.deliveries
    assert (one.log, one.cursor, opener.open(one)) == (shuffled.log, 9, notes[0])

    started = stream_pb2.SubscribeResponse(
        session_started=stream_pb2.SessionStarted(session_id="s", channels=["a"])
    ).SerializeToString()
    out_started = stream_pb2.SubscribeResponse.FromString(chain.transform(started, variant))
    assert list(out_started.session_started.encodings) == ["json", "zstd", "signed"]
    assert out_started.session_started.session_id == "s"
    heartbeat = stream_pb2.SubscribeResponse(heartbeat=stream_pb2.Heartbeat()).SerializeToString()
    closing = stream_pb2.SubscribeResponse(
        closing=stream_pb2.Closing(reason=1, message="bye")
    ).SerializeToString()
    assert chain.transform(heartbeat, variant) == heartbeat
    assert chain.transform(closing, variant) == closing
    # Plain sessions get the very same bytes.
    for message in (response, started, heartbeat, closing):
        assert chain.transform(message, PLAIN) is message


def test_each_variant_is_built_once_and_shared(ring: KeyRing) -> None:
    chain = Chain(ring, cache_entries=2)
    variant = Variant("protobuf", "zstd", True, 0)
    other = Variant("json", "gzip", False, 0)
    built = metrics.CHAIN_TRANSFORMS.labelled_tally(variant.label)
    hits = metrics.CHAIN_CACHE.labelled_tally("hit")
    before_built, before_hits = built.value, hits.value
    n = notification_pb2.Notification(id="n1").SerializeToString()
    fields = {chain.sealed_field(n, variant) for _ in range(1000)}
    assert len(fields) == 1
    assert (built.value - before_built, hits.value - before_hits) == (1, 999)
    chain.sealed_field(n, other)
    chain.sealed_field(notification_pb2.Notification(id="n2").SerializeToString(), other)
    # Bounded: the oldest entry made room, so the first variant is built again.
    chain.sealed_field(n, variant)
    assert built.value - before_built == 2


def test_negotiation_follows_the_request_and_the_policy() -> None:
    everything = ChainPolicy()
    assert negotiate([], everything, can_sign=True) == PLAIN
    assert negotiate(["gzip", "zstd", "json"], everything, can_sign=True) == Variant("json", "gzip")
    assert negotiate(["ZSTD", "signed", "brotli"], everything, can_sign=True) == Variant(
        "protobuf", "zstd", True
    )
    assert negotiate(["identity", "zstd"], everything, can_sign=True) == PLAIN
    # What the tenant does not allow is not picked; the client reads SessionStarted.encodings.
    strict = ChainPolicy(compression=("gzip",), formats=("protobuf",), compression_min_bytes=9)
    assert negotiate(["zstd", "json"], strict, can_sign=True) == Variant(compression_min_bytes=9)
    assert negotiate(["zstd", "gzip"], strict, can_sign=True).compression == "gzip"
    # "signed" without a key on this node: not offered; a tenant that requires it is refused.
    assert negotiate(["signed"], everything, can_sign=False) == PLAIN
    required = ChainPolicy(signing_required=True)
    assert negotiate([], required, can_sign=True) == Variant(signed=True)
    with pytest.raises(FailedPrecondition):
        negotiate([], required, can_sign=False)


def test_decompression_is_bounded() -> None:
    bomb = b"\0" * (MAX_DECODED_BYTES + 1)
    for codec in (Gzip(), Zstd()):
        packed = codec.compress(bomb)
        assert len(packed) < 2000
        with pytest.raises(ValueError, match="past the bound"):
            codec.decompress(packed)
        assert codec.decompress(codec.compress(b"abc")) == b"abc"
        with pytest.raises(ValueError, match="not"):
            codec.decompress(b"not compressed at all")


def test_key_ring_files(tmp_path: Path) -> None:
    write_private_key(tmp_path, "2026-01")
    write_private_key(tmp_path, "2026-02")
    ring = load_dir(tmp_path)
    assert ring.active is not None
    assert ring.active.key_id == "2026-02"  # sorts last
    assert load_dir(tmp_path, "2026-01").active.key_id == "2026-01"  # type: ignore[union-attr]
    # A public-only key verifies but never signs, so it is never the active one.
    public = ring.get("2026-02").public_bytes  # type: ignore[union-attr]
    pem = Ed25519PublicKey.from_public_bytes(public).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "2026-02.pem").unlink()
    (tmp_path / "2026-03.pub.pem").write_bytes(pem)
    ring = load_dir(tmp_path)
    assert [k.key_id for k in ring.keys] == ["2026-01", "2026-03"]
    assert ring.active is not None
    assert ring.active.key_id == "2026-01"
    with pytest.raises(StartupError, match="no private key"):
        load_dir(tmp_path, "2026-03")
    (tmp_path / "bad id!.pem").write_bytes(pem)
    with pytest.raises(StartupError, match="key id"):
        load_dir(tmp_path)
    (tmp_path / "bad id!.pem").unlink()
    (tmp_path / "junk.pem").write_bytes(b"not a key")
    with pytest.raises(StartupError, match="not an unencrypted Ed25519"):
        load_dir(tmp_path)
