"""Conversion between the domain values (services/domain.py) and the herald.v1 wire types.

This module is the one place that turns herald.v1 messages into plain values and back.
"""

from __future__ import annotations

import dataclasses

from google.protobuf.timestamp_pb2 import Timestamp

from herald.v1 import ingest_pb2, notification_pb2, registry_pb2
from services.domain import (
    RATE_LIMIT_FIELDS,
    Accepted,
    NotificationRecord,
    PushFallback,
    RateLimitOverrides,
    RecipientRecord,
    SessionInfo,
    State,
    StreamPolicy,
    TargetKind,
    TemplateAction,
    TemplateRecord,
    TemplateText,
    TenantSettingsRecord,
)
from services.errors import InvalidArgument
from services.preferences.store import Choice, UserPreferences, check_preferences
from services.webhooks import settings as webhook_settings


def target_kind(target: notification_pb2.Target) -> TargetKind | None:
    kind = target.WhichOneof("kind")
    # None too for a segment: ingest reads its members into a users target (IngestCore).
    return None if kind is None else _KINDS.get(kind)


_KINDS = {
    "user_id": TargetKind.USER,
    "users": TargetKind.USERS,
    "channel": TargetKind.CHANNEL,
    "broadcast": TargetKind.BROADCAST,
}


# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def accepted_from_proto(notification: notification_pb2.Notification, encoded: bytes) -> Accepted:
    """The domain value of a notification ingest has already validated and completed.

    Raises:
        InvalidArgument: it has no target, or a time outside what a Timestamp can hold (a node
            handed over one that ingest did not validate).
    """
    for name in ("created_at", "expires_at"):
        if not _MIN_SECONDS <= getattr(notification, name).seconds <= _MAX_SECONDS:
            raise InvalidArgument(f"{name} must be between the years 1 and 9999")
    target = notification.target
    kind = target_kind(target)
    if kind is None and target.WhichOneof("kind") == "segment":
        raise InvalidArgument(
            "a segment send is appended by the ingest node that reads its members; a stream "
            "node takes user, users, channel and broadcast targets"
        )
    if kind is None:
        raise InvalidArgument("every notification needs a target")
    if kind is TargetKind.USER:
        users: tuple[str, ...] = (target.user_id,)
    elif kind is TargetKind.USERS:
        users = tuple(dict.fromkeys(target.users.user_ids))
    else:
        users = ()
    return Accepted(
        notification_id=notification.id,
        tenant=notification.tenant_id,
        kind=kind,
        user_ids=users,
        channel=target.channel if kind is TargetKind.CHANNEL else "",
        priority=notification.priority,
        created_at=seconds(notification.created_at),
        expires_at=seconds(notification.expires_at),
        encoded=encoded,
        target=target.SerializeToString(),
    )


def seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def timestamp(value: float) -> Timestamp:
    """A Timestamp for epoch seconds (an empty one for 0)."""
    ts = Timestamp()
    set_timestamp(ts, value)
    return ts


def set_timestamp(ts: Timestamp, value: float) -> None:
    """Sets a Timestamp field in place to epoch seconds (no temporary message to copy from)."""
    if value:
        whole = int(value)
        ts.seconds = whole
        ts.nanos = round((value - whole) * 1e9) % 1_000_000_000


def status_to_proto(record: NotificationRecord) -> ingest_pb2.GetStatusResponse:
    """The wire form of a notification's status (recipients in user id order). A time that did
    not happen (0: never delivered, acked, read) is left unset, not sent as 1970-01-01."""
    response = ingest_pb2.GetStatusResponse(
        notification_id=record.notification_id,
        target=notification_pb2.Target.FromString(record.target),
    )
    set_timestamp(response.created_at, record.created_at)
    set_timestamp(response.expires_at, record.expires_at)
    for r in sorted(record.recipients.values(), key=lambda r: r.user_id):
        recipient = response.recipients.add(
            user_id=r.user_id,
            state=int(r.state),
            attempts=r.attempts,
            reason=r.reason,
        )
        for field, value in (
            ("updated_at", r.updated_at),
            ("queued_at", r.queued_at),
            ("delivered_at", r.delivered_at),
            ("acked_at", r.acked_at),
            ("read_at", r.read_at),
        ):
            if value:
                set_timestamp(getattr(recipient, field), value)
    return response


def status_from_proto(tenant: str, message: ingest_pb2.GetStatusResponse) -> NotificationRecord:
    return NotificationRecord(
        notification_id=message.notification_id,
        tenant=tenant,
        target=message.target.SerializeToString(),
        created_at=seconds(message.created_at),
        expires_at=seconds(message.expires_at),
        recipients={
            r.user_id: RecipientRecord(
                user_id=r.user_id,
                state=State(r.state),
                updated_at=seconds(r.updated_at),
                queued_at=seconds(r.queued_at),
                delivered_at=seconds(r.delivered_at),
                acked_at=seconds(r.acked_at),
                attempts=r.attempts,
                reason=r.reason,
                read_at=seconds(r.read_at),
            )
            for r in message.recipients
        },
    )


