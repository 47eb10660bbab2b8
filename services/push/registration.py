"""Registering push targets: validation, ids, the per-user limit (RegistryService's push RPCs)."""

from __future__ import annotations

import binascii
import re
from typing import Final
from urllib.parse import urlsplit

from services.bounds import MAX_ID_LEN, check_id, check_length
from services.clock import Clock
from services.errors import InvalidArgument, NotFound, ResourceExhausted
from services.push.public_hosts import NotPublic, check_host
from services.push.targets import PushKind, PushTargetRecord, PushTargetStore, target_id
from services.push.webpush import b64url_decode

MAX_TARGETS_PER_USER: Final = 20
MAX_TOKEN_LEN: Final = 4096
_APNS_TOKEN: Final = re.compile(r"[0-9a-fA-F]{64,200}")
_FCM_TOKEN: Final = re.compile(r"[\x21-\x7e]+")


class PushRegistration:
    def __init__(
        self,
        store: PushTargetStore,
        clock: Clock,
        *,
        allow_http_endpoints: bool = False,
        allow_private_endpoints: bool = False,
    ) -> None:
        self._store = store
        self._clock = clock
        # Web Push endpoints over plain http (tests' local servers only).
        self._allow_http = allow_http_endpoints
        # Web Push endpoints on loopback or private addresses (services/push/public_hosts.py).
        self._allow_private = allow_private_endpoints

    async def register(
        self,
        tenant: str,
        user_id: str,
        kind: int,
        token: str,
        endpoint: str = "",
        p256dh: str = "",
        auth: str = "",
    ) -> PushTargetRecord:
        check_id(user_id, "user_id")
        if kind == PushKind.FCM:
            _check_token(token, "an FCM registration token", _FCM_TOKEN)
            record = PushTargetRecord(target_id(PushKind.FCM, token), user_id, PushKind.FCM, token)
        elif kind == PushKind.APNS:
            _check_token(token, "an APNs device token (hex)", _APNS_TOKEN)
            token = token.lower()
            record = PushTargetRecord(
                target_id(PushKind.APNS, token), user_id, PushKind.APNS, token
            )
        elif kind == PushKind.WEBPUSH:
            if token:
                raise InvalidArgument("a Web Push target takes web_push, not token")
            self._check_subscription(endpoint, p256dh, auth)
            record = PushTargetRecord(
                target_id(PushKind.WEBPUSH, endpoint),
                user_id,
                PushKind.WEBPUSH,
                endpoint,
                p256dh,
                auth,
            )
        else:
            raise InvalidArgument("kind must be PUSH_KIND_FCM, PUSH_KIND_APNS or PUSH_KIND_WEBPUSH")
        record = PushTargetRecord(
            record.target_id,
            record.user_id,
            record.kind,
            record.token,
            record.p256dh,
            record.auth,
            self._clock.now(),
        )
        existing = await self._store.list(tenant, user_id)
        if len(existing) >= MAX_TARGETS_PER_USER and all(
            t.target_id != record.target_id for t in existing
        ):
            raise ResourceExhausted(
                f"a user has at most {MAX_TARGETS_PER_USER} push targets; unregister one first"
            )
        return await self._store.register(tenant, record)

    async def unregister(self, tenant: str, user_id: str, target: str) -> None:
        check_id(user_id, "user_id")
        check_id(target, "target_id", MAX_ID_LEN)
        if not await self._store.unregister(tenant, user_id, target):
            raise NotFound("the user has no push target with this target_id")

    async def targets(self, tenant: str, user_id: str) -> list[PushTargetRecord]:
        check_id(user_id, "user_id")
        return await self._store.list(tenant, user_id)

    def _check_subscription(self, endpoint: str, p256dh: str, auth: str) -> None:
        check_length(endpoint, MAX_TOKEN_LEN, "web_push.endpoint")
        parts = urlsplit(endpoint)
        schemes = ("https", "http") if self._allow_http else ("https",)
        if parts.scheme not in schemes or not parts.netloc:
            raise InvalidArgument(
                "web_push.endpoint must be the subscription's https URL (PushSubscription.endpoint)"
            )
        if not self._allow_private:
            try:
                check_host(parts.hostname or "")
            except NotPublic:
                raise InvalidArgument(
                    "web_push.endpoint must be a push service on the public internet "
                    "(PushSubscription.endpoint), not a local or private address"
                ) from None
        try:
            key = b64url_decode(p256dh)
            secret = b64url_decode(auth)
        except (binascii.Error, ValueError):
            raise InvalidArgument("web_push.p256dh and web_push.auth must be base64url") from None
        if len(key) != 65 or key[0] != 4:
            raise InvalidArgument(
                "web_push.p256dh must be an uncompressed P-256 point (65 bytes, base64url)"
            )
        if len(secret) != 16:
            raise InvalidArgument("web_push.auth must be the 16-byte secret (base64url)")


def _check_token(token: str, what: str, pattern: re.Pattern[str]) -> None:
    if not token:
        raise InvalidArgument(f"token is required: {what}")
    check_length(token, MAX_TOKEN_LEN, "token")
    if not pattern.fullmatch(token):
        raise InvalidArgument(f"token is not {what}")
