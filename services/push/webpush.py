"""Web Push: the payload encrypted with aes128gcm (RFC 8291), VAPID authorization (RFC 8292)."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Final
from urllib.parse import urlsplit

import http_ece
import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.push.provider import Outcome, PushMessage, PushResult, classify, retry_after
from services.push.public_hosts import (
    NotPublic,
    check_url_resolves_public,
    public_transport,
    refusal_in,
)
from services.push.targets import PushTargetRecord

_VAPID_LIFETIME_S: Final = 12 * 3600


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_vapid_key(text: str) -> ec.EllipticCurvePrivateKey:
    """A VAPID private key: PEM, or the raw 32-byte scalar in base64url."""
    if "BEGIN" in text:
        key = serialization.load_pem_private_key(text.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the VAPID key must be a P-256 EC key")
        return key
    return ec.derive_private_key(int.from_bytes(b64url_decode(text), "big"), ec.SECP256R1())


class WebPushProvider:
    def __init__(
        self,
        *,
        vapid_private_key: str,
        subject: str,
        client: httpx.AsyncClient | None = None,
        allow_private: bool = False,
    ) -> None:
        # Off: every send first checks that the endpoint resolves to public addresses only
        # (services/push/public_hosts.py).
        self._allow_private = allow_private
        self._key = load_vapid_key(vapid_private_key)
        self._public = b64url(
            self._key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )
        self._subject = subject
        self._client = client or httpx.AsyncClient(
            timeout=10.0,
            # Checked at each connection too (DNS rebinding, services/push/public_hosts.py).
            transport=None if allow_private else public_transport(),
        )

    def _vapid(self, endpoint: str) -> str:
        parts = urlsplit(endpoint)
        token = jwt.encode(
            {
                "aud": f"{parts.scheme}://{parts.netloc}",
                "exp": int(time.time()) + _VAPID_LIFETIME_S,
                "sub": self._subject,
            },
            self._key,
            algorithm="ES256",
        )
        return f"vapid t={token}, k={self._public}"

    async def send(self, target: PushTargetRecord, message: PushMessage) -> PushResult:
        if not self._allow_private:
            try:
                await check_url_resolves_public(target.token)
            except NotPublic:
                # Never posted to; the target is removed, as a dead subscription is.
                return PushResult(Outcome.GONE, 0, "endpoint is not on the public internet")
            except OSError as error:
                return PushResult(Outcome.RETRY, 0, f"endpoint does not resolve: {error}")
        plaintext = json.dumps(
            {
                "notification_id": message.notification_id,
                "title": message.title,
                "body": message.body,
                "data": message.data,
            },
            separators=(",", ":"),
        ).encode()
        body = http_ece.encrypt(
            plaintext,
            salt=os.urandom(16),
            private_key=ec.generate_private_key(ec.SECP256R1()),
            dh=b64url_decode(target.p256dh),
            auth_secret=b64url_decode(target.auth),
            version="aes128gcm",
        )
        headers = {
            "Authorization": self._vapid(target.token),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(message.ttl_s),
            "Urgency": "high" if message.high_priority else "normal",
        }
        if message.collapse_key:
            headers["Topic"] = b64url(message.collapse_key.encode())[:32]
        try:
            answer = await self._client.post(target.token, headers=headers, content=body)
        except httpx.HTTPError as error:
            if refusal_in(error) is not None:
                # Public at the check above, internal at the connection: as the check does.
                return PushResult(Outcome.GONE, 0, "endpoint is not on the public internet")
            return PushResult(Outcome.RETRY, 0, type(error).__name__)
        if answer.status_code in (404, 410):
            return PushResult(Outcome.GONE, answer.status_code, "subscription gone")
        return PushResult(
            classify(answer.status_code),
            answer.status_code,
            "",
            retry_after(answer.headers.get("retry-after")),
        )

    async def aclose(self) -> None:
        await self._client.aclose()
