"""Tenant settings: the `TenantSettingsStore` Protocol, the bounds on every field, and what a
change changed (for the audit log).

A tenant's settings are one record, replaced whole. Its version is 0 until the first put and
grows by one with every put (a reset is a put of empty settings), never reused, so a caller
that read version N and puts with `expected_version=N` never overwrites a change it did not see.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import math
from typing import Final, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.bounds import quote
from services.domain import (
    MAX_PUSH_DELAY_S,
    RATE_LIMIT_FIELDS,
    PushFallback,
    RateLimitOverrides,
    StreamPolicy,
    TenantSettingsRecord,
)
from services.errors import Aborted, InvalidArgument
from services.push.fcm import GOOGLE_OAUTH_URL
from services.webhooks import settings as webhook_settings

MAX_RATE: Final = 1_000_000.0
MAX_BURST: Final = 10_000_000
COMPRESSION_ENCODINGS: Final = ("zstd", "gzip")
FORMATS: Final = ("protobuf", "json")
MAX_COMPRESSION_MIN_BYTES: Final = 4 * 1024 * 1024
MAX_DEFAULT_TTL_S: Final = 365 * 86_400
MAX_USERS_PER_SEND: Final = 100_000
# The fields of the record beside the rate limits and the stream policy, by their proto names.
SEND_FIELDS: Final = (
    ("default_ttl_s", "default_ttl_seconds", MAX_DEFAULT_TTL_S),
    ("max_users_per_send", "max_users_per_send", MAX_USERS_PER_SEND),
)
# A page of ListTenantSettings.
DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000


class VersionConflict(Aborted):
    """A conditional put found another version stored than the one it expected."""

    def __init__(self, tenant: str, expected: int, current: int) -> None:
        super().__init__(
            f"the settings of tenant {quote(tenant)} are at version {current}, not {expected}: "
            "read them again (GetTenantSettings) and reapply the change"
        )
        self.current = current


class TenantSettingsStore(Protocol):
    async def get(self, tenant: str) -> TenantSettingsRecord | None:
        """The stored settings, or None when none were ever stored."""
        ...

    async def put(
        self, settings: TenantSettingsRecord, expected_version: int | None = None
    ) -> TenantSettingsRecord:
        """Stores `settings` for `settings.tenant` at the next version (its `version` is
        ignored) and returns them as stored.

        Args:
            expected_version: None stores unconditionally; a number only if that is the
                version stored now (0: only if none is).

        Raises:
            VersionConflict: another version is stored than `expected_version`.
        """
        ...

    async def list(
        self, after: str = "", limit: int = DEFAULT_PAGE
    ) -> builtins.list[TenantSettingsRecord]:
        """Up to `limit` stored settings of tenants whose id sorts after `after`, by tenant id."""
        ...

    async def aclose(self) -> None:
        """Releases connections; the store is not used afterwards."""
        ...


def check_settings(settings: TenantSettingsRecord) -> None:
    """Raises InvalidArgument, naming the field, for any value out of its bounds."""
    limits = settings.rate_limits
    for name in RATE_LIMIT_FIELDS:
        value = getattr(limits, name)
        if value is None:
            continue
        where = f"rate_limits.{name}"
        if name.endswith("_rate"):
            if not math.isfinite(value) or not 0 <= value <= MAX_RATE:
                raise InvalidArgument(f"{where} must be 0 to {MAX_RATE:,.0f} (0 turns it off)")
        elif not 1 <= value <= MAX_BURST:
            raise InvalidArgument(f"{where} must be 1 to {MAX_BURST:,}")
    for name, wire_name, limit in SEND_FIELDS:
        value = getattr(settings, name)
        if value is not None and not 1 <= value <= limit:
            raise InvalidArgument(f"{wire_name} must be 1 to {limit:,}")
    if settings.push_fallback is not None:
        check_push_fallback(settings.push_fallback)
    if settings.webhooks is not None:
        webhook_settings.check(settings.webhooks)
    policy = settings.stream_policy
    if policy is None:
        return
    _check_names(policy.compression, COMPRESSION_ENCODINGS, "stream_policy.compression")
    _check_names(policy.allowed_formats, FORMATS, "stream_policy.allowed_formats")
    if not 0 <= policy.compression_min_bytes <= MAX_COMPRESSION_MIN_BYTES:
        raise InvalidArgument(
            f"stream_policy.compression_min_bytes must be 0 to {MAX_COMPRESSION_MIN_BYTES:,}"
        )


def _check_names(values: tuple[str, ...], known: tuple[str, ...], where: str) -> None:
    if len(values) > len(known):
        raise InvalidArgument(f"{where} holds {len(values)} entries; there are {len(known)}")
    for value in values:
        if value not in known:
            raise InvalidArgument(
                f"{where} holds {quote(value)}; the known ones are {', '.join(known)}"
            )
    if len(set(values)) != len(values):
        raise InvalidArgument(f"{where} names an entry twice")


def changed_fields(before: TenantSettingsRecord, after: TenantSettingsRecord) -> list[str]:
    """The names of the fields whose value differs (`rate_limits.key_send_rate`,
    `default_ttl_seconds`, `stream_policy.signing_required`, `stream_policy` when it is set or
    unset), in the order of the proto."""
    changed = [
        f"rate_limits.{name}"
        for name in RATE_LIMIT_FIELDS
        if getattr(before.rate_limits, name) != getattr(after.rate_limits, name)
    ]
    changed.extend(
        wire_name
        for name, wire_name, _ in SEND_FIELDS
        if getattr(before, name) != getattr(after, name)
    )
    old_push, new_push = before.push_fallback, after.push_fallback
    if (old_push is None) != (new_push is None):
        changed.append("push_fallback")
    elif old_push is not None and new_push is not None:
        # Names only: a secret's value never reaches the audit log.
        changed.extend(
            f"push_fallback.{f.name}"
            for f in dataclasses.fields(PushFallback)
            if getattr(old_push, f.name) != getattr(new_push, f.name)
        )
    changed.extend(webhook_settings.changed(before.webhooks, after.webhooks))
    old, new = before.stream_policy, after.stream_policy
    if (old is None) != (new is None):
        changed.append("stream_policy")
    elif old is not None and new is not None:
        changed.extend(
            f"stream_policy.{f.name}"
            for f in dataclasses.fields(StreamPolicy)
            if getattr(old, f.name) != getattr(new, f.name)
        )
    return changed


def empty(tenant: str) -> TenantSettingsRecord:
    """Settings that set nothing: every value the node's default."""
    return TenantSettingsRecord(tenant, rate_limits=RateLimitOverrides())


