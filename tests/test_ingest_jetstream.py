"""Ingestion from NATS JetStream, against the real NATS: what is published reaches a
subscribed user through the real protocol, once, however often JetStream delivers it; what can
never be accepted is dead-lettered with the reason; push-back delays it instead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio
from google.protobuf import json_format
from nats.aio.msg import Msg

from herald.v1 import notification_pb2
from services.config import RateLimitSettings
from services.ingest.intake import decode_notification
from tests.harness import Herald, make_config, start_herald, to_user
from tests.ingest_support import inbox_titles, source_count, until
from tests.nats_support import Scratch, scratch_jetstream
from tests.streams import Stream

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def scratch() -> AsyncIterator[Scratch]:
    async with scratch_jetstream() as names:
        yield names


async def start(
    scratch: Scratch, tmp_path: Path, topology: str = "up", **overrides: object
) -> Herald:
    config = make_config(tmp_path, **overrides)
    return await start_herald(topology, replace(config, jetstream=scratch.settings))


async def pending(scratch: Scratch) -> tuple[int, int]:
    """The consumer's (unacked in flight, not yet delivered) messages."""
    info = await scratch.js.consumer_info(scratch.settings.stream, scratch.settings.durable)
    return info.num_ack_pending, info.num_pending


async def settled(scratch: Scratch) -> bool:
    return await pending(scratch) == (0, 0)


@pytest.mark.parametrize("topology", ["up", "split"])
async def test_a_published_notification_reaches_the_subscribed_user(
    scratch: Scratch, tmp_path: Path, topology: str
) -> None:
    herald = await start(scratch, tmp_path, topology)
    try:
        stream = Stream(herald.user("alice"))
        await stream.start()
        as_json = json_format.MessageToJson(to_user("alice", "in JSON"))
        await scratch.js.publish(scratch.subject("acme"), as_json.encode())
        protobuf = to_user("alice", "in protobuf").SerializeToString()
        await scratch.js.publish(
            scratch.subject("acme"),
            protobuf,
            headers={"Content-Type": "application/protobuf", "Nats-Msg-Id": "order-1"},
        )
        deliveries = await stream.deliveries(2, within=10)
        assert [d.notification.content.title for d in deliveries] == ["in JSON", "in protobuf"]
        assert {d.notification.tenant_id for d in deliveries} == {"acme"}
        # Acked only now, after both were accepted.
        await until(lambda: settled(scratch))
        # Another tenant's subscriber got nothing: the subject names the tenant.
        assert await inbox_titles(herald.user("alice", tenant="other")) == []
        stream.cancel()
    finally:
        await herald.stop()


