"""A session's bytes for the write in flight: a batch taken leaves room in the node's budget for
the transport's copy of it, and the write holds its bytes in the budget until it completes."""

from __future__ import annotations

from services.domain import user_log
from services.stream.acks import AckState
from services.stream.log import Entry
from services.stream.session import (
    ENTRY_OVERHEAD,
    WRITE_COPIES,
    BufferBudget,
    Session,
    new_log_state,
)

ALICE = user_log("alice")
PAYLOAD = 3000
ENTRY = PAYLOAD + ENTRY_OVERHEAD


def _session(budget: BufferBudget) -> Session:
    return Session(
        tenant="acme",
        user_id="alice",
        device="test",
        channels=(),
        logs={ALICE: new_log_state(ALICE, AckState(), 0)},
        buffer_limit=1000,
        buffer_bytes=1 << 20,
        budget=budget,
        connected_at=0.0,
    )


def _entries(count: int) -> list[Entry]:
    return [Entry(c, f"n{c}", 2, 0.0, 10_000.0, b"x" * PAYLOAD) for c in range(1, count + 1)]


def test_a_batch_leaves_room_in_the_node_budget_for_the_transports_copy() -> None:
    budget = BufferBudget(20 * ENTRY)
    session = _session(budget)
    assert session.enqueue(session.logs[ALICE], _entries(16), 0.0)
    assert budget.used == 16 * ENTRY
    taken = session.take(64)
    # 4 x 3,256 bytes are left: the copy of 4 notifications fits, of a fifth it would not.
    assert [p.entry.cursor for p in taken] == [1, 2, 3, 4]
    data = session.encode(taken)
    session.hold_write(len(data))
    assert session.writing_bytes == WRITE_COPIES * len(data)
    assert budget.used == session.waiting_bytes + session.writing_bytes <= budget.limit
    session.end_write()
    assert budget.used == session.waiting_bytes == 12 * ENTRY
    # The rest follows in order, the next batch as the room allows.
    assert [p.entry.cursor for p in session.take(64)][:1] == [5]


def test_a_full_node_still_writes_one_entry_at_a_time() -> None:
    budget = BufferBudget(4 * ENTRY)
    session = _session(budget)
    assert session.enqueue(session.logs[ALICE], _entries(4), 0.0)
    assert budget.used == budget.limit
    assert [p.entry.cursor for p in session.take(64)] == [1]
    assert [p.entry.cursor for p in session.take(64)] == [2]


def test_a_completed_write_gives_its_bytes_back() -> None:
    budget = BufferBudget(1 << 30)
    session = _session(budget)
    assert session.enqueue(session.logs[ALICE], _entries(8), 0.0)
    taken = session.take(64)
    assert len(taken) == 8
    session.hold_write(len(session.encode(taken)))
    assert budget.used > 8 * PAYLOAD
    session.end_write()
    assert budget.used == session.writing_bytes == 0
