"""An async client for Herald: send, read status, and subscribe with automatic reconnects.

    async with HeraldClient("127.0.0.1:50051", token=user_token) as client:
        async for received in client.subscribe(channels=["news"]):
            print(received.notification.content.title)   # acked in the background after this

A subscription reconnects on its own (exponential backoff with full jitter), resumes every log
from the last `resume_cursor` it saw, and drops duplicates by notification id, so the loop body
sees each notification once even though delivery is at-least-once.

With `auto_ack` (the default), what the loop body has handled is acked in the background: every
`ack_interval` seconds (default 5 s with +-20 % jitter, well inside the server's 30 s ack
timeout; Kafka's consumer commits its offsets on the same cadence), one ack with `up_to` the
subscription's resume cursors, and once more when the stream ends. A whole batch counts as
handled once the loop body has had each of its notifications, so a notification is never acked
before the app saw it, and acking costs one small message per interval however many
notifications arrive. A loop that stops mid-batch (`break`, cancelled) has the ones of the batch
it came back from acked by id as it ends, not the one it stopped on. With
`auto_ack=False`, call `received.ack()` (or `client.ack`) when the app has handled it; unacked
notifications come back after the server's ack timeout and on the next connect.

Acks travel on one `AckStream` call per client, opened on first use and reopened after an error
or when the server ends it (its token expired, its shutdown): a message on an open stream costs
the server a fraction of a unary call. Against a server without `AckStream` (UNIMPLEMENTED), or with
`ack_stream=False`, the client sends unary `Ack` calls instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from herald.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    notification_pb2,
    registry_pb2,
    registry_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
)
from services.chain.opening import Rejected
from services.client_chain import ClientChain

log = logging.getLogger(__name__)

# Errors that reconnecting cannot fix: they are raised to the caller.
FATAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def rate_limit_delay(exc: aio.AioRpcError) -> float | None:
    """The seconds a rate-limited call (RESOURCE_EXHAUSTED) asks to wait before retrying, from
    its `retry-after` trailer; None for any other error."""
    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    # grpc-stubs types the items as objects; grpc.aio gives (key, value) pairs.
    items: Any = exc.trailing_metadata() or ()
    for key, value in items:
        if key == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 25_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: min(cap, base * 2**n) with full jitter."""

    base_s: float = 0.2
    cap_s: float = 30.0

    def delay(self, failures: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.cap_s, self.base_s * (2 ** min(failures, 16))))


@dataclass
class Received:
    """A notification as the subscriber receives it."""

    notification: notification_pb2.Notification
    log: str
    cursor: int
    attempt: int
    _client: HeraldClient = field(repr=False)

    async def ack(self) -> None:
        await self._client.ack(notification_ids=[self.notification.id])