def session_to_proto(session: SessionInfo) -> registry_pb2.Session:
    return registry_pb2.Session(
        session_id=session.session_id,
        tenant_id=session.tenant,
        user_id=session.user_id,
        node_id=session.node_id,
        node_address=session.node_address,
        device=session.device,
        channels=session.channels,
        connected_at=timestamp(session.connected_at),
        last_seen_at=timestamp(session.last_seen_at),
    )


def session_from_proto(message: registry_pb2.Session) -> SessionInfo:
    return SessionInfo(
        session_id=message.session_id,
        tenant=message.tenant_id,
        user_id=message.user_id,
        node_id=message.node_id,
        node_address=message.node_address,
        device=message.device,
        channels=tuple(message.channels),
        connected_at=seconds(message.connected_at),
        last_seen_at=seconds(message.last_seen_at),
    )


def template_to_proto(template: TemplateRecord) -> registry_pb2.Template:
    return registry_pb2.Template(
        template_id=template.template_id,
        version=template.version,
        default_locale=template.default_locale,
        locales={
            locale: registry_pb2.TemplateContent(
                title=text.title,
                body=text.body,
                image_url=text.image_url,
                actions=[
                    notification_pb2.Action(id=a.action_id, label=a.label, url=a.url)
                    for a in text.actions
                ],
            )
            for locale, text in template.locales.items()
        },
        created_at=timestamp(template.created_at),
    )


def template_from_proto(message: registry_pb2.Template) -> TemplateRecord:
    return TemplateRecord(
        template_id=message.template_id,
        version=message.version,
        default_locale=message.default_locale,
        locales={
            locale: TemplateText(
                title=text.title,
                body=text.body,
                image_url=text.image_url,
                actions=tuple(TemplateAction(a.id, a.label, a.url) for a in text.actions),
            )
            for locale, text in message.locales.items()
        },
        created_at=seconds(message.created_at),
    )


def rate_limits_to_proto(limits: RateLimitOverrides) -> registry_pb2.TenantRateLimits:
    message = registry_pb2.TenantRateLimits()
    for name in RATE_LIMIT_FIELDS:
        value = getattr(limits, name)
        if value is not None:
            setattr(message, name, value)
    return message


def rate_limits_from_proto(message: registry_pb2.TenantRateLimits) -> RateLimitOverrides:
    values: dict[str, float | int] = {
        name: getattr(message, name) for name in RATE_LIMIT_FIELDS if message.HasField(name)
    }
    return RateLimitOverrides(**values)  # type: ignore[arg-type]


def tenant_settings_to_proto(
    settings: TenantSettingsRecord, secrets: bool = False
) -> registry_pb2.TenantSettings:
    """The wire form; the push secrets only with `secrets` (for other Herald nodes), else
    empty with their `*_set` flags."""
    message = registry_pb2.TenantSettings(
        tenant_id=settings.tenant,
        version=settings.version,
        rate_limits=rate_limits_to_proto(settings.rate_limits),
        updated_by=settings.updated_by,
    )
    if settings.default_ttl_s is not None:
        message.default_ttl_seconds = settings.default_ttl_s
    if settings.max_users_per_send is not None:
        message.max_users_per_send = settings.max_users_per_send
    if settings.updated_at:
        message.updated_at.CopyFrom(timestamp(settings.updated_at))
    if settings.push_fallback is not None:
        message.push_fallback.CopyFrom(push_fallback_to_proto(settings.push_fallback, secrets))
    if settings.webhooks is not None:
        message.webhooks.CopyFrom(webhook_settings.to_proto(settings.webhooks, secrets))
    policy = settings.stream_policy
    if policy is not None:
        message.stream_policy.CopyFrom(
            registry_pb2.StreamPolicy(
                compression=policy.compression,
                compression_min_bytes=policy.compression_min_bytes,
                signing_required=policy.signing_required,
                allowed_formats=policy.allowed_formats,
            )
        )
    return message


def tenant_settings_from_proto(
    tenant: str, message: registry_pb2.TenantSettings
) -> TenantSettingsRecord:
    """The settings a request carries, for `tenant` (version and update fields left unset)."""
    policy = None
    if message.HasField("stream_policy"):
        p = message.stream_policy
        policy = StreamPolicy(
            compression=tuple(p.compression),
            compression_min_bytes=p.compression_min_bytes,
            signing_required=p.signing_required,
            allowed_formats=tuple(p.allowed_formats),
        )
    return TenantSettingsRecord(
        tenant,
        rate_limits=rate_limits_from_proto(message.rate_limits),
        stream_policy=policy,
        push_fallback=(
            push_fallback_from_proto(message.push_fallback)
            if message.HasField("push_fallback")
            else None
        ),
        webhooks=(
            webhook_settings.from_proto(message.webhooks) if message.HasField("webhooks") else None
        ),
        default_ttl_s=(
            message.default_ttl_seconds if message.HasField("default_ttl_seconds") else None
        ),
        max_users_per_send=(
            message.max_users_per_send if message.HasField("max_users_per_send") else None
        ),
    )


