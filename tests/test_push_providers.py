"""Each push provider against a local server that checks the request as the provider documents
it (method, path, headers, signed JWTs, body; Web Push: the payload decrypted with the
subscription's key) and answers with the provider's documented errors."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import http_ece
import httpx
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.push import webpush as webpush_module
from services.push.apns import ApnsProvider
from services.push.fcm import FcmProvider
from services.push.provider import Outcome, PushMessage, PushResult
from services.push.public_hosts import (
    NotPublic,
    check_host,
    check_resolves_public,
    public_transport,
    refusal_in,
)
from services.push.targets import PushKind, PushTargetRecord, target_id
from services.push.webpush import WebPushProvider, b64url, b64url_decode
from tests.push_servers import Answer, ScriptedServer, http1_server, http2_server

pytestmark = pytest.mark.asyncio

MESSAGE = PushMessage(
    "0b8f3c7e-2a51-4d4e-9a3b-6f1c2d3e4f50",
    "Invoice paid",
    "Thanks!",
    {"invoice": "42"},
    high_priority=True,
    ttl_s=600,
    collapse_key="billing",
)


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest_asyncio.fixture
async def http1() -> AsyncIterator[ScriptedServer]:
    async with http1_server() as server:
        yield server


@pytest_asyncio.fixture
async def http2() -> AsyncIterator[ScriptedServer]:
    async with http2_server() as server:
        yield server


# -- FCM HTTP v1 -----------------------------------------------------------------------------

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
FCM_TARGET = PushTargetRecord(
    target_id(PushKind.FCM, "fcm-token-1"), "alice", PushKind.FCM, "fcm-token-1"
)


def fcm(server: ScriptedServer) -> FcmProvider:
    account = {
        "type": "service_account",
        "project_id": "acme-app",
        "private_key_id": "key-1",
        "private_key": pem(RSA_KEY),
        "client_email": "herald@acme-app.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    server.defaults["/token"] = Answer.json(
        200, {"access_token": "ya29.access", "expires_in": 3599, "token_type": "Bearer"}
    )
    return FcmProvider("acme-app", account, base_url=server.url, token_url=f"{server.url}/token")


async def test_fcm_sends_as_documented(http1: ScriptedServer) -> None:
    provider = fcm(http1)
    try:
        result = await provider.send(FCM_TARGET, MESSAGE)
        again = await provider.send(FCM_TARGET, MESSAGE)
    finally:
        await provider.aclose()
    assert result.outcome is Outcome.SENT
    assert again.outcome is Outcome.SENT
    # One token exchange (the access token is reused), then the sends.
    (exchange,) = http1.to("/token")
    assert exchange.method == "POST"
    assert exchange.headers["content-type"] == "application/x-www-form-urlencoded"
    form = {k: v[0] for k, v in parse_qs(exchange.body.decode()).items()}
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    claims = jwt.decode(
        form["assertion"],
        RSA_KEY.public_key(),
        algorithms=["RS256"],
        audience="https://oauth2.googleapis.com/token",
    )
    assert claims["iss"] == "herald@acme-app.iam.gserviceaccount.com"
    assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
    assert claims["exp"] - claims["iat"] == 3600
    assert jwt.get_unverified_header(form["assertion"])["kid"] == "key-1"
    sends = http1.to("/v1/")
    assert len(sends) == 2
    send = sends[0]
    assert (send.method, send.path) == ("POST", "/v1/projects/acme-app/messages:send")
    assert send.headers["authorization"] == "Bearer ya29.access"
    assert send.headers["content-type"] == "application/json"
    assert json.loads(send.body) == {
        "message": {
            "token": "fcm-token-1",
            "notification": {"title": "Invoice paid", "body": "Thanks!"},
            "data": {"invoice": "42", "notification_id": MESSAGE.notification_id},
            "android": {"priority": "high", "ttl": "600s", "collapse_key": "billing"},
        }
    }


def fcm_error(status: int, code: str, error_code: str | None = None) -> Answer:
    details = (
        [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]
        if error_code
        else []
    )
    return Answer.json(
        status, {"error": {"code": status, "message": "x", "status": code, "details": details}}
    )


@pytest.mark.parametrize(
    ("answer", "outcome", "reason"),
    [
        (fcm_error(404, "NOT_FOUND", "UNREGISTERED"), Outcome.GONE, "UNREGISTERED"),
        (fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"), Outcome.GONE, "INVALID_ARGUMENT"),
        (fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), Outcome.RETRY, "QUOTA_EXCEEDED"),
        (fcm_error(503, "UNAVAILABLE", "UNAVAILABLE"), Outcome.RETRY, "UNAVAILABLE"),
        (
            fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
            Outcome.FAILED,
            "SENDER_ID_MISMATCH",
        ),
    ],
)
async def test_fcm_error_answers(
    http1: ScriptedServer, answer: Answer, outcome: Outcome, reason: str
) -> None:
    answer.headers["retry-after"] = "7"
    http1.scripts["/v1/"] = [answer]
    provider = fcm(http1)
    try:
        result = await provider.send(FCM_TARGET, MESSAGE)
    finally:
        await provider.aclose()
    assert (result.outcome, result.reason, result.status) == (outcome, reason, answer.status)
    if outcome is Outcome.RETRY:
        assert result.retry_after_s == 7.0


# -- APNs ------------------------------------------------------------------------------------

APNS_KEY = ec.generate_private_key(ec.SECP256R1())
DEVICE = "a" * 64
APNS_TARGET = PushTargetRecord(target_id(PushKind.APNS, DEVICE), "alice", PushKind.APNS, DEVICE)


def apns(server: ScriptedServer) -> ApnsProvider:
    # Prior-knowledge HTTP/2: the stand-in has no TLS, so no ALPN (see tests/push_servers.py).
    return ApnsProvider(
        team_id="TEAM123456",
        key_id="KEY1234567",
        private_key_p8=pem(APNS_KEY),
        topic="com.acme.app",
        base_url=server.url,
        client=httpx.AsyncClient(http1=False, http2=True),
    )


async def test_apns_sends_as_documented(http2: ScriptedServer) -> None:
    provider = apns(http2)
    before = int(time.time())
    try:
        result = await provider.send(APNS_TARGET, MESSAGE)
    finally:
        await provider.aclose()
    assert result.outcome is Outcome.SENT
    (request,) = http2.requests
    assert request.http_version == "HTTP/2"
    assert (request.method, request.path) == ("POST", f"/3/device/{DEVICE}")
    headers = request.headers
    scheme, _, token = headers["authorization"].partition(" ")
    assert scheme == "bearer"
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "KEY1234567", "typ": "JWT"}
    claims = jwt.decode(token, APNS_KEY.public_key(), algorithms=["ES256"])
    assert claims["iss"] == "TEAM123456"
    assert abs(claims["iat"] - before) <= 2
    assert headers["apns-topic"] == "com.acme.app"
    assert headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == "10"
    assert headers["apns-collapse-id"] == "billing"
    assert headers["apns-id"] == MESSAGE.notification_id
    assert abs(int(headers["apns-expiration"]) - (before + 600)) <= 2
    assert json.loads(request.body) == {
        "aps": {"alert": {"title": "Invoice paid", "body": "Thanks!"}},
        "invoice": "42",
        "notification_id": MESSAGE.notification_id,
    }


@pytest.mark.parametrize(
    ("answer", "outcome", "reason"),
    [
        (
            Answer.json(410, {"reason": "Unregistered", "timestamp": 1}),
            Outcome.GONE,
            "Unregistered",
        ),
        (Answer.json(400, {"reason": "BadDeviceToken"}), Outcome.GONE, "BadDeviceToken"),
        (Answer.json(429, {"reason": "TooManyRequests"}), Outcome.RETRY, "TooManyRequests"),
        (Answer.json(503, {"reason": "ServiceUnavailable"}), Outcome.RETRY, "ServiceUnavailable"),
        (
            Answer.json(403, {"reason": "InvalidProviderToken"}),
            Outcome.FAILED,
            "InvalidProviderToken",
        ),
    ],
)
async def test_apns_error_answers(
    http2: ScriptedServer, answer: Answer, outcome: Outcome, reason: str
) -> None:
    http2.scripts["/3/"] = [answer]
    provider = apns(http2)
    try:
        result = await provider.send(APNS_TARGET, MESSAGE)
    finally:
        await provider.aclose()
    assert (result.outcome, result.reason, result.status) == (outcome, reason, answer.status)


# -- Web Push --------------------------------------------------------------------------------

VAPID_KEY = ec.generate_private_key(ec.SECP256R1())
UA_KEY = ec.generate_private_key(ec.SECP256R1())
UA_AUTH = os.urandom(16)


def raw_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def subscription(server: ScriptedServer) -> PushTargetRecord:
    endpoint = f"{server.url}/push/sub-1"
    return PushTargetRecord(
        target_id(PushKind.WEBPUSH, endpoint),
        "alice",
        PushKind.WEBPUSH,
        endpoint,
        b64url(raw_public(UA_KEY)),
        b64url(UA_AUTH),
    )


def webpush() -> WebPushProvider:
    return WebPushProvider(
        vapid_private_key=pem(VAPID_KEY), subject="mailto:ops@acme.example", allow_private=True
    )


async def test_webpush_sends_as_documented(http1: ScriptedServer) -> None:
    http1.defaults["/push/"] = Answer(201)
    provider = webpush()
    try:
        result = await provider.send(subscription(http1), MESSAGE)
    finally:
        await provider.aclose()
    assert result.outcome is Outcome.SENT
    (request,) = http1.requests
    assert (request.method, request.path) == ("POST", "/push/sub-1")
    assert request.headers["content-encoding"] == "aes128gcm"
    assert request.headers["ttl"] == "600"
    assert request.headers["urgency"] == "high"
    # RFC 8292: "vapid t=<JWT>, k=<the application server's public key>".
    scheme, _, params = request.headers["authorization"].partition(" ")
    assert scheme == "vapid"
    fields = dict(part.strip().split("=", 1) for part in params.split(","))
    assert b64url_decode(fields["k"]) == raw_public(VAPID_KEY)
    claims = jwt.decode(
        fields["t"], VAPID_KEY.public_key(), algorithms=["ES256"], audience=http1.url
    )
    assert claims["sub"] == "mailto:ops@acme.example"
    assert 0 < claims["exp"] - time.time() <= 24 * 3600
    # RFC 8291: only the subscription's private key and auth secret open the body.
    plaintext = http_ece.decrypt(
        request.body, private_key=UA_KEY, auth_secret=UA_AUTH, version="aes128gcm"
    )
    assert json.loads(plaintext) == {
        "notification_id": MESSAGE.notification_id,
        "title": "Invoice paid",
        "body": "Thanks!",
        "data": {"invoice": "42"},
    }
    with pytest.raises(Exception):  # noqa: B017, PT011 -- any failure to decrypt will do
        http_ece.decrypt(
            request.body,
            private_key=ec.generate_private_key(ec.SECP256R1()),
            auth_secret=UA_AUTH,
            version="aes128gcm",
        )


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (404, Outcome.GONE),
        (410, Outcome.GONE),
        (429, Outcome.RETRY),
        (502, Outcome.RETRY),
        (413, Outcome.FAILED),
    ],
)
async def test_webpush_error_answers(http1: ScriptedServer, status: int, outcome: Outcome) -> None:
    http1.scripts["/push/"] = [Answer(status)]
    provider = webpush()
    try:
        result = await provider.send(subscription(http1), MESSAGE)
    finally:
        await provider.aclose()
    assert (result.outcome, result.status) == (outcome, status)


async def send_public_only(http1: ScriptedServer) -> PushResult:
    """One Web Push to the loopback server by a provider that keeps the default (public
    endpoints only)."""
    http1.defaults["/push/"] = Answer(201)
    provider = WebPushProvider(vapid_private_key=pem(VAPID_KEY), subject="mailto:ops@acme.example")
    try:
        return await provider.send(subscription(http1), MESSAGE)
    finally:
        await provider.aclose()


async def test_webpush_never_posts_to_an_endpoint_that_is_not_public(
    http1: ScriptedServer,
) -> None:
    # A target stored before the check (or with allow_private on at the time) whose endpoint
    # resolves to loopback: nothing is posted, and the target is removed as a dead one.
    result = await send_public_only(http1)
    assert result.outcome is Outcome.GONE
    assert "public" in result.reason
    assert http1.requests == []


async def test_webpush_refuses_an_internal_address_met_only_at_the_connection(
    http1: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: public for the check before the POST, loopback for the connection. The
    connection is refused and the target removed, as the check does, not retried."""

    async def public(url: str) -> None:  # what the first DNS answer made of the name
        return None

    monkeypatch.setattr(webpush_module, "check_url_resolves_public", public)
    result = await send_public_only(http1)
    assert (result.outcome, result.reason) == (
        Outcome.GONE,
        "endpoint is not on the public internet",
    )
    assert http1.requests == []


