"""Tenants' credentials encrypted in PostgreSQL with HERALD_SECRETS_KEYS: what is stored, how
keys rotate, and what a missing or wrong key does (nothing lost, nothing usable leaked)."""

from __future__ import annotations

import base64
import os

import asyncpg
import pytest

from services import metrics
from services.domain import PushFallback, TenantSettingsRecord, Webhooks
from services.registry.tenant_settings_postgres import PostgresTenantSettingsStore
from services.secrets_at_rest import PREFIX, SecretBox
from tests.postgres import clean_pool

P8 = "-----BEGIN PRIVATE KEY-----\nMIGTAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----"
ACCOUNT = '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----..."}'
VAPID = "vapid-private-key-base64url"
HOOK = "whsec_0123456789abcdef"
SECRETS = (P8, ACCOUNT, VAPID, HOOK)


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def settings(tenant: str = "acme") -> TenantSettingsRecord:
    return TenantSettingsRecord(
        tenant,
        push_fallback=PushFallback(
            enabled=True,
            fcm_project_id="demo",
            fcm_service_account_json=ACCOUNT,
            apns_team_id="TEAM",
            apns_key_id="KEY",
            apns_private_key_p8=P8,
            vapid_private_key=VAPID,
            vapid_public_key="public-stays-plain",
        ),
        webhooks=Webhooks(enabled=True, url="https://hooks.example/herald", secret=HOOK),
    )


def undecryptable() -> float:
    return metrics.SECRETS_UNDECRYPTABLE._value.get()


def test_the_setting_is_checked_and_never_echoes_a_key() -> None:
    good = key()
    assert SecretBox.from_setting("").encrypting is False
    assert SecretBox.from_setting(f"k1:{good}, k0:{key()}").encrypting is True
    for bad, message in (
        (f"{good}", "takes <id>:<base64 key>"),
        (f"k 1:{good}", "takes <id>:<base64 key>"),
        ("k1:not base64!", "key 'k1' is not base64"),
        (f"k1:{base64.b64encode(os.urandom(16)).decode()}", "must be 32 bytes"),
        (f"k1:{good},k1:{key()}", "names key 'k1' twice"),
    ):
        with pytest.raises(ValueError, match=message) as raised:
            SecretBox.from_setting(bad)
        assert good not in str(raised.value)


def test_a_sealed_value_opens_only_for_its_tenant_and_field() -> None:
    box = SecretBox.from_setting(f"k1:{key()}")
    sealed = box.seal(HOOK, "acme", "webhooks.secret")
    assert sealed.startswith(f"{PREFIX}k1:")
    assert HOOK not in sealed
    assert box.seal(HOOK, "acme", "webhooks.secret") != sealed  # a fresh nonce each time
    assert box.open(sealed, "acme", "webhooks.secret") == HOOK
    before = undecryptable()
    # Copied to another tenant or field, or altered: it stays sealed (useless), and is counted.
    assert box.open(sealed, "globex", "webhooks.secret") == sealed
    assert box.open(sealed, "acme", "push_fallback.vapid_private_key") == sealed
    altered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    assert box.open(altered, "acme", "webhooks.secret") == altered
    assert undecryptable() == before + 3
    # Plain values (stored before encryption was on) read as they are; empty stays empty.
    assert box.open(HOOK, "acme", "webhooks.secret") == HOOK
    assert box.seal("", "acme", "webhooks.secret") == ""
    # Without keys, values are stored as given.
    assert SecretBox().seal(HOOK, "acme", "webhooks.secret") == HOOK


@pytest.mark.asyncio
async def test_postgres_stores_no_credential_in_the_clear_and_reads_them_back() -> None:
    box = SecretBox.from_setting(f"k1:{key()}")
    async with clean_pool() as pool:
        store = PostgresTenantSettingsStore(pool, box)
        await store.put(settings())
        raw = await pool.fetchval(
            "SELECT settings::text FROM herald_tenant_settings WHERE tenant_id = 'acme'"
        )
        for secret in SECRETS:
            assert secret not in raw
        assert raw.count(PREFIX) == 4
        assert "public-stays-plain" in raw
        assert "hooks.example" in raw
        stored = await store.get("acme")
        assert stored is not None
        assert stored.push_fallback == settings().push_fallback
        assert stored.webhooks == settings().webhooks
        [listed] = await store.list()
        assert listed.webhooks == settings().webhooks


async def _read_and_write_back(pool: asyncpg.Pool, keys: str) -> tuple[TenantSettingsRecord, str]:
    """The tenant's settings read with `keys` (HERALD_SECRETS_KEYS) and written back; and the
    stored JSON after the write."""
    store = PostgresTenantSettingsStore(pool, SecretBox.from_setting(keys))
    read = await store.get("acme")
    assert read is not None
    await store.put(read)
    raw: str = await pool.fetchval("SELECT settings::text FROM herald_tenant_settings")
    return read, raw


@pytest.mark.asyncio
async def test_keys_rotate_and_plain_values_are_sealed_at_the_next_write() -> None:
    old, new = key(), key()
    async with clean_pool() as pool:
        await PostgresTenantSettingsStore(pool).put(settings())  # before encryption was on
        legacy, raw = await _read_and_write_back(pool, f"k1:{old}")
        assert legacy.webhooks == settings().webhooks
        assert raw.count(f"{PREFIX}k1:") == 4
        assert HOOK not in raw
        # The new key first, the old one kept: old values open, new writes use the new key.
        read, raw = await _read_and_write_back(pool, f"k2:{new},k1:{old}")
        assert read.push_fallback == settings().push_fallback
        assert raw.count(f"{PREFIX}k2:") == 4
        assert f"{PREFIX}k1:" not in raw


@pytest.mark.asyncio
async def test_a_missing_key_loses_nothing_and_leaks_nothing_usable() -> None:
    k1 = key()
    async with clean_pool() as pool:
        sealing = PostgresTenantSettingsStore(pool, SecretBox.from_setting(f"k1:{k1}"))
        await sealing.put(settings())
        sealed_raw = await pool.fetchval("SELECT settings::text FROM herald_tenant_settings")
        # A node whose HERALD_SECRETS_KEYS lacks k1 (or is unset): the settings still read (every
        # send consults them), the secrets stay sealed, and each failure is counted.
        for box in (SecretBox.from_setting(f"k9:{key()}"), SecretBox()):
            before = undecryptable()
            lacking = PostgresTenantSettingsStore(pool, box)
            read = await lacking.get("acme")
            assert read is not None
            assert read.push_fallback is not None
            assert read.webhooks is not None
            assert read.webhooks.secret.startswith(PREFIX)
            assert read.push_fallback.apns_private_key_p8.startswith(PREFIX)
            assert read.push_fallback.apns_team_id == "TEAM"
            assert undecryptable() == before + 4
            # A settings change made meanwhile writes them back as they were.
            await lacking.put(read)
            raw = await pool.fetchval("SELECT settings::text FROM herald_tenant_settings")
            assert raw == sealed_raw
        # With k1 back, everything opens again.
        restored = await sealing.get("acme")
        assert restored is not None
        assert restored.webhooks == settings().webhooks