def check_push_fallback(push: PushFallback) -> None:
    """Raises InvalidArgument for a delay out of bounds or credentials that cannot be used (a
    key that does not load, a service account without its fields), naming the field and never
    echoing a secret."""
    if not 0 <= push.delay_s <= MAX_PUSH_DELAY_S:
        raise InvalidArgument(
            f"push_fallback.delay_seconds must be 0 to {MAX_PUSH_DELAY_S:,} (0: 30 seconds)"
        )
    if push.fcm_service_account_json:
        try:
            account = json.loads(push.fcm_service_account_json)
        except ValueError:
            raise InvalidArgument(
                "push_fallback.fcm.service_account_json is not JSON: give the key file as issued"
            ) from None
        if not isinstance(account, dict) or not all(
            isinstance(account.get(k), str) for k in ("client_email", "private_key")
        ):
            raise InvalidArgument(
                "push_fallback.fcm.service_account_json needs client_email and private_key"
            )
        _check_key(account["private_key"], "push_fallback.fcm.service_account_json private_key")
        if account.get("token_uri", GOOGLE_OAUTH_URL) != GOOGLE_OAUTH_URL:
            raise InvalidArgument(
                "push_fallback.fcm.service_account_json token_uri must be "
                f"{GOOGLE_OAUTH_URL} (as Google issues key files); Herald posts the "
                "assertion only there, or to the operator's HERALD_PUSH_FCM_TOKEN_URL"
            )
        if not push.fcm_project_id:
            raise InvalidArgument("push_fallback.fcm.project_id is required with a service account")
    if push.apns_private_key_p8:
        _check_key(push.apns_private_key_p8, "push_fallback.apns.private_key_p8", ec_only=True)
        for value, name in (
            (push.apns_team_id, "team_id"),
            (push.apns_key_id, "key_id"),
            (push.apns_topic, "topic"),
        ):
            if not value:
                raise InvalidArgument(f"push_fallback.apns.{name} is required with a key")
    if push.vapid_private_key:
        from services.push.webpush import load_vapid_key

        try:
            load_vapid_key(push.vapid_private_key)
        except ValueError:
            raise InvalidArgument(
                "push_fallback.web_push.vapid_private_key is not a P-256 key (PEM or base64url)"
            ) from None
        if not push.vapid_subject.startswith(("mailto:", "https://")):
            raise InvalidArgument(
                "push_fallback.web_push.subject must be a mailto: or https: URL (RFC 8292)"
            )


def _check_key(pem: str, where: str, ec_only: bool = False) -> None:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{where} is not an unencrypted PEM private key") from None
    if ec_only and not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument(f"{where} must be a P-256 (ES256) key")