@pytest.mark.parametrize(
    ("host", "public"),
    [
        ("fcm.googleapis.com", True),
        ("updates.push.services.mozilla.com.", True),
        ("8.8.8.8", True),
        ("[2001:4860:4860::8888]", True),
        ("127.0.0.1", False),
        ("0.0.0.0", False),
        ("100.64.1.1", False),
        ("192.168.0.1", False),
        ("fd00::1", False),
        ("fe80::1%eth0", False),
        ("[::ffff:10.1.1.1]", False),
        # IPv6 forms that reach an IPv4 address are judged by it.
        ("[64:ff9b::a9fe:a9fe]", False),  # NAT64 of 169.254.169.254
        ("[64:ff9b::808:808]", True),  # NAT64 of 8.8.8.8
        ("[2002:7f00:1::1]", False),  # 6to4 of 127.0.0.1
        ("[2002:808:808::1]", True),  # 6to4 of 8.8.8.8
        ("[::7f00:1]", False),  # IPv4-compatible 127.0.0.1
        ("[64:ff9b:1::a00:1]", False),  # NAT64, local use
        ("[fec0::1]", False),  # site-local
        ("224.0.0.1", False),
        ("LOCALHOST", False),
        ("api.localhost", False),
        ("svc.cluster.internal", False),
        ("intranet", False),
        ("", False),
    ],
)
async def test_public_hosts_are_told_from_internal_ones(host: str, public: bool) -> None:
    if public:
        check_host(host)
    else:
        with pytest.raises(NotPublic):
            check_host(host)


