"""Tenants' credentials encrypted where they are stored (docs/postgres.md, "Secrets at rest").

The push providers' keys (FCM service account, APNs .p8, VAPID private key) and the webhook
signing secret are stored in a tenant's settings. With `HERALD_SECRETS_KEYS` set, each is
stored as `herald-secret:v1:<key id>:<base64url(nonce || AES-256-GCM ciphertext)>`, with the
tenant and the field as associated data: a database dump or backup holds no usable credential,
and a value copied to another tenant or field does not decrypt.

`HERALD_SECRETS_KEYS` is `<id>:<base64 of 32 random bytes>[,<id>:<key>...]`: the first encrypts,
every one decrypts, so a key is rotated by putting the new one first and keeping the old one
until every tenant's settings were written again. Without it, values are stored as given (the
behaviour before this existed), and a stored plain value is read as it is either way, so
turning encryption on needs no migration: each tenant's secrets are encrypted at its next write.

A value that does not decrypt (its key is not configured, or it was altered) never fails the
read of the settings, which every send consults: it stays sealed, is counted in
`herald_secrets_undecryptable_total` and logged (tenant, field, key id; never the value), and
the push provider or webhook receiver refuses it as a credential, so push and webhooks fail for
that tenant until the key is configured again. A sealed value is written back as it is (never
sealed twice, never dropped): a settings change made while a key is missing loses nothing, and
putting the key back restores it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import time
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services import metrics

log = logging.getLogger(__name__)

PREFIX: Final = "herald-secret:v1:"
_NONCE_BYTES: Final = 12
_KEY_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class SecretBox:
    """Encrypts and decrypts tenants' stored secrets; without keys, passes them through."""

    def __init__(self, keys: dict[str, bytes] | None = None, active: str = "") -> None:
        self._keys = {key_id: AESGCM(key) for key_id, key in (keys or {}).items()}
        if self._keys and active not in self._keys:
            raise ValueError("the active secrets key must be one of the keys")
        self._active = active

    @classmethod
    def from_setting(cls, value: str) -> SecretBox:
        """The box of a `HERALD_SECRETS_KEYS` value (see the module doc); empty: no keys.

        Raises:
            ValueError: the value is malformed (the message never holds a key).
        """
        keys: dict[str, bytes] = {}
        active = ""
        for entry in (e.strip() for e in value.split(",")):
            if not entry:
                continue
            key_id, sep, encoded = entry.partition(":")
            if not sep or not _KEY_ID.fullmatch(key_id):
                raise ValueError(
                    "HERALD_SECRETS_KEYS takes <id>:<base64 key>[,<id>:<key>...] with ids of "
                    "letters, digits, '.', '_' or '-'"
                )
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"HERALD_SECRETS_KEYS: key {key_id!r} is not base64") from None
            if len(key) != 32:
                raise ValueError(
                    f"HERALD_SECRETS_KEYS: key {key_id!r} must be 32 bytes (openssl rand -base64 "
                    "32); it is " + str(len(key))
                )
            if key_id in keys:
                raise ValueError(f"HERALD_SECRETS_KEYS names key {key_id!r} twice")
            keys[key_id] = key
            active = active or key_id
        return cls(keys, active)

    @property
    def encrypting(self) -> bool:
        return bool(self._keys)

    def seal(self, value: str, tenant: str, field: str) -> str:
        """`value` as stored: encrypted under the active key, or as given without keys (or
        when it is sealed already: one that `open` could not decrypt)."""
        if not value or not self._keys or value.startswith(PREFIX):
            return value
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[self._active].encrypt(nonce, value.encode(), _aad(tenant, field))
        encoded = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{PREFIX}{self._active}:{encoded}"

    def open(self, stored: str, tenant: str, field: str) -> str:
        """The value of what `seal` stored (a plain value: itself); `stored` itself, still
        sealed, when it does not decrypt (counted and logged)."""
        if not stored.startswith(PREFIX):
            return stored
        key_id, _, encoded = stored[len(PREFIX) :].partition(":")
        aead = self._keys.get(key_id)
        if aead is None:
            _undecryptable(tenant, field, key_id, "its key is not in HERALD_SECRETS_KEYS")
            return stored
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            if len(raw) <= _NONCE_BYTES:
                raise ValueError("too short")
            plain = aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(tenant, field))
            return plain.decode()
        except (InvalidTag, ValueError, binascii.Error, UnicodeDecodeError):
            _undecryptable(tenant, field, key_id, "it was altered or belongs elsewhere")
            return stored


def _aad(tenant: str, field: str) -> bytes:
    return f"herald/{len(tenant)}:{tenant}/{field}".encode()


# (tenant, field) -> when its failure was last logged; a settings cache re-reads every tenant.
_logged: dict[tuple[str, str], float] = {}
_LOG_INTERVAL_S: Final = 60.0
_LOGGED_MAX: Final = 10_000


def _undecryptable(tenant: str, field: str, key_id: str, why: str) -> None:
    metrics.SECRETS_UNDECRYPTABLE.inc()
    now = time.monotonic()
    if now - _logged.get((tenant, field), -_LOG_INTERVAL_S) < _LOG_INTERVAL_S:
        return
    if len(_logged) >= _LOGGED_MAX:
        _logged.clear()
    _logged[(tenant, field)] = now
    log.error(
        "a stored tenant secret does not decrypt; push or webhooks fail for the tenant until "
        "its key is in HERALD_SECRETS_KEYS",
        extra={"tenant": tenant, "field": field, "key_id": key_id, "reason": why},
    )
