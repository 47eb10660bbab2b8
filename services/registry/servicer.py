"""RegistryService over gRPC: decode, call RegistryCore, encode; admin calls are audited."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from grpc import aio

from herald.v1 import registry_pb2
from services.audit import admin_action, bounded
from services.auth import SCOPE_NODE, SCOPE_SEND, current_principal
from services.bounds import MAX_ID_LEN, check_id, check_length, quote
from services.clock import Clock, SystemClock
from services.config import RateLimitSettings
from services.domain import TenantSettingsRecord
from services.errors import AlreadyExists, FailedPrecondition, InvalidArgument, PermissionDenied
from services.model import (
    keep_push_secrets,
    preferences_from_proto,
    preferences_to_proto,
    rate_limits_to_proto,
    seconds,
    session_from_proto,
    session_to_proto,
    template_from_proto,
    template_to_proto,
    tenant_settings_from_proto,
    tenant_settings_to_proto,
    timestamp,
)
from services.preferences.gate import PreferenceGate
from services.push.registration import PushRegistration
from services.push.targets import PushKind, PushTargetRecord
from services.ratelimit.admission import as_overrides, effective_limits, node_limits
from services.registry import segments
from services.registry.core import RegistryCore
from services.registry.segments import SegmentStore
from services.registry.segments_memory import MemorySegmentStore
from services.registry.tenant_settings import changed_fields, empty
from services.webhooks import settings as webhook_settings
from services.webhooks.admin import ParkedWebhooks
from services.webhooks.parked import ParkedWebhookStore
from services.webhooks.parked_memory import MemoryParkedWebhookStore

Context = aio.ServicerContext[Any, Any]


def _tenant(requested: str) -> str:
    """The tenant a request acts on: the token's own unless named (and allowed)."""
    check_length(requested, MAX_ID_LEN, "tenant_id")
    principal = current_principal()
    tenant = requested or principal.tenant
    if tenant == "*":
        raise InvalidArgument("tenant_id must name one tenant")
    principal.require_tenant(tenant)
    return tenant


def _expected(
    request: registry_pb2.PutTenantSettingsRequest | registry_pb2.DeleteTenantSettingsRequest,
) -> int | None:
    return request.expected_version if request.HasField("expected_version") else None


def _push_user(requested: str, what: str = "registers push targets") -> str:
    """The user a push-target (or preference) call acts on: a user token's own (user_id empty
    or its `sub`), any user of the tenant for a backend token (scope `send`), which must name
    one."""
    check_length(requested, MAX_ID_LEN, "user_id")
    principal = current_principal()
    if SCOPE_SEND in principal.scopes or SCOPE_NODE in principal.scopes:
        if not requested:
            raise InvalidArgument("user_id is required with a backend token")
        return requested
    if requested and requested != principal.subject:
        raise PermissionDenied(f"a user token {what} for its own user only")
    return principal.subject


def _target_to_proto(target: PushTargetRecord) -> registry_pb2.PushTarget:
    message = registry_pb2.PushTarget(
        target_id=target.target_id,
        user_id=target.user_id,
        kind=registry_pb2.PushKind.Name(target.kind.value),
    )
    if target.kind is PushKind.WEBPUSH:
        message.web_push.endpoint = target.token
        message.web_push.p256dh = target.p256dh
        message.web_push.auth = target.auth
    else:
        message.token = target.token
    message.registered_at.CopyFrom(timestamp(target.registered_at))
    return message


def _with_secrets() -> bool:
    """Only other Herald nodes (node tokens) read the push secrets: they send the pushes."""
    return SCOPE_NODE in current_principal().scopes


