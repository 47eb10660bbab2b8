"""FCM HTTP v1: an OAuth2 bearer from the service account's signed JWT, then messages:send."""

from __future__ import annotations

import json
import time
from typing import Any, Final

import httpx
import jwt

from services.push.provider import Outcome, PushMessage, PushResult, classify, retry_after
from services.push.targets import PushTargetRecord

FCM_BASE_URL: Final = "https://fcm.googleapis.com"
# Google's OAuth2 token endpoint: the assertion's audience, and where it is posted unless the
# operator names a proxy (HERALD_PUSH_FCM_TOKEN_URL). A service account's own `token_uri` is
# never followed: tenant settings come from tenant admins, and a URL of theirs would make the
# node post signed assertions to any address it can reach.
GOOGLE_OAUTH_URL: Final = "https://oauth2.googleapis.com/token"
_SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# FCM's error codes that mean the token is dead: remove the target.
# Firebase's token-management guide removes tokens on both.
_GONE: Final = frozenset({"UNREGISTERED", "INVALID_ARGUMENT"})


class FcmProvider:
    """Sends through one Firebase project with its service account key (a JSON key file)."""

    def __init__(
        self,
        project_id: str,
        service_account: dict[str, Any],
        *,
        base_url: str = FCM_BASE_URL,
        token_url: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._project_id = project_id
        self._email = str(service_account["client_email"])
        self._key = str(service_account["private_key"])
        self._key_id = str(service_account.get("private_key_id", ""))
        self._token_url = token_url or GOOGLE_OAUTH_URL
        self._base_url = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=10.0)
        self._access_token = ""
        self._expires_at = 0.0

    async def _bearer(self) -> str:
        now = time.time()
        if self._access_token and now < self._expires_at - 60:
            return self._access_token
        assertion = jwt.encode(
            {
                "iss": self._email,
                "scope": _SCOPE,
                "aud": GOOGLE_OAUTH_URL,
                "iat": int(now),
                "exp": int(now) + 3600,
            },
            self._key,
            algorithm="RS256",
            headers={"kid": self._key_id} if self._key_id else None,
        )
        answer = await self._client.post(
            self._token_url, data={"grant_type": _GRANT, "assertion": assertion}
        )
        answer.raise_for_status()
        body = answer.json()
        self._access_token = str(body["access_token"])
        self._expires_at = now + float(body.get("expires_in", 3600))
        return self._access_token

    def _body(self, target: PushTargetRecord, message: PushMessage) -> dict[str, Any]:
        android: dict[str, Any] = {
            "priority": "high" if message.high_priority else "normal",
            "ttl": f"{message.ttl_s}s",
        }
        if message.collapse_key:
            android["collapse_key"] = message.collapse_key
        return {
            "message": {
                "token": target.token,
                "notification": {"title": message.title, "body": message.body},
                "data": {**message.data, "notification_id": message.notification_id},
                "android": android,
            }
        }

    async def send(self, target: PushTargetRecord, message: PushMessage) -> PushResult:
        try:
            bearer = await self._bearer()
            answer = await self._client.post(
                f"{self._base_url}/v1/projects/{self._project_id}/messages:send",
                headers={"Authorization": f"Bearer {bearer}"},
                json=self._body(target, message),
            )
        except httpx.HTTPStatusError as error:
            return PushResult(
                classify(error.response.status_code),
                error.response.status_code,
                "oauth token refused",
            )
        except httpx.HTTPError as error:
            return PushResult(Outcome.RETRY, 0, type(error).__name__)
        if answer.status_code == 200:
            return PushResult(Outcome.SENT, 200)
        reason = _error_code(answer)
        if reason in _GONE or answer.status_code == 404:
            return PushResult(Outcome.GONE, answer.status_code, reason)
        return PushResult(
            classify(answer.status_code),
            answer.status_code,
            reason,
            retry_after(answer.headers.get("retry-after")),
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _error_code(answer: httpx.Response) -> str:
    """The FcmError errorCode in error.details, else error.status (e.g. INVALID_ARGUMENT)."""
    try:
        error = answer.json()["error"]
    except (ValueError, KeyError, TypeError):
        return ""
    for detail in error.get("details", []):
        if str(detail.get("@type", "")).endswith("google.firebase.fcm.v1.FcmError"):
            return str(detail.get("errorCode", ""))
    return str(error.get("status", ""))


def load_service_account(text: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(text)
    return decoded