async def test_a_name_no_resolver_can_answer_is_not_a_public_host() -> None:
    # An empty or over-long label: the resolver's codec refuses it (a UnicodeError, once
    # uncaught in the webhook sender, which then lost the batch).
    for host in ("a..example.com", "x" * 64 + ".example.com"):
        with pytest.raises(NotPublic, match="not a valid host name"):
            await check_resolves_public(host, 443)


@pytest_asyncio.fixture
async def loopback_http() -> AsyncIterator[int]:
    """A minimal HTTP server on 127.0.0.1 that answers 204 to anything; yields its port."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_the_public_transport_checks_the_address_it_connects_to(
    loopback_http: int, host: str
) -> None:
    """The check happens at the connection, on the address connected to: a name cannot answer
    a public address to an earlier check and an internal one to the connection."""
    url = f"http://{host}:{loopback_http}/hook"
    async with httpx.AsyncClient() as plain:
        assert (await plain.post(url, content=b"{}")).status_code == 204  # reachable
    async with httpx.AsyncClient(transport=public_transport()) as public:
        with pytest.raises(httpx.ConnectError, match="not public") as refused:
            await public.post(url, content=b"{}")
    # What the webhook sender and Web Push read to refuse it rather than retry it.
    assert isinstance(refusal_in(refused.value), NotPublic)


async def test_a_connection_that_fails_for_a_network_reason_is_no_refusal() -> None:
    async with httpx.AsyncClient(transport=public_transport()) as public:
        with pytest.raises(httpx.ConnectError) as failed:  # the name does not resolve
            await public.post("http://receiver.invalid/", content=b"{}")
    assert refusal_in(failed.value) is None