async def test_a_redelivered_message_is_not_sent_twice(
    scratch: Scratch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first ack of each message is lost (a crash after the accept, a network cut):
    # JetStream delivers it again after the ack wait.
    lost: set[int] = set()
    ack = Msg.ack

    async def lossy_ack(message: Msg) -> None:
        sequence = message.metadata.sequence.stream
        if sequence not in lost:
            lost.add(sequence)
            message._ackd = True  # as if sent; the server never hears of it
            return
        await ack(message)

    monkeypatch.setattr(Msg, "ack", lossy_ack)
    settings = scratch.settings.model_copy(update={"ack_wait_s": 1.0})
    scratch = replace(scratch, settings=settings)
    herald = await start(scratch, tmp_path)
    try:
        redelivered = source_count("jetstream", "redelivered")
        user = herald.user("bob")
        # One with a message id, one identified by its stream sequence alone.
        await scratch.js.publish(
            scratch.subject("acme"),
            to_user("bob", "keyed").SerializeToString(),
            headers={"Nats-Msg-Id": "invoice-17"},
        )
        await scratch.js.publish(
            scratch.subject("acme"), to_user("bob", "by sequence").SerializeToString()
        )
        await until(lambda: settled(scratch), within=20)
        assert source_count("jetstream", "redelivered") - redelivered >= 2
        assert len(lost) == 2
        assert await inbox_titles(user) == ["keyed", "by sequence"]
    finally:
        await herald.stop()


async def test_an_invalid_message_is_dead_lettered_with_the_reason(
    scratch: Scratch, tmp_path: Path
) -> None:
    herald = await start(scratch, tmp_path)
    try:
        dead_before = source_count("jetstream", "dead_lettered")
        user = herald.user("carol")
        subject = scratch.subject("acme")
        await scratch.js.publish(subject, b'{"target": {"userId": "carol"}, "nonsense": 1}')
        no_target = notification_pb2.Notification()
        no_target.content.title = "nobody"
        await scratch.js.publish(
            subject, no_target.SerializeToString(), headers={"Nats-Msg-Id": "bad-2"}
        )
        await scratch.js.publish(subject, b"\xff\xfe not protobuf")
        await scratch.js.publish(subject, to_user("carol", "fine").SerializeToString())
        await until(lambda: settled(scratch))
        dead = await scratch.js.pull_subscribe(
            scratch.settings.dead_letter_subject, stream=scratch.dead_stream
        )
        letters = await dead.fetch(3, timeout=5)
        assert len(letters) == 3
        for letter in letters:
            assert letter.headers is not None
            assert letter.headers["Herald-Reason-Code"] == "INVALID_ARGUMENT"
            assert letter.headers["Herald-Reason"]
            assert letter.headers["Herald-Original-Subject"] == subject
            assert letter.headers["Herald-Tenant"] == "acme"
        reasons = [letter.headers["Herald-Reason"] for letter in letters if letter.headers]
        assert "JSON" in reasons[0]
        assert "target" in reasons[1]
        assert letters[1].headers is not None
        assert letters[1].headers["Herald-Msg-Id"] == "bad-2"
        # The dead letter carries the original bytes, for a replay once fixed.
        assert decode_notification(letters[1].data).content.title == "nobody"
        assert source_count("jetstream", "dead_lettered") - dead_before == 3
        assert await inbox_titles(user) == ["fine"]
    finally:
        await herald.stop()


async def test_a_message_for_a_tenant_the_consumer_may_not_serve_is_dead_lettered(
    tmp_path: Path,
) -> None:
    async with scratch_jetstream(tenants="acme") as scratch:
        herald = await start(scratch, tmp_path)
        try:
            await scratch.js.publish(
                scratch.subject("other"), to_user("dave", "x").SerializeToString()
            )
            await scratch.js.publish(
                scratch.subject("acme"),
                to_user("dave", "x").SerializeToString(),
                headers={"Herald-Tenant": "other"},
            )
            await until(lambda: settled(scratch))
            dead = await scratch.js.pull_subscribe(
                scratch.settings.dead_letter_subject, stream=scratch.dead_stream
            )
            letters = await dead.fetch(2, timeout=5)
            codes = [letter.headers["Herald-Reason-Code"] for letter in letters if letter.headers]
            assert codes == ["PERMISSION_DENIED", "PERMISSION_DENIED"]
            assert await inbox_titles(herald.user("dave", tenant="other")) == []
            assert await inbox_titles(herald.user("dave")) == []
        finally:
            await herald.stop()


async def test_when_herald_pushes_back_messages_wait_and_are_delivered_later(
    scratch: Scratch, tmp_path: Path
) -> None:
    # Two notifications per second for the tenant, one at a time: five take about two seconds.
    limits = RateLimitSettings(tenant_send_rate=2, tenant_send_burst=1)
    herald = await start(scratch, tmp_path, rate_limit=limits)
    try:
        pushback = source_count("jetstream", "pushback")
        dead = source_count("jetstream", "dead_lettered")
        stream = Stream(herald.user("erin"))
        await stream.start()
        titles = [f"n{i}" for i in range(5)]
        for title in titles:
            await scratch.js.publish(
                scratch.subject("acme"), to_user("erin", title).SerializeToString()
            )
        first = await stream.deliveries(1, within=5)
        # Refused for now: not acked, still held by JetStream for a later delivery.
        in_flight, waiting = await pending(scratch)
        assert in_flight + waiting >= 3
        rest = await stream.deliveries(4, within=15)
        assert sorted(d.notification.content.title for d in [*first, *rest]) == titles
        assert source_count("jetstream", "pushback") > pushback
        assert source_count("jetstream", "dead_lettered") == dead
        await until(lambda: settled(scratch))
        assert sorted(await inbox_titles(herald.user("erin"))) == titles
        stream.cancel()
    finally:
        await herald.stop()


async def test_a_stopped_consumer_leaves_unconsumed_messages_for_the_next(
    scratch: Scratch, tmp_path: Path
) -> None:
    herald = await start(scratch, tmp_path / "a")
    await herald.stop()
    await scratch.js.publish(scratch.subject("acme"), to_user("fred", "later").SerializeToString())
    await asyncio.sleep(0)  # nothing consumes while no node runs
    assert await pending(scratch) == (0, 1)
    again = await start(scratch, tmp_path / "b")
    try:
        stream = Stream(again.user("fred"))
        await stream.start()
        [delivery] = await stream.deliveries(1, within=10)
        assert delivery.notification.content.title == "later"
        stream.cancel()
    finally:
        await again.stop()


async def test_concurrent_batches_deliver_each_message_once(tmp_path: Path) -> None:
    async with scratch_jetstream(concurrency=3, batch=4) as scratch:
        herald = await start(scratch, tmp_path)
        try:
            titles = [f"m{i}" for i in range(40)]
            for title in titles:
                await scratch.js.publish(
                    scratch.subject("acme"), to_user("gina", title).SerializeToString()
                )
            await until(lambda: settled(scratch))
            assert sorted(await inbox_titles(herald.user("gina"))) == sorted(titles)
        finally:
            await herald.stop()