class RegistryServicer:
    def __init__(
        self,
        core: RegistryCore,
        rate_limits: RateLimitSettings | None = None,
        push: PushRegistration | None = None,
        segment_store: SegmentStore | None = None,
        clock: Clock | None = None,
        preferences: PreferenceGate | None = None,
        parked_webhooks: ParkedWebhookStore | None = None,
    ) -> None:
        self._core = core
        self._preferences = preferences
        self._push = push
        self._segments = segment_store or MemorySegmentStore()
        self._clock = clock or SystemClock()
        self._parked = ParkedWebhooks(parked_webhooks or MemoryParkedWebhookStore(), self._clock)
        # This node's own limits: what GetTenantSettings fills the unset fields with.
        self._rate_limits = rate_limits or RateLimitSettings()

    async def RegisterSession(
        self, request: registry_pb2.RegisterSessionRequest, context: Context
    ) -> registry_pb2.RegisterSessionResponse:
        session = session_from_proto(request.session)
        session.tenant = _tenant(session.tenant)
        session.connected_at = seconds(request.session.connected_at)
        await self._core.register(session)
        return registry_pb2.RegisterSessionResponse(lease_seconds=self._core.lease_seconds)

    async def HeartbeatSession(
        self, request: registry_pb2.HeartbeatSessionRequest, context: Context
    ) -> registry_pb2.HeartbeatSessionResponse:
        unknown = await self._core.heartbeat(_tenant(request.tenant_id), list(request.session_ids))
        return registry_pb2.HeartbeatSessionResponse(unknown_session_ids=unknown)

    async def UnregisterSession(
        self, request: registry_pb2.UnregisterSessionRequest, context: Context
    ) -> registry_pb2.UnregisterSessionResponse:
        await self._core.unregister(_tenant(request.tenant_id), request.session_id)
        return registry_pb2.UnregisterSessionResponse()

    async def GetPresence(
        self, request: registry_pb2.GetPresenceRequest, context: Context
    ) -> registry_pb2.GetPresenceResponse:
        views = await self._core.presence(_tenant(request.tenant_id), list(request.user_ids))
        return registry_pb2.GetPresenceResponse(
            users=[
                registry_pb2.UserPresence(
                    user_id=v.user_id,
                    state=int(v.state),  # type: ignore[arg-type]
                    session_count=v.sessions,
                    since=timestamp(v.since),
                )
                for v in views
            ]
        )

    async def ListSessions(
        self, request: registry_pb2.ListSessionsRequest, context: Context
    ) -> registry_pb2.ListSessionsResponse:
        sessions = await self._core.sessions(_tenant(request.tenant_id), request.user_id)
        return registry_pb2.ListSessionsResponse(sessions=[session_to_proto(s) for s in sessions])

    async def Disconnect(
        self, request: registry_pb2.DisconnectRequest, context: Context
    ) -> registry_pb2.DisconnectResponse:
        target = (
            f"session:{request.session_id}" if request.session_id else f"user:{request.user_id}"
        )
        async with admin_action(
            "session.disconnect", context, target=target, target_tenant=request.tenant_id
        ) as details:
            details["reason"] = bounded(request.reason)
            closed = await self._core.disconnect(
                _tenant(request.tenant_id), request.session_id, request.user_id, request.reason
            )
            details["disconnected"] = closed
        return registry_pb2.DisconnectResponse(disconnected=closed)

    async def JoinChannel(
        self, request: registry_pb2.JoinChannelRequest, context: Context
    ) -> registry_pb2.JoinChannelResponse:
        async with admin_action(
            "channel.join",
            context,
            target=f"session:{request.session_id}",
            target_tenant=request.tenant_id,
        ) as details:
            details["channel"] = bounded(request.channel)
            channels = await self._core.change_channels(
                _tenant(request.tenant_id), request.session_id, [request.channel], []
            )
        return registry_pb2.JoinChannelResponse(channels=channels)

    async def LeaveChannel(
        self, request: registry_pb2.LeaveChannelRequest, context: Context
    ) -> registry_pb2.LeaveChannelResponse:
        async with admin_action(
            "channel.leave",
            context,
            target=f"session:{request.session_id}",
            target_tenant=request.tenant_id,
        ) as details:
            details["channel"] = bounded(request.channel)
            channels = await self._core.change_channels(
                _tenant(request.tenant_id), request.session_id, [], [request.channel]
            )
        return registry_pb2.LeaveChannelResponse(channels=channels)

    async def PutTemplate(
        self, request: registry_pb2.PutTemplateRequest, context: Context
    ) -> registry_pb2.PutTemplateResponse:
        # The template's texts are content: the record names the template, never its text.
        async with admin_action(
            "template.put",
            context,
            target=f"template:{request.template.template_id}",
            target_tenant=request.tenant_id,
        ) as details:
            if not request.HasField("template"):
                raise InvalidArgument("PutTemplateRequest.template is required")
            stored = await self._core.put_template(
                _tenant(request.tenant_id), template_from_proto(request.template)
            )
            details["version"] = stored.version
        return registry_pb2.PutTemplateResponse(template=template_to_proto(stored))

    async def GetTemplate(
        self, request: registry_pb2.GetTemplateRequest, context: Context
    ) -> registry_pb2.GetTemplateResponse:
        found = await self._core.template(
            _tenant(request.tenant_id), request.template_id, request.version
        )
        return registry_pb2.GetTemplateResponse(template=template_to_proto(found))

    async def ListTemplates(
        self, request: registry_pb2.ListTemplatesRequest, context: Context
    ) -> registry_pb2.ListTemplatesResponse:
        templates = await self._core.templates(_tenant(request.tenant_id))
        return registry_pb2.ListTemplatesResponse(
            templates=[template_to_proto(t) for t in templates]
        )

    async def DeleteTemplate(
        self, request: registry_pb2.DeleteTemplateRequest, context: Context
    ) -> registry_pb2.DeleteTemplateResponse:
        async with admin_action(
            "template.delete",
            context,
            target=f"template:{request.template_id}",
            target_tenant=request.tenant_id,
        ) as details:
            deleted = await self._core.delete_template(
                _tenant(request.tenant_id), request.template_id
            )
            details["deleted_versions"] = deleted
        return registry_pb2.DeleteTemplateResponse(deleted_versions=deleted)

    async def GetTenantSettings(
        self, request: registry_pb2.GetTenantSettingsRequest, context: Context
    ) -> registry_pb2.GetTenantSettingsResponse:
        tenant = _tenant(request.tenant_id)
        stored = await self._core.get_tenant_settings(tenant)
        limits = effective_limits(node_limits(self._rate_limits, tenant), stored.rate_limits)
        return registry_pb2.GetTenantSettingsResponse(
            settings=tenant_settings_to_proto(stored, _with_secrets()),
            effective_rate_limits=rate_limits_to_proto(as_overrides(limits)),
        )

    async def PutTenantSettings(
        self, request: registry_pb2.PutTenantSettingsRequest, context: Context
    ) -> registry_pb2.PutTenantSettingsResponse:
        async with admin_action(
            "tenant_settings.put",
            context,
            target=f"tenant:{request.tenant_id or current_principal().tenant}",
            target_tenant=request.tenant_id,
        ) as details:
            tenant = _tenant(request.tenant_id)
            if request.settings.tenant_id not in ("", tenant):
                raise InvalidArgument("settings.tenant_id must be empty or the request's tenant_id")
            settings = tenant_settings_from_proto(tenant, request.settings)
            if settings.push_fallback is not None:
                before = await self._core.get_tenant_settings(tenant)
                settings = dataclasses.replace(
                    settings,
                    push_fallback=keep_push_secrets(
                        request.settings.push_fallback,
                        settings.push_fallback,
                        before.push_fallback,
                    ),
                )
            if settings.webhooks is not None:
                before = await self._core.get_tenant_settings(tenant)
                settings = dataclasses.replace(
                    settings,
                    webhooks=webhook_settings.keep_secret(
                        request.settings.webhooks, settings.webhooks, before.webhooks
                    ),
                )
            stored = await self._put(details, tenant, request, settings)
        return registry_pb2.PutTenantSettingsResponse(settings=tenant_settings_to_proto(stored))

    async def DeleteTenantSettings(
        self, request: registry_pb2.DeleteTenantSettingsRequest, context: Context
    ) -> registry_pb2.DeleteTenantSettingsResponse:
        async with admin_action(
            "tenant_settings.reset",
            context,
            target=f"tenant:{request.tenant_id or current_principal().tenant}",
            target_tenant=request.tenant_id,
        ) as details:
            tenant = _tenant(request.tenant_id)
            stored = await self._put(details, tenant, request, empty(tenant))
        return registry_pb2.DeleteTenantSettingsResponse(settings=tenant_settings_to_proto(stored))

    async def _put(
        self,
        details: dict[str, object],
        tenant: str,
        request: registry_pb2.PutTenantSettingsRequest | registry_pb2.DeleteTenantSettingsRequest,
        settings: TenantSettingsRecord,
    ) -> TenantSettingsRecord:
        """Stores `settings`; the audit record gets the versions and the names of the fields
        that changed, never their values."""
        expected = _expected(request)
        if expected is not None:
            details["expected_version"] = expected
        before, stored = await self._core.put_tenant_settings(
            settings, expected, current_principal().subject
        )
        details["previous_version"] = before.version
        details["version"] = stored.version
        details["changed"] = changed_fields(before, stored)
        return stored

    async def ListTenantSettings(
        self, request: registry_pb2.ListTenantSettingsRequest, context: Context
    ) -> registry_pb2.ListTenantSettingsResponse:
        page, next_token = await self._core.list_tenant_settings(
            request.page_token, request.page_size
        )
        return registry_pb2.ListTenantSettingsResponse(
            settings=[tenant_settings_to_proto(s, _with_secrets()) for s in page],
            next_page_token=next_token,
        )

    def _registration(self) -> PushRegistration:
        if self._push is None:
            raise FailedPrecondition("push targets are not served by this registry node")
        return self._push

    async def RegisterPushTarget(
        self, request: registry_pb2.RegisterPushTargetRequest, context: Context
    ) -> registry_pb2.RegisterPushTargetResponse:
        tenant = current_principal().tenant
        user = _push_user(request.user_id)
        web = request.web_push
        stored = await self._registration().register(
            tenant, user, request.kind, request.token, web.endpoint, web.p256dh, web.auth
        )
        return registry_pb2.RegisterPushTargetResponse(target=_target_to_proto(stored))

    async def UnregisterPushTarget(
        self, request: registry_pb2.UnregisterPushTargetRequest, context: Context
    ) -> registry_pb2.UnregisterPushTargetResponse:
        tenant = current_principal().tenant
        await self._registration().unregister(
            tenant, _push_user(request.user_id), request.target_id
        )
        return registry_pb2.UnregisterPushTargetResponse()

    async def ListPushTargets(
        self, request: registry_pb2.ListPushTargetsRequest, context: Context
    ) -> registry_pb2.ListPushTargetsResponse:
        tenant = current_principal().tenant
        found = await self._registration().targets(tenant, _push_user(request.user_id))
        return registry_pb2.ListPushTargetsResponse(targets=[_target_to_proto(t) for t in found])

    async def CreateSegment(
        self, request: registry_pb2.CreateSegmentRequest, context: Context
    ) -> registry_pb2.CreateSegmentResponse:
        tenant = _tenant(request.tenant_id)
        _check_segment_name(request.name)
        created_at = self._clock.now()
        if not await self._segments.create(tenant, request.name, created_at):
            raise AlreadyExists(
                f"segment {quote(request.name)} exists: add members to it (AddSegmentMembers) "
                "or delete it first"
            )
        return registry_pb2.CreateSegmentResponse(
            segment=registry_pb2.Segment(
                name=request.name, member_count=0, created_at=timestamp(created_at)
            )
        )

    async def AddSegmentMembers(
        self, request: registry_pb2.AddSegmentMembersRequest, context: Context
    ) -> registry_pb2.AddSegmentMembersResponse:
        tenant = _tenant(request.tenant_id)
        _check_segment_name(request.name)
        _check_batch(request.user_ids)
        added = await self._segments.add(tenant, request.name, list(request.user_ids))
        count = next(s.members for s in await self._segments.list(tenant) if s.name == request.name)
        return registry_pb2.AddSegmentMembersResponse(added=added, member_count=count)

    async def RemoveSegmentMembers(
        self, request: registry_pb2.RemoveSegmentMembersRequest, context: Context
    ) -> registry_pb2.RemoveSegmentMembersResponse:
        tenant = _tenant(request.tenant_id)
        _check_segment_name(request.name)
        _check_batch(request.user_ids)
        removed = await self._segments.remove(tenant, request.name, list(request.user_ids))
        return registry_pb2.RemoveSegmentMembersResponse(removed=removed)

    async def ListSegmentMembers(
        self, request: registry_pb2.ListSegmentMembersRequest, context: Context
    ) -> registry_pb2.ListSegmentMembersResponse:
        tenant = _tenant(request.tenant_id)
        _check_segment_name(request.name)
        if request.page_size > segments.MAX_PAGE:
            raise InvalidArgument(f"page_size must be at most {segments.MAX_PAGE}")
        size = request.page_size or segments.DEFAULT_PAGE
        # The page token is the last user id of the previous page.
        check_length(request.page_token, MAX_ID_LEN, "page_token")
        page = await self._segments.members(tenant, request.name, request.page_token, size)
        token = page[-1] if len(page) == size else ""
        return registry_pb2.ListSegmentMembersResponse(user_ids=page, next_page_token=token)

    async def ListSegments(
        self, request: registry_pb2.ListSegmentsRequest, context: Context
    ) -> registry_pb2.ListSegmentsResponse:
        found = await self._segments.list(_tenant(request.tenant_id))
        return registry_pb2.ListSegmentsResponse(
            segments=[
                registry_pb2.Segment(
                    name=s.name, member_count=s.members, created_at=timestamp(s.created_at)
                )
                for s in found
            ]
        )

    async def DeleteSegment(
        self, request: registry_pb2.DeleteSegmentRequest, context: Context
    ) -> registry_pb2.DeleteSegmentResponse:
        tenant = _tenant(request.tenant_id)
        _check_segment_name(request.name)
        if not await self._segments.delete(tenant, request.name):
            raise segments.SegmentNotFound(tenant, request.name)
        return registry_pb2.DeleteSegmentResponse()

    def _preference_gate(self) -> PreferenceGate:
        if self._preferences is None:
            raise FailedPrecondition("preferences are not served by this registry node")
        return self._preferences

    async def GetPreferences(
        self, request: registry_pb2.GetPreferencesRequest, context: Context
    ) -> registry_pb2.GetPreferencesResponse:
        tenant = current_principal().tenant
        user = _push_user(request.user_id, "reads preferences")
        check_id(user, "user_id")
        found = await self._preference_gate().get(tenant, user)
        return registry_pb2.GetPreferencesResponse(preferences=preferences_to_proto(found))

    async def PutPreferences(
        self, request: registry_pb2.PutPreferencesRequest, context: Context
    ) -> registry_pb2.PutPreferencesResponse:
        tenant = current_principal().tenant
        user = _push_user(request.user_id, "stores preferences")
        check_id(user, "user_id")
        if request.preferences.user_id not in ("", user):
            raise InvalidArgument("preferences.user_id must be empty or the request's user_id")
        preferences = preferences_from_proto(user, request.preferences)
        stored = await self._preference_gate().put(tenant, preferences)
        return registry_pb2.PutPreferencesResponse(preferences=preferences_to_proto(stored))

    async def ListParkedWebhooks(
        self, request: registry_pb2.ListParkedWebhooksRequest, context: Context
    ) -> registry_pb2.ListParkedWebhooksResponse:
        return await self._parked.list(_tenant(request.tenant_id), request)

    async def ReplayWebhooks(
        self, request: registry_pb2.ReplayWebhooksRequest, context: Context
    ) -> registry_pb2.ReplayWebhooksResponse:
        async with admin_action(
            "webhooks.replay",
            context,
            target="webhooks:" + ("all" if request.all else f"{len(request.batch_ids)} batches"),
            target_tenant=request.tenant_id,
        ) as details:
            replayed = await self._parked.replay(_tenant(request.tenant_id), request)
            details["replayed"] = replayed
        return registry_pb2.ReplayWebhooksResponse(replayed=replayed)

    async def DeleteParkedWebhooks(
        self, request: registry_pb2.DeleteParkedWebhooksRequest, context: Context
    ) -> registry_pb2.DeleteParkedWebhooksResponse:
        async with admin_action(
            "webhooks.delete",
            context,
            target="webhooks:" + ("all" if request.all else f"{len(request.batch_ids)} batches"),
            target_tenant=request.tenant_id,
        ) as details:
            deleted = await self._parked.delete(_tenant(request.tenant_id), request)
            details["deleted"] = deleted
        return registry_pb2.DeleteParkedWebhooksResponse(deleted=deleted)


def _check_segment_name(name: str) -> None:
    check_id(name, "name", segments.MAX_NAME_LEN)


def _check_batch(user_ids: Sequence[str]) -> None:
    if not user_ids:
        raise InvalidArgument("user_ids must list at least one user id")
    if len(user_ids) > segments.MAX_BATCH:
        raise InvalidArgument(
            f"user_ids lists {len(user_ids)} users; the limit is {segments.MAX_BATCH} per call "
            "(send the rest in further calls)"
        )
    for user_id in user_ids:
        check_id(user_id, "every user id in user_ids")
