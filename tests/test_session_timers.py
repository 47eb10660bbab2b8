"""A session's ack timers: each written entry comes due at its own (jittered) deadline, an acked
entry never does, and a later attempt's longer wait holds up no one."""

from __future__ import annotations

from services.domain import channel_log, user_log
from services.stream.acks import AckState
from services.stream.log import Entry
from services.stream.session import Pending, Session, new_log_state

ALICE, NEWS = user_log("alice"), channel_log("news")
SHORTEST = {1: 24.0, 2: 48.0}  # 30 s and 60 s ack timeouts, less 20 % jitter


def _session() -> Session:
    state = new_log_state(ALICE, AckState(), 0)
    return Session(
        tenant="acme",
        user_id="alice",
        device="test",
        channels=(),
        logs={ALICE: state},
        buffer_limit=100,
        connected_at=0.0,
    )


def _pending(session: Session, cursor: int, attempt: int = 1) -> Pending:
    entry = Entry(cursor, f"n{cursor}", 2, 0.0, 10_000.0, b"")
    return Pending(entry, session.logs[ALICE], attempt)


def _due(session: Session, now: float) -> list[int]:
    return [p.entry.cursor for p in session.due(now, SHORTEST.__getitem__)]


def test_each_entry_comes_due_at_its_own_deadline_not_in_write_order() -> None:
    session = _session()
    first, second = _pending(session, 1), _pending(session, 2)
    session.track(first, now=0.0, deadline=35.0)  # jittered up
    session.track(second, now=1.0, deadline=25.0)  # written later, jittered down
    assert _due(session, 24.9) == []
    assert _due(session, 25.0) == [2]
    assert _due(session, 34.9) == []
    assert _due(session, 35.0) == [1]
    assert _due(session, 1_000.0) == []  # each comes due once
    assert session.unacked == {}


def test_an_acked_entry_never_comes_due() -> None:
    session = _session()
    for cursor in (1, 2, 3):
        session.track(_pending(session, cursor), now=float(cursor), deadline=30.0 + cursor)
    session.settle((ALICE, 2))
    session.settle((ALICE, 9))  # not tracked here: nothing happens
    assert _due(session, 100.0) == [1, 3]


def test_a_later_attempts_longer_wait_holds_up_no_first_attempt() -> None:
    session = _session()
    retried = _pending(session, 1, attempt=2)
    session.track(retried, now=0.0, deadline=60.0)
    session.track(_pending(session, 2), now=5.0, deadline=35.0)
    assert _due(session, 35.0) == [2]
    assert _due(session, 60.0) == [1]


def test_leaving_a_log_stops_its_timers_only() -> None:
    session = _session()
    channel = new_log_state(NEWS, AckState(), 0)
    session.logs[NEWS] = channel
    session.track(_pending(session, 1), now=0.0, deadline=30.0)
    news = Pending(Entry(1, "c1", 2, 0.0, 10_000.0, b""), channel)
    session.track(news, now=0.0, deadline=30.0)
    session.forget_acks(NEWS)
    assert _due(session, 30.0) == [1]