def tls_credentials(
    ca_file: str | Path | None = None,
    *,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """TLS channel credentials: the server verified against `ca_file` (a PEM bundle; the system
    roots when None), and a client certificate presented when `cert_file` and `key_file` are
    given.

    Raises:
        ValueError: a file cannot be read, or only one of cert and key is given.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both cert_file and key_file")

    def read(path: str | Path | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(
                f"cannot read the {what} {path}: {exc.strerror or type(exc).__name__}"
            ) from None

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file, "CA file"),
        private_key=read(key_file, "client key"),
        certificate_chain=read(cert_file, "client certificate"),
    )


@dataclass(frozen=True)
class Disconnected:
    """Why a subscription's stream ended, and when it reconnects."""

    reason: str
    retry_in_s: float
    # Failed attempts in a row (0 after an orderly Closing from the server).
    failures: int


class HeraldClient:
    """A connection to Herald with one token (a user's, or a backend's).

    Plaintext by default; `tls=True` (or a `ca_file`) connects over TLS and verifies the server
    against `ca_file` (the system roots when None); `credentials` gives full control (e.g. a
    client certificate, from `tls_credentials`)."""

    def __init__(
        self,
        address: str,
        token: str | Callable[[], str],
        *,
        tls: bool = False,
        ca_file: str | Path | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: list[tuple[str, Any]] | None = None,
        ack_stream: bool = True,
    ) -> None:
        if credentials is None and (tls or ca_file is not None):
            credentials = tls_credentials(ca_file)
        if credentials is None:
            self._channel = aio.insecure_channel(address, options=options or CHANNEL_OPTIONS)
        else:
            self._channel = aio.secure_channel(
                address, credentials, options=options or CHANNEL_OPTIONS
            )
        self._token = token
        self._ingest = ingest_pb2_grpc.IngestServiceStub(self._channel)
        self._stream = stream_pb2_grpc.StreamServiceStub(self._channel)
        self._registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._acks = _AckStream(self) if ack_stream else None

    async def __aenter__(self) -> HeraldClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._acks is not None:
            self._acks.close()
        await self._channel.close(None)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        token = self._token() if callable(self._token) else self._token
        return (("authorization", f"Bearer {token}"),)

    # -- backends --------------------------------------------------------------------------

    async def send(
        self, notification: notification_pb2.Notification, *, timeout: float = 10.0
    ) -> ingest_pb2.SendResponse:
        response: ingest_pb2.SendResponse = await self._ingest.Send(
            ingest_pb2.SendRequest(notification=notification),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return response

    async def send_batch(
        self, notifications: Iterable[notification_pb2.Notification], *, timeout: float = 30.0
    ) -> ingest_pb2.SendBatchResponse:
        response: ingest_pb2.SendBatchResponse = await self._ingest.SendBatch(
            ingest_pb2.SendBatchRequest(notifications=list(notifications)),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return response

    async def status(self, notification_id: str) -> ingest_pb2.GetStatusResponse:
        response: ingest_pb2.GetStatusResponse = await self._ingest.GetStatus(
            ingest_pb2.GetStatusRequest(notification_id=notification_id),
            metadata=self.metadata(),
            timeout=10.0,
        )
        return response

    async def cancel_scheduled(self, notification_id: str) -> bool:
        """Cancels a scheduled send; False when it was cancelled already (docs/scheduling.md)."""
        response: ingest_pb2.CancelScheduledResponse = await self._ingest.CancelScheduled(
            ingest_pb2.CancelScheduledRequest(notification_id=notification_id),
            metadata=self.metadata(),
            timeout=10.0,
        )
        return response.cancelled

    async def list_scheduled(
        self, page_size: int = 0, page_token: str = ""
    ) -> ingest_pb2.ListScheduledResponse:
        response: ingest_pb2.ListScheduledResponse = await self._ingest.ListScheduled(
            ingest_pb2.ListScheduledRequest(page_size=page_size, page_token=page_token),
            metadata=self.metadata(),
            timeout=10.0,
        )
        return response

    # -- operators: the registry's directories (a service token; `tenant_id` empty means the
    # token's own tenant) ----------------------------------------------------------------------

    async def sessions(
        self, user_id: str = "", *, tenant_id: str = "", timeout: float = 10.0
    ) -> list[registry_pb2.Session]:
        """Open sessions of the tenant, or of one user (scope presence:read)."""
        response = await self._registry.ListSessions(
            registry_pb2.ListSessionsRequest(tenant_id=tenant_id, user_id=user_id),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return list(response.sessions)

    async def disconnect(
        self,
        *,
        session_id: str = "",
        user_id: str = "",
        reason: str = "",
        tenant_id: str = "",
        timeout: float = 10.0,
    ) -> int:
        """Closes one session, or every session of a user (scope sessions:admin); returns how
        many were closed."""
        if bool(session_id) == bool(user_id):
            raise ValueError("name a session_id or a user_id to disconnect, not both")
        request = registry_pb2.DisconnectRequest(tenant_id=tenant_id, reason=reason)
        if session_id:
            request.session_id = session_id
        else:
            request.user_id = user_id
        response = await self._registry.Disconnect(
            request, metadata=self.metadata(), timeout=timeout
        )
        return int(response.disconnected)

    async def presence(
        self, user_ids: Iterable[str], *, tenant_id: str = "", timeout: float = 10.0
    ) -> list[registry_pb2.UserPresence]:
        """ONLINE / RECONNECTING / OFFLINE of each user (scope presence:read)."""
        response = await self._registry.GetPresence(
            registry_pb2.GetPresenceRequest(tenant_id=tenant_id, user_ids=list(user_ids)),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return list(response.users)

    async def put_template(
        self, template: registry_pb2.Template, *, tenant_id: str = "", timeout: float = 10.0
    ) -> registry_pb2.Template:
        """Stores a new version of a template (scope templates:write); returns it as stored."""
        response = await self._registry.PutTemplate(
            registry_pb2.PutTemplateRequest(tenant_id=tenant_id, template=template),
            metadata=self.metadata(),
            timeout=timeout,
        )
        stored: registry_pb2.Template = response.template
        return stored

    async def get_template(
        self, template_id: str, version: int = 0, *, tenant_id: str = "", timeout: float = 10.0
    ) -> registry_pb2.Template:
        """One version of a template, the newest by default (scope send)."""
        response = await self._registry.GetTemplate(
            registry_pb2.GetTemplateRequest(
                tenant_id=tenant_id, template_id=template_id, version=version
            ),
            metadata=self.metadata(),
            timeout=timeout,
        )
        found: registry_pb2.Template = response.template
        return found

    async def templates(
        self, *, tenant_id: str = "", timeout: float = 10.0
    ) -> list[registry_pb2.Template]:
        """The newest version of every template of the tenant (scope send)."""
        response = await self._registry.ListTemplates(
            registry_pb2.ListTemplatesRequest(tenant_id=tenant_id),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return list(response.templates)

    async def delete_template(
        self, template_id: str, *, tenant_id: str = "", timeout: float = 10.0
    ) -> int:
        """Deletes every version of a template (scope templates:write); returns how many."""
        response = await self._registry.DeleteTemplate(
            registry_pb2.DeleteTemplateRequest(tenant_id=tenant_id, template_id=template_id),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return int(response.deleted_versions)

    async def tenant_settings(
        self, *, tenant_id: str = "", timeout: float = 10.0
    ) -> registry_pb2.GetTenantSettingsResponse:
        """The tenant's settings and the rate limits in force (scope tenant:read, or send)."""
        response: registry_pb2.GetTenantSettingsResponse = await self._registry.GetTenantSettings(
            registry_pb2.GetTenantSettingsRequest(tenant_id=tenant_id),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return response

    async def put_tenant_settings(
        self,
        settings: registry_pb2.TenantSettings,
        *,
        expected_version: int | None = None,
        tenant_id: str = "",
        timeout: float = 10.0,
    ) -> registry_pb2.TenantSettings:
        """Replaces the tenant's settings whole (scope tenant:admin); with `expected_version`
        only if that is the stored version (ABORTED otherwise). Returns them as stored."""
        request = registry_pb2.PutTenantSettingsRequest(tenant_id=tenant_id, settings=settings)
        if expected_version is not None:
            request.expected_version = expected_version
        response = await self._registry.PutTenantSettings(
            request, metadata=self.metadata(), timeout=timeout
        )
        stored: registry_pb2.TenantSettings = response.settings
        return stored

    async def reset_tenant_settings(
        self, *, expected_version: int | None = None, tenant_id: str = "", timeout: float = 10.0
    ) -> registry_pb2.TenantSettings:
        """Resets the tenant's settings to the node defaults (DeleteTenantSettings, scope
        tenant:admin); returns the empty settings at their new version."""
        request = registry_pb2.DeleteTenantSettingsRequest(tenant_id=tenant_id)
        if expected_version is not None:
            request.expected_version = expected_version
        response = await self._registry.DeleteTenantSettings(
            request, metadata=self.metadata(), timeout=timeout
        )
        stored: registry_pb2.TenantSettings = response.settings
        return stored

    async def list_tenant_settings(
        self, *, page_size: int = 0, page_token: str = "", timeout: float = 10.0
    ) -> registry_pb2.ListTenantSettingsResponse:
        """A page of every tenant's stored settings (a node token)."""
        response: registry_pb2.ListTenantSettingsResponse = await self._registry.ListTenantSettings(
            registry_pb2.ListTenantSettingsRequest(page_size=page_size, page_token=page_token),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return response

    async def create_segment(
        self, name: str, *, tenant_id: str = "", timeout: float = 10.0
    ) -> registry_pb2.Segment:
        """An empty segment (scope tenant:admin; docs/segments.md)."""
        response: registry_pb2.CreateSegmentResponse = await self._registry.CreateSegment(
            registry_pb2.CreateSegmentRequest(name=name, tenant_id=tenant_id),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return response.segment

    async def add_segment_members(
        self, name: str, user_ids: Iterable[str], *, tenant_id: str = "", timeout: float = 30.0
    ) -> registry_pb2.AddSegmentMembersResponse:
        """Adds up to 10,000 users a call; members already in are skipped."""
        response: registry_pb2.AddSegmentMembersResponse = await self._registry.AddSegmentMembers(
            registry_pb2.AddSegmentMembersRequest(
                name=name, user_ids=list(user_ids), tenant_id=tenant_id
            ),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return response

    async def remove_segment_members(
        self, name: str, user_ids: Iterable[str], *, tenant_id: str = "", timeout: float = 30.0
    ) -> int:
        """Removes up to 10,000 users a call; returns how many were members."""
        response: registry_pb2.RemoveSegmentMembersResponse = (
            await self._registry.RemoveSegmentMembers(
                registry_pb2.RemoveSegmentMembersRequest(
                    name=name, user_ids=list(user_ids), tenant_id=tenant_id
                ),
                metadata=self.metadata(),
                timeout=timeout,
            )
        )
        return int(response.removed)

    async def segment_members(
        self,
        name: str,
        *,
        tenant_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float = 30.0,
    ) -> registry_pb2.ListSegmentMembersResponse:
        """A page of a segment's members, by user id."""
        response: registry_pb2.ListSegmentMembersResponse = await self._registry.ListSegmentMembers(
            registry_pb2.ListSegmentMembersRequest(
                name=name, page_size=page_size, page_token=page_token, tenant_id=tenant_id
            ),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return response

    async def segments(
        self, *, tenant_id: str = "", timeout: float = 10.0
    ) -> list[registry_pb2.Segment]:
        """The tenant's segments by name, with member counts."""
        response: registry_pb2.ListSegmentsResponse = await self._registry.ListSegments(
            registry_pb2.ListSegmentsRequest(tenant_id=tenant_id),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return list(response.segments)

    async def delete_segment(
        self, name: str, *, tenant_id: str = "", timeout: float = 10.0
    ) -> None:
        """Deletes a segment and its members (NOT_FOUND if there is none)."""
        await self._registry.DeleteSegment(
            registry_pb2.DeleteSegmentRequest(name=name, tenant_id=tenant_id),
            metadata=self.metadata(),
            timeout=timeout,
        )

    async def parked_webhooks(
        self,
        *,
        tenant_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float = 10.0,
    ) -> registry_pb2.ListParkedWebhooksResponse:
        """A page of the tenant's parked webhook batches, oldest first (scope tenant:admin)."""
        response: registry_pb2.ListParkedWebhooksResponse = await self._registry.ListParkedWebhooks(
            registry_pb2.ListParkedWebhooksRequest(
                tenant_id=tenant_id, page_size=page_size, page_token=page_token
            ),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return response

    async def replay_webhooks(
        self,
        batch_ids: Iterable[str] = (),
        *,
        all_batches: bool = False,
        tenant_id: str = "",
        timeout: float = 10.0,
    ) -> int:
        """Sends parked batches again: those named, or all of them; returns how many are now
        due (scope tenant:admin)."""
        response = await self._registry.ReplayWebhooks(
            registry_pb2.ReplayWebhooksRequest(
                tenant_id=tenant_id, batch_ids=list(batch_ids), all=all_batches
            ),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return int(response.replayed)

    async def delete_parked_webhooks(
        self,
        batch_ids: Iterable[str] = (),
        *,
        all_batches: bool = False,
        tenant_id: str = "",
        timeout: float = 10.0,
    ) -> int:
        """Forgets parked batches: those named, or all of them (scope tenant:admin)."""
        response = await self._registry.DeleteParkedWebhooks(
            registry_pb2.DeleteParkedWebhooksRequest(
                tenant_id=tenant_id, batch_ids=list(batch_ids), all=all_batches
            ),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return int(response.deleted)

    # -- subscribers -----------------------------------------------------------------------

    async def ack(
        self,
        notification_ids: Iterable[str] = (),
        up_to: dict[str, int] | None = None,
        *,
        epochs: dict[str, int] | None = None,
        timeout: float = 10.0,
    ) -> int:
        """Acks by id and/or `up_to` cursors per log (of the log's epoch in `epochs`, from
        SessionStarted.logs, when known); returns how many changed to ACKED.

        Raises:
            grpc.aio.AioRpcError: the server refused the ack or could not be reached.
        """
        ids = list(notification_ids)
        known = epochs or {}
        cursors = [
            stream_pb2.LogCursor(log=k, cursor=v, epoch=known.get(k, 0))
            for k, v in (up_to or {}).items()
        ]
        if self._acks is not None and self._acks.supported:
            acked = await self._acks.ack(
                stream_pb2.AckStreamRequest(notification_ids=ids, up_to=cursors), timeout
            )
            if acked is not None:
                return acked
        request = stream_pb2.AckRequest(notification_ids=ids, up_to=cursors)
        response = await self._stream.Ack(request, metadata=self.metadata(), timeout=timeout)
        return int(response.acked)

    async def list_inbox(
        self,
        *,
        page_size: int = 20,
        page_token: str = "",
        filter: stream_pb2.InboxFilter = stream_pb2.INBOX_FILTER_UNSPECIFIED,
        chain: ClientChain | None = None,
        timeout: float = 10.0,
    ) -> stream_pb2.ListInboxResponse:
        """A page of the caller's own notifications, newest first (not archived ones, unless
        `filter` says otherwise).

        With `chain` (`Client.inbox_chain(...)`, or a subscription's `chain` to ask for what
        its stream asks for), the request carries the chain's `accept_encodings` and every item
        is opened and verified as a delivery is: the page's items have `notification` set and no
        `sealed`, and an item that is rejected (unsigned where a signature is required, tampered
        with, an unknown key) is left out of the page, counted in `chain.rejected` and passed to
        its `on_reject` (docs/transformers.md). Without one, nothing is asked for and nothing
        verified, but what a tenant seals anyway (it requires signing) is still opened."""
        chain = chain or ClientChain(self.signing_keys)
        request = stream_pb2.ListInboxRequest(
            page_size=page_size,
            page_token=page_token,
            filter=filter,
            accept_encodings=chain.accept,
        )
        await chain.ready()
        response: stream_pb2.ListInboxResponse = await self._stream.ListInbox(
            request, metadata=self.metadata(), timeout=timeout
        )
        opened: list[stream_pb2.InboxItem] = []
        for item in response.items:
            notification = await chain.open(item)
            if notification is None:  # rejected (counted, logged)
                continue
            if item.HasField("sealed"):
                item.ClearField("sealed")
                item.notification.CopyFrom(notification)
            opened.append(item)
        del response.items[:]
        response.items.extend(opened)
        return response

    def inbox_chain(
        self,
        *,
        accept_encodings: Iterable[str] = (),
        verify: bool = False,
        on_reject: Callable[[Rejected, stream_pb2.Delivery | stream_pb2.InboxItem], None]
        | None = None,
    ) -> ClientChain:
        """A decoder and verifier for `list_inbox(chain=...)`, as `subscribe` makes one for its
        stream: `accept_encodings` asks for encodings, `verify` for signatures (and rejects
        what does not verify)."""
        return ClientChain(
            self.signing_keys, accept=tuple(accept_encodings), verify=verify, on_reject=on_reject
        )

    async def update_inbox_state(
        self,
        notification_ids: Iterable[str],
        action: stream_pb2.InboxAction,
        *,
        timeout: float = 10.0,
    ) -> stream_pb2.UpdateInboxStateResponse:
        """Marks the caller's notifications seen, read, unread, archived or unarchived; the
        response says how many changed and the counts after."""
        response: stream_pb2.UpdateInboxStateResponse = await self._stream.UpdateInboxState(
            stream_pb2.UpdateInboxStateRequest(
                notification_ids=list(notification_ids), action=action
            ),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return response

    async def mark_all_read(
        self, *, up_to_cursor: int = 0, timeout: float = 10.0
    ) -> stream_pb2.MarkAllReadResponse:
        """Marks every notification of the caller's inbox read (or every one up to a cursor)."""
        response: stream_pb2.MarkAllReadResponse = await self._stream.MarkAllRead(
            stream_pb2.MarkAllReadRequest(up_to_cursor=up_to_cursor),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return response

    async def inbox_counts(self, *, timeout: float = 10.0) -> stream_pb2.InboxCounts:
        """The caller's unseen, unread and total (not archived) counts."""
        response: stream_pb2.GetInboxCountsResponse = await self._stream.GetInboxCounts(
            stream_pb2.GetInboxCountsRequest(), metadata=self.metadata(), timeout=timeout
        )
        return response.counts

    async def signing_keys(self, *, timeout: float = 10.0) -> stream_pb2.GetSigningKeysResponse:
        """The public keys that verify signed deliveries (the active one and older ones)."""
        response: stream_pb2.GetSigningKeysResponse = await self._stream.GetSigningKeys(
            stream_pb2.GetSigningKeysRequest(), metadata=self.metadata(), timeout=timeout
        )
        return response

    async def mark_read(self, notification_ids: Iterable[str], *, timeout: float = 10.0) -> int:
        """Marks the caller's notifications read; returns how many were unread."""
        response: stream_pb2.MarkReadResponse = await self._stream.MarkRead(
            stream_pb2.MarkReadRequest(notification_ids=list(notification_ids)),
            metadata=self.metadata(),
            timeout=timeout,
        )
        return int(response.marked)

    def open_ack_stream(
        self,
    ) -> aio.StreamStreamCall[stream_pb2.AckStreamRequest, stream_pb2.AckStreamResponse]:
        call: aio.StreamStreamCall[stream_pb2.AckStreamRequest, stream_pb2.AckStreamResponse] = (
            self._stream.AckStream(metadata=self.metadata())
        )
        return call

    def subscribe(
        self,
        *,
        channels: Iterable[str] = (),
        cursors: dict[str, int] | None = None,
        device: str = "python",
        auto_ack: bool = True,
        ack_interval: float = 5.0,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        dedupe_window: int = 10_000,
        rng: random.Random | None = None,
        on_connect: Callable[[stream_pb2.SessionStarted], None] | None = None,
        on_disconnect: Callable[[Disconnected], None] | None = None,
        accept_encodings: Iterable[str] = (),
        verify: bool = False,
        on_reject: Callable[[Rejected, stream_pb2.Delivery], None] | None = None,
        on_inbox_event: Callable[[stream_pb2.InboxEvent], None] | None = None,
    ) -> Subscription:
        """An endless iterator of notifications, across reconnects (see the module docstring).

        `on_connect` is called with each SessionStarted; `on_disconnect` each time the stream
        ends and the subscription is about to reconnect, with why and when (to show
        connection state while it is away). `accept_encodings` asks for the transformer
        chain's encodings ("json", "zstd", "gzip", "signed"); `verify` asks for signed
        deliveries and rejects any that does not verify (`Subscription.chain.rejected` counts
        them by reason; `on_reject` is called with each; docs/transformers.md).
        `on_inbox_event` is called with each InboxEvent: the user's inbox states changed on some
        device (docs/inbox.md)."""
        if ack_interval <= 0:
            raise ValueError("ack_interval must be positive")

        def reject(rejected: Rejected, sealed: stream_pb2.Delivery | stream_pb2.InboxItem) -> None:
            # Inbox items this chain opened (list_inbox(chain=subscription.chain)) are counted
            # with the deliveries; `on_reject` is about deliveries.
            if on_reject is not None and isinstance(sealed, stream_pb2.Delivery):
                on_reject(rejected, sealed)

        chain = ClientChain(
            self.signing_keys, accept=tuple(accept_encodings), verify=verify, on_reject=reject
        )
        return Subscription(
            self,
            channels=tuple(channels),
            cursors=dict(cursors or {}),
            device=device,
            auto_ack=auto_ack,
            ack_interval=ack_interval,
            reconnect=reconnect,
            backoff=backoff or Backoff(),
            dedupe_window=dedupe_window,
            rng=rng or random.Random(),  # noqa: S311 - jitter, not security
            on_connect=on_connect,
            on_disconnect=on_disconnect,
            chain=chain,
            on_inbox_event=on_inbox_event,
        )

    def open_stream(
        self, request: stream_pb2.SubscribeRequest
    ) -> aio.UnaryStreamCall[stream_pb2.SubscribeRequest, stream_pb2.SubscribeResponse]:
        call: aio.UnaryStreamCall[stream_pb2.SubscribeRequest, stream_pb2.SubscribeResponse] = (
            self._stream.Subscribe(request, metadata=self.metadata())
        )
        return call


class _AckStream:
    """The client's `AckStream` call: one ack in flight, each answered in order."""

    def __init__(self, client: HeraldClient) -> None:
        self._client = client
        self._lock = asyncio.Lock()
        self._call: aio.StreamStreamCall[Any, Any] | None = None
        self.supported = True

    async def ack(self, request: stream_pb2.AckStreamRequest, timeout: float) -> int | None:
        """The number acked; None when the server has no AckStream (use `Ack` instead)."""
        async with self._lock:
            if self._call is not None and self._call.done():
                # Ended by the server while idle (its shutdown, an expired token): writing to
                # it would raise InvalidStateError. Not a failed attempt: open a new one.
                self._call = None
            fresh = self._call is None
            for _ in range(2):
                try:
                    return await self._exchange(request, timeout)
                except aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                        self.supported = False
                        return None
                    # A stream that was already open may have outlived its token, or its
                    # connection: try once more on a new stream (acks are idempotent).
                    if fresh or exc.code() not in _REOPEN_CODES:
                        raise
                    fresh = True
            raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, request: stream_pb2.AckStreamRequest, timeout: float) -> int:
        if self._call is None:
            self._call = self._client.open_ack_stream()
        call = self._call
        try:
            async with asyncio.timeout(timeout):
                await call.write(request)
                response = await call.read()
        except asyncio.InvalidStateError:
            # The call finished between the check in `ack` and the write.
            self.close()
            raise _stream_ended() from None
        except BaseException:
            # The answer to this request may still be on its way: never read it as the
            # answer to the next one.
            self.close()
            raise
        if not isinstance(response, stream_pb2.AckStreamResponse):
            # EOF: the server ended the stream without an error (only a client ends it).
            self.close()
            raise _stream_ended()
        return int(response.acked)

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None


def _stream_ended() -> aio.AioRpcError:
    return aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, aio.Metadata(), aio.Metadata(), "the ack stream ended", None
    )


# An open ack stream ending with these is reopened once before the ack is given up on.
_REOPEN_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
    }
)


class Subscription:
    """An endless async iterator of notifications across reconnects."""

    def __init__(
        self,
        client: HeraldClient,
        *,
        channels: tuple[str, ...],
        cursors: dict[str, int],
        device: str,
        auto_ack: bool,
        ack_interval: float,
        reconnect: bool,
        backoff: Backoff,
        dedupe_window: int,
        rng: random.Random,
        on_connect: Callable[[stream_pb2.SessionStarted], None] | None = None,
        on_disconnect: Callable[[Disconnected], None] | None = None,
        chain: ClientChain | None = None,
        on_inbox_event: Callable[[stream_pb2.InboxEvent], None] | None = None,
    ) -> None:
        self._client = client
        # Decodes and verifies the transformer chain's deliveries; counts rejections.
        self.chain = chain or ClientChain(client.signing_keys)
        self.channels = channels
        # The resume cursor per log: pass these to a later subscribe to continue from here.
        self.cursors = cursors
        # The epoch of each log (SessionStarted.logs): sent back with its cursor.
        self.epochs: dict[str, int] = {}
        # Logs whose cursor the server could not honour on a reconnect (it lost their entries):
        # they were replayed from what was acked, so deliveries seen before may come again.
        self.unrecovered = 0
        self._device = device
        self._auto_ack = auto_ack
        self._ack_interval = ack_interval
        # Auto-ack: per log, the watermark (resume_cursor) of what the app has finished with on
        # the current stream. Only this stream's watermarks are acked: a cursor from before (or
        # passed in) may be beyond the log of a server that lost its embedded store.
        self._handled: dict[str, int] = {}
        # Auto-ack, by id: deliveries of a batch the loop had before it stopped mid-batch (their
        # batch's watermark would cover the ones it never had).
        self._handled_ids: list[str] = []
        self._ack_due = False
        self._reconnect = reconnect
        self._backoff = backoff
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedupe_window = dedupe_window
        self._rng = rng
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_inbox_event = on_inbox_event
        self._call: aio.UnaryStreamCall[Any, Any] | None = None
        self._dropped = False
        self.session_id = ""
        self.connects = 0
        self.last_closing: stream_pb2.Closing | None = None
        self.connected = asyncio.Event()

    def __aiter__(self) -> AsyncGenerator[Received, None]:
        return self._run()

    def cancel(self) -> None:
        """Ends the current stream (the iterator reconnects if `reconnect` is on)."""
        if self._call is not None:
            self._dropped = True
            self._call.cancel()

    def _request(self) -> stream_pb2.SubscribeRequest:
        return stream_pb2.SubscribeRequest(
            cursors=[
                stream_pb2.LogCursor(log=k, cursor=v, epoch=self.epochs.get(k, 0))
                for k, v in self.cursors.items()
            ],
            channels=self.channels,
            device=self._device,
            accept_encodings=self.chain.accept,
        )

    def _started(self, started: stream_pb2.SessionStarted) -> None:
        for position in started.logs:
            self.epochs[position.log] = position.epoch
            if not position.recovered:
                # Never silent: the server no longer has what our cursor pointed into.
                self.unrecovered += 1
                self.cursors.pop(position.log, None)
                self._handled.pop(position.log, None)
                log.warning(
                    "the server could not resume a log from its cursor; it is replayed",
                    extra={"log": position.log, "epoch": position.epoch},
                )

    async def flush_acks(self) -> None:
        """Auto-ack: acks now what the app has handled, instead of at the next interval.

        A failed Ack is logged and tried again at the next interval: acks are idempotent, and
        what stays unacked is redelivered by the server and dropped here as a duplicate.
        """
        if not self._ack_due:
            return
        self._ack_due = False
        handled = dict(self._handled)
        ids = list(self._handled_ids)
        if not handled and not ids:
            return
        try:
            await self._client.ack(notification_ids=ids, up_to=handled, epochs=self.epochs)
            del self._handled_ids[: len(ids)]
        except aio.AioRpcError as exc:
            self._ack_due = True
            log.info("ack failed; retrying at the next interval", extra={"code": exc.code().name})
        except Exception:
            # Never let the ack task die silently (a closed channel, a failing token source).
            self._ack_due = True
            log.warning("ack failed; retrying at the next interval", exc_info=True)
        except BaseException:  # cancelled mid-RPC: the final flush sends it again
            self._ack_due = True
            raise

    async def _flush_acks_briefly(self) -> None:
        """A last flush that gives up after 2 s: the connection may be gone, and what stays
        unacked is simply redelivered."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self.flush_acks()

    async def _ack_loop(self) -> None:
        while True:
            # Jittered: subscriptions that started (or reconnected) together would otherwise
            # ack together, every interval, as one burst on the server.
            await asyncio.sleep(self._ack_interval * self._rng.uniform(0.8, 1.2))
            await self.flush_acks()

    async def _run(self) -> AsyncGenerator[Received, None]:
        acker = asyncio.create_task(self._ack_loop()) if self._auto_ack else None
        try:
            async with contextlib.aclosing(self._deliveries()) as deliveries:
                async for received in deliveries:
                    yield received
        finally:
            if acker is not None:
                acker.cancel()
                # asyncio.wait neither raises the task's own end nor hides a cancellation of
                # the task running this generator.
                await asyncio.wait({acker})
                await self._flush_acks_briefly()

    async def _deliveries(self) -> AsyncGenerator[Received, None]:
        failures = 0
        while True:
            retry_after = retry_after_s = 0.0
            reason = "the server ended the stream"
            call = None
            try:
                await self.chain.connecting()
                self._call = call = self._client.open_stream(self._request())
                async for event in call:
                    kind = event.WhichOneof("event")
                    if kind == "deliveries":
                        batch = event.deliveries.deliveries
                        had: list[str] = []  # of this batch, what the loop was given
                        for delivery in batch:
                            notification = await self.chain.open(delivery)
                            if notification is None:  # rejected (counted, logged)
                                continue
                            notification_id = notification.id
                            if notification_id in self._seen:
                                continue
                            self._remember(notification_id)
                            had.append(notification_id)
                            try:
                                yield Received(
                                    notification,
                                    delivery.log,
                                    delivery.cursor,
                                    delivery.attempt,
                                    self._client,
                                )
                            except GeneratorExit:
                                # The loop stopped mid-batch (a `break`, a cancellation): it
                                # finished the ones it came back from, and those are acked by
                                # id in the final flush; not the one it stopped on, nor the rest.
                                if self._auto_ack and len(had) > 1:
                                    self._handled_ids.extend(had[:-1])
                                    self._ack_due = True
                                raise
                        # A resume cursor covers its whole batch: advance only once the app
                        # has had every delivery of it. Everything at or below it was written
                        # to this stream, so with auto-ack it is what `up_to` acks. It is the
                        # stream's own watermark: it replaces an older cursor, which a server
                        # that lost its embedded store may have ignored as beyond its log.
                        watermarks: dict[str, int] = {}
                        for delivery in batch:
                            watermarks[delivery.log] = max(
                                watermarks.get(delivery.log, 0), delivery.resume_cursor
                            )
                        self.cursors.update(watermarks)
                        self._handled.update(watermarks)
                        self._ack_due = True
                    elif kind == "session_started":
                        self._started(event.session_started)
                        self.session_id = event.session_started.session_id
                        self.connects += 1
                        failures = 0
                        self.connected.set()
                        if self._on_connect is not None:
                            self._on_connect(event.session_started)
                    elif kind == "inbox_event":
                        if self._on_inbox_event is not None:
                            self._on_inbox_event(event.inbox_event)
                    elif kind == "closing":
                        self.last_closing = event.closing
                        retry_after = event.closing.retry_after_ms / 1000
                        reason = (
                            f"{stream_pb2.Closing.Reason.Name(event.closing.reason)}: "
                            f"{event.closing.message}"
                        )
                        if event.closing.reason == stream_pb2.Closing.REASON_DISCONNECTED:
                            return
            except aio.AioRpcError as exc:
                # A rate limit says when to come back; other RESOURCE_EXHAUSTED (too many
                # sessions, channels) do not, and reconnecting cannot fix them.
                limited = rate_limit_delay(exc)
                if not self._reconnect or (limited is None and exc.code() in FATAL_CODES):
                    raise
                failures += 1
                retry_after_s = limited or 0.0
                reason = f"{exc.code().name}: {exc.details()}"
            except asyncio.CancelledError:
                # grpc raises CancelledError for a call cancelled locally: reconnect if that was
                # `cancel()`, but let a cancellation of the task itself through.
                task = asyncio.current_task()
                if not self._dropped or (task is not None and task.cancelling()):
                    raise
                reason = "the stream was dropped (cancel)"
            finally:
                self._dropped = False
                self.connected.clear()
                if call is not None:
                    call.cancel()
            if not self._reconnect:
                return
            if self._auto_ack:
                await self._flush_acks_briefly()
                self._handled = {}  # the next stream has watermarks of its own
            delay = max(retry_after, self._backoff.delay(failures, self._rng))
            if retry_after_s:
                # Spread the clients a limit refused together (up to a fifth later).
                delay = max(delay, retry_after_s * self._rng.uniform(1.0, 1.2))
            if self._on_disconnect is not None:
                self._on_disconnect(Disconnected(reason, delay, failures))
            await asyncio.sleep(delay)

    def _remember(self, notification_id: str) -> None:
        self._seen[notification_id] = None
        if len(self._seen) > self._dedupe_window:
            self._seen.popitem(last=False)
