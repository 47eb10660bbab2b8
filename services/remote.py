"""gRPC implementations of the ports, for the split topology (`herald serve ...`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import grpc
from grpc import aio

from herald.node.v1 import node_pb2, node_pb2_grpc
from herald.v1 import registry_pb2, registry_pb2_grpc
from services.domain import (
    Accepted,
    NotificationRecord,
    SessionInfo,
    TemplateRecord,
    TenantSettingsRecord,
)
from services.errors import HeraldError, InvalidArgument, ResourceExhausted, Unavailable
from services.model import (
    session_to_proto,
    status_from_proto,
    template_from_proto,
    tenant_settings_from_response,
)

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 25_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
_CALL_TIMEOUT_S = 10.0


class NodeCredentials:
    """How a node authenticates to the others: a node token in the metadata (minted again well
    before it expires) and, with TLS, the channel credentials (the CA to verify the peer, the
    client certificate to present)."""

    def __init__(
        self,
        mint: Callable[[], str],
        ttl_s: float = 3600.0,
        *,
        tls: grpc.ChannelCredentials | None = None,
        interceptors: Sequence[aio.ClientInterceptor] = (),
    ) -> None:
        self._mint = mint
        # With tracing on, CLIENT spans that carry the trace to the other node.
        self._interceptors = list(interceptors) or None
        self._ttl_s = ttl_s
        self._tls = tls
        self._token = ""
        self._minted_at = 0.0

    def channel(self, address: str) -> aio.Channel:
        if self._tls is None:
            return aio.insecure_channel(
                address, options=CHANNEL_OPTIONS, interceptors=self._interceptors
            )
        return aio.secure_channel(
            address, self._tls, options=CHANNEL_OPTIONS, interceptors=self._interceptors
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if not self._token or time.monotonic() - self._minted_at > self._ttl_s / 2:
            self._token = self._mint()
            self._minted_at = time.monotonic()
        return (("authorization", f"Bearer {self._token}"),)


def _translate(exc: aio.AioRpcError, what: str) -> HeraldError:
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(exc.details() or what)
    return Unavailable(f"{what} failed: {exc.code().name} {exc.details() or ''}".strip())


class RegistryClient:
    """RegistryPort over gRPC."""

    def __init__(self, address: str, credentials: NodeCredentials) -> None:
        self._channel = credentials.channel(address)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._credentials = credentials

    async def register(self, session: SessionInfo) -> None:
        try:
            await self._stub.RegisterSession(
                registry_pb2.RegisterSessionRequest(session=session_to_proto(session)),
                metadata=self._credentials.metadata(),
                timeout=_CALL_TIMEOUT_S,
            )
        except aio.AioRpcError as exc:
            raise _translate(exc, "registering the session") from None

    async def heartbeat(self, tenant: str, session_ids: list[str]) -> list[str]:
        response = await self._stub.HeartbeatSession(
            registry_pb2.HeartbeatSessionRequest(tenant_id=tenant, session_ids=session_ids),
            metadata=self._credentials.metadata(),
            timeout=_CALL_TIMEOUT_S,
        )
        return list(response.unknown_session_ids)

    async def unregister(self, tenant: str, session_id: str) -> None:
        await self._stub.UnregisterSession(
            registry_pb2.UnregisterSessionRequest(tenant_id=tenant, session_id=session_id),
            metadata=self._credentials.metadata(),
            timeout=_CALL_TIMEOUT_S,
        )

    async def get_template(
        self, tenant: str, template_id: str, version: int
    ) -> TemplateRecord | None:
        try:
            response = await self._stub.GetTemplate(
                registry_pb2.GetTemplateRequest(
                    tenant_id=tenant, template_id=template_id, version=version
                ),
                metadata=self._credentials.metadata(),
                timeout=_CALL_TIMEOUT_S,
            )
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise _translate(exc, "reading the template from the registry") from None
        return template_from_proto(response.template)

    async def tenant_settings(self, tenant: str) -> TenantSettingsRecord | None:
        """The tenant's stored settings (a TenantSettingsSource), None when there are none."""
        try:
            response = await self._stub.GetTenantSettings(
                registry_pb2.GetTenantSettingsRequest(tenant_id=tenant),
                metadata=self._credentials.metadata(),
                timeout=_CALL_TIMEOUT_S,
            )
        except aio.AioRpcError as exc:
            raise _translate(exc, "reading the tenant settings from the registry") from None
        settings = tenant_settings_from_response(response.settings)
        return settings if settings.version else None

    async def close(self) -> None:
        await self._channel.close(None)


class NodeClient:
    """DeliveryPort and NodePort over gRPC: the calls ingest and the registry make to a node."""

    def __init__(self, address: str, credentials: NodeCredentials) -> None:
        self._channel = credentials.channel(address)
        self._stub = node_pb2_grpc.NodeServiceStub(self._channel)
        self._credentials = credentials

    async def dispatch(self, notifications: list[Accepted]) -> list[int]:
        request = node_pb2.DispatchRequest()
        for accepted in notifications:
            request.notifications.add().MergeFromString(accepted.encoded)
        try:
            response = await self._stub.Dispatch(
                request, metadata=self._credentials.metadata(), timeout=_CALL_TIMEOUT_S
            )
        except aio.AioRpcError as exc:
            raise _translate(exc, "handing the notifications to the stream node") from None
        return list(response.recipient_counts)

    async def status(self, tenant: str, notification_id: str) -> NotificationRecord | None:
        try:
            response = await self._stub.GetDeliveryStatus(
                node_pb2.GetDeliveryStatusRequest(
                    tenant_id=tenant, notification_id=notification_id
                ),
                metadata=self._credentials.metadata(),
                timeout=_CALL_TIMEOUT_S,
            )
        except aio.AioRpcError as exc:
            raise _translate(exc, "reading the status from the stream node") from None
        return status_from_proto(tenant, response.status) if response.found else None

    async def close_sessions(
        self, tenant: str, session_ids: list[str], user_id: str, reason: str
    ) -> int:
        try:
            response = await self._stub.CloseSessions(
                node_pb2.CloseSessionsRequest(
                    tenant_id=tenant, session_ids=session_ids, user_id=user_id, reason=reason
                ),
                metadata=self._credentials.metadata(),
                timeout=_CALL_TIMEOUT_S,
            )
        except aio.AioRpcError as exc:
            raise _translate(exc, "asking the stream node to close sessions") from None
        return int(response.closed)

    async def change_channels(
        self, tenant: str, session_id: str, join: list[str], leave: list[str]
    ) -> list[str] | None:
        try:
            response = await self._stub.ChangeChannels(
                node_pb2.ChangeChannelsRequest(
                    tenant_id=tenant, session_id=session_id, join=join, leave=leave
                ),
                metadata=self._credentials.metadata(),
                timeout=_CALL_TIMEOUT_S,
            )
        except aio.AioRpcError as exc:
            if exc.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ):
                raise (
                    InvalidArgument
                    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT
                    else ResourceExhausted
                )(exc.details() or "") from None
            raise _translate(exc, "asking the stream node to change channels") from None
        return list(response.channels) if response.found else None

    async def close(self) -> None:
        await self._channel.close(None)
