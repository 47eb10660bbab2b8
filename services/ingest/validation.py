"""What makes a notification acceptable. Every refusal says what to change."""

from __future__ import annotations

from typing import NamedTuple

from herald.v1 import notification_pb2
from services.bounds import (
    MAX_CHANNEL_LEN,
    MAX_ID_LEN,
    MAX_LOCALE_LEN,
    MAX_TEMPLATE_ID_LEN,
    check_id,
    check_length,
    quote,
)
from services.config import IngestSettings
from services.domain import TargetKind
from services.errors import InvalidArgument, PermissionDenied
from services.model import target_kind
from services.preferences.store import check_category
from services.registry.segments import MAX_NAME_LEN as MAX_SEGMENT_NAME_LEN

MAX_METADATA_ENTRIES = 32
_PRIORITIES = frozenset(notification_pb2.Priority.values())


class ResolvedTarget(NamedTuple):
    """Who a valid notification goes to, as read once from its `target`."""

    kind: TargetKind
    # The distinct users of a user or users target, in order; empty for channels and broadcasts
    # and, until ingest reads its members (IngestCore), for a segment.
    user_ids: tuple[str, ...]
    channel: str
    # The segment of a segment target (kind USERS once its members are read), else "".
    segment: str = ""


def validate(
    notification: notification_pb2.Notification, tenant: str, settings: IngestSettings
) -> ResolvedTarget:
    """Checks a notification as sent by a backend of `tenant`.

    Raises:
        InvalidArgument: the notification is malformed or over a limit.
        PermissionDenied: it names another tenant.
    """
    if notification.tenant_id and notification.tenant_id != tenant:
        raise PermissionDenied(
            f"the token of tenant {quote(tenant)} cannot send to tenant "
            f"{quote(notification.tenant_id)}"
        )
    if notification.id:
        raise InvalidArgument("notification.id is assigned by the server; leave it empty")
    if notification.HasField("created_at") or notification.HasField("expires_at"):
        raise InvalidArgument("created_at and expires_at are set by the server; leave them empty")
    resolved = _validate_target(notification.target, settings)
    if notification.priority not in _PRIORITIES:
        raise InvalidArgument(
            f"priority {notification.priority} is not a known Priority "
            "(use PRIORITY_LOW, PRIORITY_NORMAL or PRIORITY_HIGH)"
        )
    if notification.ttl_seconds > settings.max_ttl_s:
        raise InvalidArgument(
            f"ttl_seconds {notification.ttl_seconds} is over the maximum of {settings.max_ttl_s}"
        )
    check_length(notification.idempotency_key, MAX_ID_LEN, "idempotency_key")
    if notification.category:
        check_category(notification.category)
    metadata = notification.metadata
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(f"metadata has more than {MAX_METADATA_ENTRIES} entries")
    content = notification.content
    size = content.ByteSize()
    if notification.HasField("template"):
        template = notification.template
        check_id(template.template_id, "template.template_id", MAX_TEMPLATE_ID_LEN)
        check_length(template.locale, MAX_LOCALE_LEN, "template.locale")
        size += template.ByteSize()
    elif not (content.title or content.body or content.HasField("data")):
        raise InvalidArgument("content needs a title, a body or data (or name a template)")
    actions = content.actions
    if actions:
        for action in actions:
            if not action.label:
                raise InvalidArgument("every content.actions entry needs a label")
    if metadata:
        size += sum(map(len, metadata)) + sum(map(len, metadata.values()))
    _check_size(size, settings)
    return resolved


def check_payload_size(
    notification: notification_pb2.Notification, settings: IngestSettings
) -> None:
    """The payload (content, template variables, metadata) must fit the limit."""
    size = notification.content.ByteSize() + notification.template.ByteSize()
    metadata = notification.metadata
    if metadata:
        size += sum(map(len, metadata)) + sum(map(len, metadata.values()))
    _check_size(size, settings)


def _check_size(size: int, settings: IngestSettings) -> None:
    if size > settings.max_payload_bytes:
        raise InvalidArgument(
            f"the payload is {size} bytes; the limit is {settings.max_payload_bytes} bytes "
            "(content, template variables and metadata together)"
        )


def _validate_target(target: notification_pb2.Target, settings: IngestSettings) -> ResolvedTarget:
    if target.WhichOneof("kind") == "segment":
        # Its members are read at send time (IngestCore), up to segments.MAX_MEMBERS, not
        # bounded by max_users_per_send: it goes to them as a users target would.
        check_id(target.segment, "target.segment", MAX_SEGMENT_NAME_LEN)
        return ResolvedTarget(TargetKind.USERS, (), "", target.segment)
    kind = target_kind(target)
    if kind is None:
        raise InvalidArgument(
            "notification.target is required: set user_id, users, channel, segment or broadcast"
        )
    if kind is TargetKind.USER:
        user_id = target.user_id
        check_id(user_id, "target.user_id")
        return ResolvedTarget(kind, (user_id,), "")
    if kind is TargetKind.USERS:
        user_ids = target.users.user_ids
        if not user_ids:
            raise InvalidArgument("target.users must list at least one user id")
        if len(user_ids) > settings.max_users_per_send:
            raise InvalidArgument(
                f"target.users lists {len(user_ids)} users; the limit is "
                f"{settings.max_users_per_send} (use a channel or a broadcast for more)"
            )
        for user_id in user_ids:
            check_id(user_id, "every user id in target.users")
        return ResolvedTarget(kind, tuple(dict.fromkeys(user_ids)), "")
    if kind is TargetKind.CHANNEL:
        channel = target.channel
        check_id(channel, "target.channel", MAX_CHANNEL_LEN)
        return ResolvedTarget(kind, (), channel)
    if not target.broadcast:
        raise InvalidArgument("target.broadcast must be true to broadcast to the tenant")
    return ResolvedTarget(kind, (), "")
