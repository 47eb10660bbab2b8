"""The hot-path counters (plain-int tallies exported by a collector) count what happened."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from tests.conftest import Deploy
from tests.harness import to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

_COUNTERS = {
    "accepted": ("herald_notifications_accepted_total", {}),
    "first": ("herald_deliveries_total", {"attempt": "first"}),
    "retry": ("herald_deliveries_total", {"attempt": "retry"}),
    "messages": ("herald_stream_messages_total", {}),
    "acked": ("herald_acks_total", {}),
}


def _read() -> dict[str, float]:
    return {
        key: REGISTRY.get_sample_value(name, labels) or 0.0
        for key, (name, labels) in _COUNTERS.items()
    }


async def test_sends_deliveries_stream_messages_and_acks_are_counted(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    alice = herald.user("alice")
    stream = Stream(alice)
    await stream.start()
    before = _read()
    for i in range(3):
        await backend.send(to_user("alice", f"n{i}"))
    delivered = await stream.deliveries(3)
    assert await alice.ack(up_to={"user": delivered[-1].cursor}) == 3
    after = _read()
    change = {key: after[key] - before[key] for key in after}
    assert (change["accepted"], change["first"], change["retry"], change["acked"]) == (3, 3, 0, 3)
    assert 1 <= change["messages"] <= 3  # deliveries written together share a message
    stream.cancel()
