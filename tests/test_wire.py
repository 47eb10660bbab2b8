"""The hand-built framing of services/wire.py parses as the generated classes say it should."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from herald.v1 import ingest_pb2, notification_pb2, stream_pb2
from services import wire
from services.errors import InvalidArgument
from services.ingest.core import SendOutcome
from services.ingest.servicer import encode_results

_cursors = st.integers(min_value=0, max_value=2**63 - 1)
_ids = st.text(min_size=1, max_size=300)


@given(
    title=st.text(max_size=500),
    log=st.sampled_from(["user", "broadcast", "channel:news", "channel:" + "x" * 200]),
    cursor=_cursors,
    attempt=st.integers(min_value=1, max_value=10),
    resume=_cursors,
    count=st.integers(min_value=1, max_value=5),
)
def test_batch_response_is_a_subscribe_response(
    title: str, log: str, cursor: int, attempt: int, resume: int, count: int
) -> None:
    notification = notification_pb2.Notification(
        id="n1", content=notification_pb2.Content(title=title)
    )
    field = wire.notification_field(notification.SerializeToString())
    assert wire.notification_bytes(field) == notification.SerializeToString()
    one = wire.delivery(field, wire.log_field(log), cursor, attempt, resume)
    parsed = stream_pb2.SubscribeResponse.FromString(wire.batch_response([one] * count))
    expected = stream_pb2.Delivery(
        notification=notification, log=log, cursor=cursor, attempt=attempt, resume_cursor=resume
    )
    assert list(parsed.deliveries.deliveries) == [expected] * count


@given(
    outcomes=st.lists(
        st.one_of(
            st.builds(SendOutcome, _ids, st.booleans(), st.integers(0, 2**32 - 1), st.booleans()),
            st.builds(InvalidArgument, st.text(max_size=200)),
        ),
        max_size=20,
    )
)
def test_encoded_results_are_a_send_batch_response(
    outcomes: list[SendOutcome | InvalidArgument],
) -> None:
    parsed = ingest_pb2.SendBatchResponse.FromString(encode_results(list(outcomes)))
    assert len(parsed.results) == len(outcomes)
    for result, outcome in zip(parsed.results, outcomes, strict=True):
        if isinstance(outcome, InvalidArgument):
            assert result.WhichOneof("outcome") == "error"
            assert result.error.code == 3
            assert result.error.message == outcome.message
        else:
            assert result.WhichOneof("outcome") == "accepted"
            assert result.accepted == ingest_pb2.SendResponse(
                notification_id=outcome.notification_id,
                duplicate=outcome.duplicate,
                recipient_count=outcome.recipient_count,
                scheduled=outcome.scheduled,
            )
