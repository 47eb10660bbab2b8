"""APNs over HTTP/2 with token auth: an ES256 provider token, /3/device/<token>."""

from __future__ import annotations

import json
import time
from typing import Any, Final

import httpx
import jwt

from services.push.provider import Outcome, PushMessage, PushResult, classify, retry_after
from services.push.targets import PushTargetRecord

APNS_PRODUCTION_URL: Final = "https://api.push.apple.com"
APNS_SANDBOX_URL: Final = "https://api.sandbox.push.apple.com"
# Apple refuses provider tokens older than an hour and throttles ones renewed more often than
# every 20 minutes: renew after 50.
_TOKEN_LIFETIME_S: Final = 50 * 60
_GONE: Final = frozenset({"BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic"})


class ApnsProvider:
    def __init__(
        self,
        *,
        team_id: str,
        key_id: str,
        private_key_p8: str,
        topic: str,
        base_url: str = APNS_SANDBOX_URL,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._team_id = team_id
        self._key_id = key_id
        self._key = private_key_p8
        self._topic = topic
        self._base_url = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(http2=True, timeout=10.0)
        self._token = ""
        self._issued_at = 0.0

    def _provider_token(self) -> str:
        now = time.time()
        if not self._token or now - self._issued_at > _TOKEN_LIFETIME_S:
            self._token = jwt.encode(
                {"iss": self._team_id, "iat": int(now)},
                self._key,
                algorithm="ES256",
                headers={"kid": self._key_id},
            )
            self._issued_at = now
        return self._token

    async def send(self, target: PushTargetRecord, message: PushMessage) -> PushResult:
        headers = {
            "authorization": f"bearer {self._provider_token()}",
            "apns-topic": self._topic,
            "apns-push-type": "alert",
            "apns-priority": "10" if message.high_priority else "5",
            "apns-expiration": str(int(time.time()) + message.ttl_s) if message.ttl_s else "0",
            "apns-id": _uuid(message.notification_id),
        }
        if message.collapse_key:
            headers["apns-collapse-id"] = message.collapse_key[:64]
        payload: dict[str, Any] = {
            "aps": {"alert": {"title": message.title, "body": message.body}},
            **message.data,
            "notification_id": message.notification_id,
        }
        try:
            answer = await self._client.post(
                f"{self._base_url}/3/device/{target.token}",
                headers=headers,
                content=json.dumps(payload, separators=(",", ":")).encode(),
            )
        except httpx.HTTPError as error:
            return PushResult(Outcome.RETRY, 0, type(error).__name__)
        if answer.status_code == 200:
            return PushResult(Outcome.SENT, 200)
        try:
            reason = str(answer.json().get("reason", ""))
        except ValueError:
            reason = ""
        if answer.status_code == 410 or reason in _GONE:
            return PushResult(Outcome.GONE, answer.status_code, reason)
        return PushResult(
            classify(answer.status_code),
            answer.status_code,
            reason,
            retry_after(answer.headers.get("retry-after")),
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _uuid(notification_id: str) -> str:
    """apns-id must be a UUID: the notification id when it is one, else one derived from it."""
    import uuid

    try:
        return str(uuid.UUID(notification_id))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"herald:{notification_id}"))
