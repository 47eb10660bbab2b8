"""The audit log through real gRPC: admin actions, session open/close and auth failures name who,
what, where and how it ended, as JSON lines, and never carry a token or a payload."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc import aio

from herald.v1 import ingest_pb2, registry_pb2, stream_pb2
from services import audit, auth
from services.client_websocket import Closed, WebSocketSubscription
from services.errors import Unauthenticated
from services.logs import json_formatter
from tests import raw_calls
from tests.harness import Herald, to_user
from tests.streams import Stream

ADMIN_SCOPES = (auth.SCOPE_SEND, auth.SCOPE_SESSIONS_ADMIN, auth.SCOPE_TEMPLATES_WRITE)
SECRET_BODY = "the-payload-7f3a-must-never-be-audited"


class AuditLines(logging.Handler):
    """The `herald.audit` records as the JSON lines a node writes to stdout."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(json_formatter())
        self.lines: list[str] = []
        self.written = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.written.set()

    def records(self, action: str | None = None) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in self.lines]
        return [r for r in parsed if action is None or r["action"] == action]

    async def wait_for(
        self, action: str, count: int = 1, within: float = 5.0
    ) -> list[dict[str, Any]]:
        """Records written when a handler ends after the client saw its answer (a stream's
        close) arrive a moment later: wait for them."""
        async with asyncio.timeout(within):
            while len(self.records(action)) < count:
                self.written.clear()
                await self.written.wait()
        return self.records(action)


@pytest.fixture
def audit_lines() -> Iterator[AuditLines]:
    handler = AuditLines()
    logger = logging.getLogger("herald.audit")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _assert_loopback_peer(record: dict[str, Any]) -> None:
    assert record["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:[::1]:")), record["peer"]


def _assert_nothing_secret(lines: AuditLines, *secrets: str) -> None:
    for line in lines.lines:
        for secret in secrets:
            assert secret not in line
        # Only the fixed hint "Bearer <token>" may name the scheme, never a credential.
        assert re.search(r"(?i)bearer (?!<token>)", line) is None, line
        assert "eyJ" not in line  # the start of every JWT (base64url of '{"')


@pytest.mark.asyncio
async def test_admin_actions_are_audited_with_who_what_where(
    herald: Herald, audit_lines: AuditLines
) -> None:
    token = herald.tokens.backend("acme", *ADMIN_SCOPES)
    stub, metadata = herald.registry_stub(token)
    alice = Stream(herald.user("alice"))
    started = await alice.start()

    template = registry_pb2.Template(template_id="welcome", default_locale="en")
    template.locales["en"].title = "Hi {{name}}"
    template.locales["en"].body = SECRET_BODY
    put = await stub.PutTemplate(
        registry_pb2.PutTemplateRequest(template=template), metadata=metadata
    )
    await stub.JoinChannel(
        registry_pb2.JoinChannelRequest(session_id=started.session_id, channel="news"),
        metadata=metadata,
    )
    await stub.LeaveChannel(
        registry_pb2.LeaveChannelRequest(session_id=started.session_id, channel="news"),
        metadata=metadata,
    )
    await stub.DeleteTemplate(
        registry_pb2.DeleteTemplateRequest(template_id="welcome"), metadata=metadata
    )
    disconnected = await stub.Disconnect(
        registry_pb2.DisconnectRequest(user_id="alice", reason="support ticket 42"),
        metadata=metadata,
    )
    assert disconnected.disconnected == 1

    expected = [
        ("template.put", "template:welcome", {"version": put.template.version}),
        ("channel.join", f"session:{started.session_id}", {"channel": "news"}),
        ("channel.leave", f"session:{started.session_id}", {"channel": "news"}),
        ("template.delete", "template:welcome", {"deleted_versions": 1}),
        (
            "session.disconnect",
            "user:alice",
            {"disconnected": 1, "reason": "support ticket 42"},
        ),
    ]
    sessions = {"session.open", "session.close"}
    admin = [r for r in audit_lines.records() if r["action"] not in sessions]
    assert [(r["action"], r["target"]) for r in admin] == [(a, t) for a, t, _ in expected]
    for record, (_, _, details) in zip(admin, expected, strict=True):
        assert record["logger"] == "herald.audit"
        assert record["message"] == "audit"
        assert (record["actor"], record["tenant"], record["target_tenant"]) == (
            "billing",
            "acme",
            "acme",
        )
        assert record["outcome"] == "OK"
        assert record["time"].endswith("+00:00")
        _assert_loopback_peer(record)
        for key, value in details.items():
            assert record[key] == value
    _assert_nothing_secret(audit_lines, token, SECRET_BODY, "Hi {{name}}")