def tenant_settings_from_response(message: registry_pb2.TenantSettings) -> TenantSettingsRecord:
    """Settings as the registry answered them (version and update fields included)."""
    return dataclasses.replace(
        tenant_settings_from_proto(message.tenant_id, message),
        version=message.version,
        updated_at=seconds(message.updated_at),
        updated_by=message.updated_by,
    )


def push_fallback_to_proto(
    push: PushFallback, secrets: bool = False
) -> registry_pb2.PushFallbackSettings:
    return registry_pb2.PushFallbackSettings(
        enabled=push.enabled,
        delay_seconds=push.delay_s,
        fcm=registry_pb2.FcmCredentials(
            project_id=push.fcm_project_id,
            service_account_json=push.fcm_service_account_json if secrets else "",
            service_account_json_set=bool(push.fcm_service_account_json),
        ),
        apns=registry_pb2.ApnsCredentials(
            team_id=push.apns_team_id,
            key_id=push.apns_key_id,
            private_key_p8=push.apns_private_key_p8 if secrets else "",
            private_key_p8_set=bool(push.apns_private_key_p8),
            topic=push.apns_topic,
            production=push.apns_production,
        ),
        web_push=registry_pb2.WebPushCredentials(
            vapid_private_key=push.vapid_private_key if secrets else "",
            vapid_private_key_set=bool(push.vapid_private_key),
            vapid_public_key=push.vapid_public_key,
            subject=push.vapid_subject,
        ),
    )


def push_fallback_from_proto(message: registry_pb2.PushFallbackSettings) -> PushFallback:
    return PushFallback(
        enabled=message.enabled,
        delay_s=message.delay_seconds,
        fcm_project_id=message.fcm.project_id,
        fcm_service_account_json=message.fcm.service_account_json,
        apns_team_id=message.apns.team_id,
        apns_key_id=message.apns.key_id,
        apns_private_key_p8=message.apns.private_key_p8,
        apns_topic=message.apns.topic,
        apns_production=message.apns.production,
        vapid_private_key=message.web_push.vapid_private_key,
        vapid_public_key=message.web_push.vapid_public_key,
        vapid_subject=message.web_push.subject,
    )


def keep_push_secrets(
    message: registry_pb2.PushFallbackSettings, new: PushFallback, stored: PushFallback | None
) -> PushFallback:
    """`new` with each secret sent empty but flagged as set taken from `stored` (a client that
    read the settings and puts them back does not erase the secrets it could not read)."""
    if stored is None:
        return new
    kept = {}
    for name, flag in (
        ("fcm_service_account_json", message.fcm.service_account_json_set),
        ("apns_private_key_p8", message.apns.private_key_p8_set),
        ("vapid_private_key", message.web_push.vapid_private_key_set),
    ):
        if flag and not getattr(new, name):
            kept[name] = getattr(stored, name)
    return dataclasses.replace(new, **kept)


def _choice_from_proto(message: registry_pb2.DeliveryPreference) -> Choice:
    return Choice(
        message.in_app if message.HasField("in_app") else None,
        message.push if message.HasField("push") else None,
        message.webhook if message.HasField("webhook") else None,
    )


def _choice_to_proto(category: str, choice: Choice) -> registry_pb2.DeliveryPreference:
    message = registry_pb2.DeliveryPreference(category=category)
    if choice.in_app is not None:
        message.in_app = choice.in_app
    if choice.push is not None:
        message.push = choice.push
    if choice.webhook is not None:
        message.webhook = choice.webhook
    return message


def preferences_from_proto(user_id: str, message: registry_pb2.Preferences) -> UserPreferences:
    """A user's preferences as a PutPreferences request states them, checked.

    Raises:
        InvalidArgument: a bad category name, one listed twice, too many, or a category on
            the default.
    """
    if message.defaults.category:
        raise InvalidArgument("preferences.defaults.category must be empty (it is the default)")
    categories = check_preferences(
        [(entry.category, _choice_from_proto(entry)) for entry in message.categories]
    )
    return UserPreferences(user_id, _choice_from_proto(message.defaults), categories)


def preferences_to_proto(preferences: UserPreferences) -> registry_pb2.Preferences:
    message = registry_pb2.Preferences(
        user_id=preferences.user_id,
        defaults=_choice_to_proto("", preferences.defaults),
        categories=[
            _choice_to_proto(name, choice)
            for name, choice in sorted(preferences.categories.items())
        ],
    )
    if preferences.updated_at:
        set_timestamp(message.updated_at, preferences.updated_at)
    return message
