"""The providers of each tenant, built from its PushFallback settings and kept while they last."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

from services.domain import PushFallback
from services.push.apns import APNS_PRODUCTION_URL, APNS_SANDBOX_URL, ApnsProvider
from services.push.fcm import FCM_BASE_URL, FcmProvider
from services.push.provider import PushProvider
from services.push.targets import PushKind
from services.push.webpush import WebPushProvider


@dataclass(frozen=True, slots=True)
class ProviderEndpoints:
    """Where the providers are (the real ones by default; tests point them at local servers)."""

    fcm_base_url: str = FCM_BASE_URL
    # Empty: Google's token endpoint (never the service account's token_uri: services/push/fcm.py).
    fcm_token_url: str = ""
    # Empty: Apple's production or sandbox host, as the tenant's settings say.
    apns_base_url: str = ""
    # HTTP/2 without TLS (prior knowledge), for a local APNs stand-in only.
    apns_cleartext_h2: bool = False
    # Web Push endpoints on loopback or private addresses (local test servers only).
    webpush_allow_private: bool = False


class ProviderSet:
    def __init__(self, endpoints: ProviderEndpoints | None = None) -> None:
        self._endpoints = endpoints or ProviderEndpoints()
        # (tenant, kind) -> (the settings it was built from, the provider)
        self._built: dict[tuple[str, PushKind], tuple[PushFallback, PushProvider | None]] = {}

    async def get(self, tenant: str, settings: PushFallback, kind: PushKind) -> PushProvider | None:
        """The tenant's provider for `kind`, None when its settings configure none; built anew
        (the old one closed) when the settings changed."""
        built = self._built.get((tenant, kind))
        if built is not None and built[0] == settings:
            return built[1]
        if built is not None and built[1] is not None:
            await built[1].aclose()
        provider = self._build(settings, kind)
        self._built[(tenant, kind)] = (settings, provider)
        return provider

    def _build(self, s: PushFallback, kind: PushKind) -> PushProvider | None:
        e = self._endpoints
        if kind is PushKind.FCM and s.fcm_service_account_json and s.fcm_project_id:
            return FcmProvider(
                s.fcm_project_id,
                json.loads(s.fcm_service_account_json),
                base_url=e.fcm_base_url,
                token_url=e.fcm_token_url or None,
            )
        if kind is PushKind.APNS and s.apns_private_key_p8:
            default = APNS_PRODUCTION_URL if s.apns_production else APNS_SANDBOX_URL
            return ApnsProvider(
                team_id=s.apns_team_id,
                key_id=s.apns_key_id,
                private_key_p8=s.apns_private_key_p8,
                topic=s.apns_topic,
                base_url=e.apns_base_url or default,
                client=httpx.AsyncClient(http1=False, http2=True, timeout=10.0)
                if e.apns_cleartext_h2
                else None,
            )
        if kind is PushKind.WEBPUSH and s.vapid_private_key:
            return WebPushProvider(
                vapid_private_key=s.vapid_private_key,
                subject=s.vapid_subject,
                allow_private=e.webpush_allow_private,
            )
        return None

    async def aclose(self) -> None:
        for _, provider in self._built.values():
            if provider is not None:
                await provider.aclose()
        self._built.clear()
