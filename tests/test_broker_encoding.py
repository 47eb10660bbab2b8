"""The Redis broker's head-only publications, built by concatenation, are the bytes protobuf
encodes (no Redis needed: the broker never connects here)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from services.domain import BROADCAST, LogKey, channel_log, user_log
from services.stream.broker import Publication
from services.stream.broker_redis import RedisBroker

T1 = "tenant-1"
ALICE, NEWS = user_log("alice"), channel_log("news")
# One broker for every example: what it keeps made from one (a log's names, the last epoch's
# field) must not leak into the next.
BROKER = RedisBroker(Redis(), "herald-test:")  # never connects


@given(
    tenant=st.text(max_size=20),
    key=st.sampled_from([NEWS, ALICE, BROADCAST, user_log("")]),
    epoch=st.integers(0, (1 << 64) - 1),
    head=st.integers(0, (1 << 64) - 1),
)
def test_a_head_only_publication_is_built_as_protobuf_encodes_it(
    tenant: str, key: LogKey, epoch: int, head: int
) -> None:
    sent = Publication(tenant, key, epoch, head, ())
    _, start = BROKER._names(tenant, key)
    assert BROKER._head_only(start, sent) == BROKER.encode(sent, with_entries=False)


def test_a_head_only_publication_out_of_range_is_refused() -> None:
    broker = RedisBroker(Redis(), "herald-test:")
    _, start = broker._names(T1, NEWS)
    for epoch, head in ((-1, 1), (1, -1), (1 << 64, 1), (1, 1 << 64)):
        with pytest.raises(ValueError, match="out of the uint64 range"):
            broker._head_only(start, Publication(T1, NEWS, epoch, head, ()))
