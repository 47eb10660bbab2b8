"""LogStore properties: random appends, bounds and expiry checked against a plain list model."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.domain import channel_log, user_log
from services.stream.log import Entry, LogAppend, NewEntry
from tests.contract.conftest import LOG_STORES

pytestmark = pytest.mark.asyncio

# Three logs that must stay apart: two keys of one tenant, and the same key in another tenant.
LOGS = [
    ("tenant-1", user_log("alice")),
    ("tenant-1", channel_log("news")),
    ("tenant-2", user_log("alice")),
]


@dataclass(frozen=True)
class Append:
    log: int
    limit: int
    expiries: list[int]


@dataclass(frozen=True)
class Expire:
    """A sweep at `now`: every log of every tenant."""

    now: int


@dataclass(frozen=True)
class Read:
    log: int
    after: int
    limit: int


which_log = st.integers(min_value=0, max_value=len(LOGS) - 1)
operations = st.lists(
    st.one_of(
        st.builds(
            Append,
            which_log,
            st.integers(min_value=1, max_value=6),
            st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=5),
        ),
        st.builds(Expire, st.integers(min_value=0, max_value=50)),
    ),
    max_size=25,
)
# At most 25 appends of 5 entries: cursors stay below 130.
reads = st.lists(
    st.builds(Read, which_log, st.integers(min_value=-1, max_value=130), st.integers(1, 8)),
    max_size=12,
)


@dataclass
class ModelLog:
    """What a log must hold: its live entries in cursor order, and the next cursor."""

    entries: list[Entry] = field(default_factory=list)
    next_cursor: int = 1


@pytest.mark.parametrize("backend", sorted(LOG_STORES))
@settings(max_examples=100, deadline=None, database=None)
@given(ops=operations, probes=reads)
async def test_the_log_behaves_like_a_bounded_list(
    backend: str, ops: list[Append | Expire], probes: list[Read]
) -> None:
    model = [ModelLog() for _ in LOGS]
    serial = 0
    async with LOG_STORES[backend]() as store:
        for op in ops:
            if isinstance(op, Append):
                tenant, key = LOGS[op.log]
                log = model[op.log]
                expected = []
                for expires_at in op.expiries:
                    serial += 1
                    expected.append(
                        Entry(log.next_cursor, f"n{serial}", serial % 3, 1.0, expires_at, b"\x12")
                    )
                    log.next_cursor += 1
                items = [
                    NewEntry(e.notification_id, e.priority, 1.0, e.expires_at, b"\x12")
                    for e in expected
                ]
                [result] = await store.append(tenant, [LogAppend(key, items, op.limit)])
                log.entries.extend(expected)
                overflow = max(0, len(log.entries) - op.limit)
                dropped, log.entries = log.entries[:overflow], log.entries[overflow:]
                assert result.entries == expected
                assert result.dropped == dropped
                assert result.key == key
            else:
                expected_expired = {}
                for (tenant, key), log in zip(LOGS, model, strict=True):
                    expired = [e for e in log.entries if e.expires_at <= op.now]
                    log.entries = [e for e in log.entries if e.expires_at > op.now]
                    if expired:
                        expected_expired[(tenant, key)] = expired
                swept = await store.drop_expired(op.now, 10_000)
                assert {(t, k): entries for t, k, entries in swept} == expected_expired
                assert len(swept) == len(expected_expired)

        for (tenant, key), log in zip(LOGS, model, strict=True):
            [head] = await store.heads(tenant, [key])
            assert head.cursor == log.next_cursor - 1
            assert await store.read(tenant, key, 0, 1000) == log.entries
            live = {e.notification_id: e for e in log.entries}
            for n in range(1, serial + 1):
                found = await store.find(tenant, [key], f"n{n}")
                assert found == ((key, live[f"n{n}"]) if f"n{n}" in live else None)
        for probe in probes:
            tenant, key = LOGS[probe.log]
            expected = [e for e in model[probe.log].entries if e.cursor > probe.after]
            assert (
                await store.read(tenant, key, probe.after, probe.limit) == expected[: probe.limit]
            )