@pytest.mark.asyncio
async def test_a_refused_admin_action_is_audited_with_its_outcome(
    herald_up: Herald, audit_lines: AuditLines
) -> None:
    stub, metadata = herald_up.registry_stub(herald_up.tokens.backend("acme", *ADMIN_SCOPES))
    with pytest.raises(aio.AioRpcError) as refused:
        await stub.Disconnect(
            registry_pb2.DisconnectRequest(tenant_id="globex", user_id="bob"), metadata=metadata
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    [record] = audit_lines.records("session.disconnect")
    assert record["outcome"] == "PERMISSION_DENIED"
    assert (record["actor"], record["tenant"], record["target_tenant"]) == (
        "billing",
        "acme",
        "globex",
    )
    assert record["target"] == "user:bob"
    with pytest.raises(aio.AioRpcError) as missing:
        await stub.PutTemplate(registry_pb2.PutTemplateRequest(), metadata=metadata)
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [put] = audit_lines.records("template.put")
    assert put["outcome"] == "INVALID_ARGUMENT"


@pytest.mark.asyncio
async def test_session_open_and_close_are_audited_without_payloads(
    herald: Herald, audit_lines: AuditLines
) -> None:
    user_token = herald.tokens.user("acme", "alice")
    alice = Stream(herald.user("alice"), stream_pb2.SubscribeRequest(device="phone"))
    started = await alice.start()
    [opened] = await audit_lines.wait_for("session.open")
    assert (opened["actor"], opened["tenant"]) == ("alice", "acme")
    assert opened["target"] == f"session:{started.session_id}"
    assert (opened["outcome"], opened["device"], opened["node_id"]) == (
        "OK",
        "phone",
        started.node_id,
    )
    _assert_loopback_peer(opened)

    notification = to_user("alice", title="t")
    notification.content.body = SECRET_BODY
    sent = await herald.backend().send(notification)
    [delivery] = await alice.deliveries(1)
    assert delivery.notification.id == sent.notification_id
    alice.cancel()  # the client goes away
    [closed] = await audit_lines.wait_for("session.close")
    assert closed["target"] == f"session:{started.session_id}"
    assert (closed["actor"], closed["outcome"], closed["closing"]) == ("alice", "CANCELLED", "")
    assert closed["duration_s"] >= 0

    # A stream the server closes (an operator's disconnect) ends OK, with the reason.
    bob = Stream(herald.user("bob"))
    await bob.start()
    stub, metadata = herald.registry_stub(herald.tokens.backend("acme", *ADMIN_SCOPES))
    await stub.Disconnect(registry_pb2.DisconnectRequest(user_id="bob"), metadata=metadata)
    closes = await audit_lines.wait_for("session.close", 2)
    assert (closes[1]["actor"], closes[1]["outcome"], closes[1]["closing"]) == (
        "bob",
        "OK",
        "REASON_DISCONNECTED",
    )
    _assert_nothing_secret(audit_lines, user_token, SECRET_BODY, sent.notification_id)


@pytest.mark.asyncio
async def test_a_refused_subscribe_is_audited(herald_up: Herald, audit_lines: AuditLines) -> None:
    call = herald_up.user("alice").open_stream(stream_pb2.SubscribeRequest(channels=["vip"]))
    with pytest.raises(aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    [record] = await audit_lines.wait_for("session.open")
    assert (record["actor"], record["target"], record["outcome"]) == (
        "alice",
        "user:alice",
        "PERMISSION_DENIED",
    )
    assert audit_lines.records("session.close") == []


@pytest.mark.asyncio
async def test_auth_failures_are_audited_without_the_token(
    herald_up: Herald, audit_lines: AuditLines
) -> None:
    send = "/herald.v1.IngestService/Send"
    request = ingest_pb2.SendRequest(notification=to_user("alice")).SerializeToString()
    forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJlLXRoYXQtZmFpbHM"
    user_token = herald_up.tokens.user("acme", "alice")
    async with aio.insecure_channel(herald_up.address("ingest")) as channel:
        assert (await raw_calls.call(channel, send, [request]))[0] == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert (
            await raw_calls.call(
                channel,
                send,
                [request],
                (("authorization", f"Bearer {forged}"), ("x-forwarded-for", "203.0.113.7")),
            )
        )[0] == grpc.StatusCode.UNAUTHENTICATED
        # A valid user token without the `send` scope.
        assert (
            await raw_calls.call(
                channel, send, [request], (("authorization", f"Bearer {user_token}"),)
            )
        )[0] == grpc.StatusCode.PERMISSION_DENIED
    missing, bad, scope = audit_lines.records("auth.failure")
    for record in (missing, bad, scope):
        assert record["target"] == send
        _assert_loopback_peer(record)
    assert (missing["actor"], missing["outcome"]) == ("", "UNAUTHENTICATED")
    assert "missing" in missing["reason"]
    assert (bad["actor"], bad["outcome"], bad["forwarded_for"]) == (
        "",
        "UNAUTHENTICATED",
        "203.0.113.7",
    )
    assert "signature is invalid" in bad["reason"]
    assert (scope["actor"], scope["tenant"], scope["outcome"]) == (
        "alice",
        "acme",
        "PERMISSION_DENIED",
    )
    assert "'send' scope" in scope["reason"]
    _assert_nothing_secret(audit_lines, forged, user_token, "mallory")


@pytest.mark.asyncio
async def test_a_flood_of_bad_tokens_writes_a_bounded_number_of_lines(
    herald_up: Herald, audit_lines: AuditLines
) -> None:
    path = "/herald.v1.StreamService/ListInbox"
    async with aio.insecure_channel(herald_up.address("stream")) as channel:
        codes = await asyncio.gather(
            *(
                raw_calls.call(channel, path, [b""], (("authorization", f"Bearer bad{i}"),))
                for i in range(60)
            )
        )
    assert {code for code, _ in codes} == {grpc.StatusCode.UNAUTHENTICATED}
    records = audit_lines.records("auth.failure")
    assert len(records) == 20  # the default budget per minute; the other 40 are counted
    assert all(r["left_out"] == 0 for r in records)


def test_auth_failures_report_what_a_full_window_left_out() -> None:
    handler = AuditLines()
    logger = logging.getLogger("herald.audit")
    logger.addHandler(handler)
    now = [0.0]
    failures = audit.AuthFailures(limit=2, interval_s=10.0, now=lambda: now[0])

    class Peer:
        def peer(self) -> str:
            return "ipv4:198.51.100.1:4242"

        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return ()

    try:
        denial = Unauthenticated("the token has expired")
        for _ in range(5):
            failures.record("/m", denial, None, Peer())  # type: ignore[arg-type]
        now[0] = 10.0
        failures.record("/m", denial, None, Peer())  # type: ignore[arg-type]
        failures.record("/m", denial, None, Peer())  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
    assert [r["left_out"] for r in handler.records("auth.failure")] == [0, 0, 3, 0]
    assert {r["peer"] for r in handler.records()} == {"ipv4:198.51.100.1:4242"}


@pytest.mark.asyncio
async def test_tenant_settings_changes_are_audited_with_the_fields_they_changed(
    herald: Herald, audit_lines: AuditLines
) -> None:
    token = herald.tokens.backend("acme", auth.SCOPE_TENANT_ADMIN)
    client = herald.client("registry", token)
    first = registry_pb2.TenantSettings(
        rate_limits=registry_pb2.TenantRateLimits(tenant_send_rate=5, key_send_burst=9)
    )
    await client.put_tenant_settings(first)
    second = registry_pb2.TenantSettings(
        rate_limits=registry_pb2.TenantRateLimits(tenant_send_rate=6, key_send_burst=9),
        stream_policy=registry_pb2.StreamPolicy(signing_required=True),
    )
    await client.put_tenant_settings(second, expected_version=1)
    with pytest.raises(aio.AioRpcError):
        await client.put_tenant_settings(second, expected_version=1)
    await client.reset_tenant_settings()
    puts = audit_lines.records("tenant_settings.put")
    assert [(r["outcome"], r.get("previous_version"), r.get("version")) for r in puts] == [
        ("OK", 0, 1),
        ("OK", 1, 2),
        ("ABORTED", None, None),
    ]
    assert puts[0]["changed"] == ["rate_limits.tenant_send_rate", "rate_limits.key_send_burst"]
    assert puts[1]["changed"] == ["rate_limits.tenant_send_rate", "stream_policy"]
    assert (puts[1]["expected_version"], puts[2]["expected_version"]) == (1, 1)
    [reset] = audit_lines.records("tenant_settings.reset")
    assert (reset["previous_version"], reset["version"]) == (2, 3)
    assert reset["changed"] == [
        "rate_limits.tenant_send_rate",
        "rate_limits.key_send_burst",
        "stream_policy",
    ]
    for record in (*puts, reset):
        assert (record["actor"], record["tenant"], record["target"]) == (
            "billing",
            "acme",
            "tenant:acme",
        )
        _assert_loopback_peer(record)
    _assert_nothing_secret(audit_lines, token)


@pytest.mark.asyncio
async def test_websocket_sessions_and_refusals_are_audited_without_the_token(
    herald_up: Herald, audit_lines: AuditLines
) -> None:
    forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJlLXRoYXQtZmFpbHM"
    with pytest.raises(Closed):
        await WebSocketSubscription.open(herald_up.ws_url(), forged, token_in_subprotocol=True)
    [refused] = audit_lines.records("auth.failure")
    assert (refused["target"], refused["outcome"], refused["actor"]) == (
        "/ws",
        "UNAUTHENTICATED",
        "",
    )
    assert refused["peer"].startswith("127.0.0.1:"), refused["peer"]

    token = herald_up.tokens.user("acme", "alice")
    sub = await WebSocketSubscription.open(
        herald_up.ws_url(), token, stream_pb2.SubscribeRequest(device="web")
    )
    [opened] = audit_lines.records("session.open")
    assert (opened["outcome"], opened["transport"], opened["device"]) == ("OK", "websocket", "web")
    assert opened["target"] == f"session:{sub.started.session_id}"  # type: ignore[union-attr]
    await sub.close()
    [closed] = await audit_lines.wait_for("session.close")
    assert (closed["outcome"], closed["transport"]) == ("CANCELLED", "websocket")
    _assert_nothing_secret(audit_lines, forged, token, "mallory")
