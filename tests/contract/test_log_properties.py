"""LogStore properties: random appends, bounds and expiry checked against a plain list model."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.stream.log import Entry, NewEntry
from tests.contract.conftest import LOG_STORES

pytestmark = pytest.mark.asyncio

# Three logs that must stay apart: two keys of one tenant, and the same key in another tenant.
LOGS = [("tenant-1", "user:alice"), ("tenant-1", "channel:news"), ("tenant-2", "user:alice")]


@dataclass(frozen=True)
class Append:
    log: int
    limit: int
    expiries: list[int]


@dataclass(frozen=True)
class Expire:
    log: int
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
        st.builds(Expire, which_log, st.integers(min_value=0, max_value=50)),
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
            tenant, key = LOGS[op.log]
            log = model[op.log]
            if isinstance(op, Append):
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
                result = await store.append(tenant, key, items, op.limit)
                log.entries.extend(expected)
                overflow = max(0, len(log.entries) - op.limit)
                dropped, log.entries = log.entries[:overflow], log.entries[overflow:]
                assert result.entries == expected
                assert result.dropped == dropped
            else:
                expired = [e for e in log.entries if e.expires_at <= op.now]
                log.entries = [e for e in log.entries if e.expires_at > op.now]
                assert await store.drop_expired(tenant, key, op.now) == expired

        for (tenant, key), log in zip(LOGS, model, strict=True):
            assert await store.last_cursor(tenant, key) == log.next_cursor - 1
            assert await store.read(tenant, key, 0, 1000) == log.entries
            live = {e.notification_id: e for e in log.entries}
            for n in range(1, serial + 1):
                assert await store.find(tenant, key, f"n{n}") == live.get(f"n{n}")
        for probe in probes:
            tenant, key = LOGS[probe.log]
            expected = [e for e in model[probe.log].entries if e.cursor > probe.after]
            assert (
                await store.read(tenant, key, probe.after, probe.limit) == expected[: probe.limit]
            )

        for tenant in {t for t, _ in LOGS}:
            non_empty = {
                k for (t, k), log in zip(LOGS, model, strict=True) if t == tenant and log.entries
            }
            assert set(await store.log_keys(tenant)) == non_empty
        with_entries = {t for (t, _), log in zip(LOGS, model, strict=True) if log.entries}
        assert with_entries <= set(await store.tenants())
