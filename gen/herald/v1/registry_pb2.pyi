import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from herald.v1 import notification_pb2 as _notification_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PresenceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESENCE_STATE_UNSPECIFIED: _ClassVar[PresenceState]
    PRESENCE_STATE_ONLINE: _ClassVar[PresenceState]
    PRESENCE_STATE_OFFLINE: _ClassVar[PresenceState]
    PRESENCE_STATE_RECONNECTING: _ClassVar[PresenceState]

class PushKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUSH_KIND_UNSPECIFIED: _ClassVar[PushKind]
    PUSH_KIND_FCM: _ClassVar[PushKind]
    PUSH_KIND_APNS: _ClassVar[PushKind]
    PUSH_KIND_WEBPUSH: _ClassVar[PushKind]

class WebhookEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEBHOOK_EVENT_KIND_UNSPECIFIED: _ClassVar[WebhookEventKind]
    WEBHOOK_EVENT_KIND_DELIVERED: _ClassVar[WebhookEventKind]
    WEBHOOK_EVENT_KIND_ACKED: _ClassVar[WebhookEventKind]
    WEBHOOK_EVENT_KIND_FAILED: _ClassVar[WebhookEventKind]
    WEBHOOK_EVENT_KIND_EXPIRED: _ClassVar[WebhookEventKind]
PRESENCE_STATE_UNSPECIFIED: PresenceState
PRESENCE_STATE_ONLINE: PresenceState
PRESENCE_STATE_OFFLINE: PresenceState
PRESENCE_STATE_RECONNECTING: PresenceState
PUSH_KIND_UNSPECIFIED: PushKind
PUSH_KIND_FCM: PushKind
PUSH_KIND_APNS: PushKind
PUSH_KIND_WEBPUSH: PushKind
WEBHOOK_EVENT_KIND_UNSPECIFIED: WebhookEventKind
WEBHOOK_EVENT_KIND_DELIVERED: WebhookEventKind
WEBHOOK_EVENT_KIND_ACKED: WebhookEventKind
WEBHOOK_EVENT_KIND_FAILED: WebhookEventKind
WEBHOOK_EVENT_KIND_EXPIRED: WebhookEventKind

class Session(_message.Message):
    __slots__ = ("session_id", "tenant_id", "user_id", "node_id", "node_address", "device", "channels", "connected_at", "last_seen_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    tenant_id: str
    user_id: str
    node_id: str
    node_address: str
    device: str
    channels: _containers.RepeatedScalarFieldContainer[str]
    connected_at: _timestamp_pb2.Timestamp
    last_seen_at: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., node_id: _Optional[str] = ..., node_address: _Optional[str] = ..., device: _Optional[str] = ..., channels: _Optional[_Iterable[str]] = ..., connected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisterSessionRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class RegisterSessionResponse(_message.Message):
    __slots__ = ("lease_seconds",)
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lease_seconds: int
    def __init__(self, lease_seconds: _Optional[int] = ...) -> None: ...

class HeartbeatSessionRequest(_message.Message):
    __slots__ = ("tenant_id", "session_ids")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant_id: _Optional[str] = ..., session_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatSessionResponse(_message.Message):
    __slots__ = ("unknown_session_ids",)
    UNKNOWN_SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    unknown_session_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unknown_session_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UnregisterSessionRequest(_message.Message):
    __slots__ = ("tenant_id", "session_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    session_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class UnregisterSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPresenceRequest(_message.Message):
    __slots__ = ("tenant_id", "user_ids")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant_id: _Optional[str] = ..., user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UserPresence(_message.Message):
    __slots__ = ("user_id", "state", "session_count", "since")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SESSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    state: PresenceState
    session_count: int
    since: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., state: _Optional[_Union[PresenceState, str]] = ..., session_count: _Optional[int] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetPresenceResponse(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[UserPresence]
    def __init__(self, users: _Optional[_Iterable[_Union[UserPresence, _Mapping]]] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("tenant_id", "user_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ...) -> None: ...

class DisconnectRequest(_message.Message):
    __slots__ = ("tenant_id", "session_id", "user_id", "reason")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    session_id: str
    user_id: str
    reason: str
    def __init__(self, tenant_id: _Optional[str] = ..., session_id: _Optional[str] = ..., user_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DisconnectResponse(_message.Message):
    __slots__ = ("disconnected",)
    DISCONNECTED_FIELD_NUMBER: _ClassVar[int]
    disconnected: int
    def __init__(self, disconnected: _Optional[int] = ...) -> None: ...

class JoinChannelRequest(_message.Message):
    __slots__ = ("tenant_id", "session_id", "channel")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    session_id: str
    channel: str
    def __init__(self, tenant_id: _Optional[str] = ..., session_id: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class JoinChannelResponse(_message.Message):
    __slots__ = ("channels",)
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, channels: _Optional[_Iterable[str]] = ...) -> None: ...

class LeaveChannelRequest(_message.Message):
    __slots__ = ("tenant_id", "session_id", "channel")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    session_id: str
    channel: str
    def __init__(self, tenant_id: _Optional[str] = ..., session_id: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class LeaveChannelResponse(_message.Message):
    __slots__ = ("channels",)
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, channels: _Optional[_Iterable[str]] = ...) -> None: ...

class TemplateContent(_message.Message):
    __slots__ = ("title", "body", "image_url", "actions")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    title: str
    body: str
    image_url: str
    actions: _containers.RepeatedCompositeFieldContainer[_notification_pb2.Action]
    def __init__(self, title: _Optional[str] = ..., body: _Optional[str] = ..., image_url: _Optional[str] = ..., actions: _Optional[_Iterable[_Union[_notification_pb2.Action, _Mapping]]] = ...) -> None: ...

class Template(_message.Message):
    __slots__ = ("template_id", "version", "default_locale", "locales", "created_at")
    class LocalesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TemplateContent
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TemplateContent, _Mapping]] = ...) -> None: ...
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LOCALE_FIELD_NUMBER: _ClassVar[int]
    LOCALES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    version: int
    default_locale: str
    locales: _containers.MessageMap[str, TemplateContent]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, template_id: _Optional[str] = ..., version: _Optional[int] = ..., default_locale: _Optional[str] = ..., locales: _Optional[_Mapping[str, TemplateContent]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PutTemplateRequest(_message.Message):
    __slots__ = ("tenant_id", "template")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    template: Template
    def __init__(self, tenant_id: _Optional[str] = ..., template: _Optional[_Union[Template, _Mapping]] = ...) -> None: ...

class PutTemplateResponse(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: Template
    def __init__(self, template: _Optional[_Union[Template, _Mapping]] = ...) -> None: ...

class GetTemplateRequest(_message.Message):
    __slots__ = ("tenant_id", "template_id", "version")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    template_id: str
    version: int
    def __init__(self, tenant_id: _Optional[str] = ..., template_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetTemplateResponse(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: Template
    def __init__(self, template: _Optional[_Union[Template, _Mapping]] = ...) -> None: ...

class ListTemplatesRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListTemplatesResponse(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[Template]
    def __init__(self, templates: _Optional[_Iterable[_Union[Template, _Mapping]]] = ...) -> None: ...

class DeleteTemplateRequest(_message.Message):
    __slots__ = ("tenant_id", "template_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    template_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., template_id: _Optional[str] = ...) -> None: ...

class DeleteTemplateResponse(_message.Message):
    __slots__ = ("deleted_versions",)
    DELETED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    deleted_versions: int
    def __init__(self, deleted_versions: _Optional[int] = ...) -> None: ...

class TenantRateLimits(_message.Message):
    __slots__ = ("tenant_send_rate", "tenant_send_burst", "key_send_rate", "key_send_burst", "tenant_subscribe_rate", "tenant_subscribe_burst", "user_subscribe_rate", "user_subscribe_burst")
    TENANT_SEND_RATE_FIELD_NUMBER: _ClassVar[int]
    TENANT_SEND_BURST_FIELD_NUMBER: _ClassVar[int]
    KEY_SEND_RATE_FIELD_NUMBER: _ClassVar[int]
    KEY_SEND_BURST_FIELD_NUMBER: _ClassVar[int]
    TENANT_SUBSCRIBE_RATE_FIELD_NUMBER: _ClassVar[int]
    TENANT_SUBSCRIBE_BURST_FIELD_NUMBER: _ClassVar[int]
    USER_SUBSCRIBE_RATE_FIELD_NUMBER: _ClassVar[int]
    USER_SUBSCRIBE_BURST_FIELD_NUMBER: _ClassVar[int]
    tenant_send_rate: float
    tenant_send_burst: int
    key_send_rate: float
    key_send_burst: int
    tenant_subscribe_rate: float
    tenant_subscribe_burst: int
    user_subscribe_rate: float
    user_subscribe_burst: int
    def __init__(self, tenant_send_rate: _Optional[float] = ..., tenant_send_burst: _Optional[int] = ..., key_send_rate: _Optional[float] = ..., key_send_burst: _Optional[int] = ..., tenant_subscribe_rate: _Optional[float] = ..., tenant_subscribe_burst: _Optional[int] = ..., user_subscribe_rate: _Optional[float] = ..., user_subscribe_burst: _Optional[int] = ...) -> None: ...

class StreamPolicy(_message.Message):
    __slots__ = ("compression", "compression_min_bytes", "signing_required", "allowed_formats")
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_MIN_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNING_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FORMATS_FIELD_NUMBER: _ClassVar[int]
    compression: _containers.RepeatedScalarFieldContainer[str]
    compression_min_bytes: int
    signing_required: bool
    allowed_formats: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, compression: _Optional[_Iterable[str]] = ..., compression_min_bytes: _Optional[int] = ..., signing_required: _Optional[bool] = ..., allowed_formats: _Optional[_Iterable[str]] = ...) -> None: ...

class TenantSettings(_message.Message):
    __slots__ = ("tenant_id", "version", "rate_limits", "stream_policy", "updated_at", "updated_by", "default_ttl_seconds", "max_users_per_send", "webhooks", "push_fallback")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    STREAM_POLICY_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_USERS_PER_SEND_FIELD_NUMBER: _ClassVar[int]
    WEBHOOKS_FIELD_NUMBER: _ClassVar[int]
    PUSH_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    version: int
    rate_limits: TenantRateLimits
    stream_policy: StreamPolicy
    updated_at: _timestamp_pb2.Timestamp
    updated_by: str
    default_ttl_seconds: int
    max_users_per_send: int
    webhooks: WebhookSettings
    push_fallback: PushFallbackSettings
    def __init__(self, tenant_id: _Optional[str] = ..., version: _Optional[int] = ..., rate_limits: _Optional[_Union[TenantRateLimits, _Mapping]] = ..., stream_policy: _Optional[_Union[StreamPolicy, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ..., default_ttl_seconds: _Optional[int] = ..., max_users_per_send: _Optional[int] = ..., webhooks: _Optional[_Union[WebhookSettings, _Mapping]] = ..., push_fallback: _Optional[_Union[PushFallbackSettings, _Mapping]] = ...) -> None: ...

class PushFallbackSettings(_message.Message):
    __slots__ = ("enabled", "delay_seconds", "fcm", "apns", "web_push")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FCM_FIELD_NUMBER: _ClassVar[int]
    APNS_FIELD_NUMBER: _ClassVar[int]
    WEB_PUSH_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    delay_seconds: int
    fcm: FcmCredentials
    apns: ApnsCredentials
    web_push: WebPushCredentials
    def __init__(self, enabled: _Optional[bool] = ..., delay_seconds: _Optional[int] = ..., fcm: _Optional[_Union[FcmCredentials, _Mapping]] = ..., apns: _Optional[_Union[ApnsCredentials, _Mapping]] = ..., web_push: _Optional[_Union[WebPushCredentials, _Mapping]] = ...) -> None: ...

class FcmCredentials(_message.Message):
    __slots__ = ("project_id", "service_account_json", "service_account_json_set")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_JSON_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_JSON_SET_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    service_account_json: str
    service_account_json_set: bool
    def __init__(self, project_id: _Optional[str] = ..., service_account_json: _Optional[str] = ..., service_account_json_set: _Optional[bool] = ...) -> None: ...

class ApnsCredentials(_message.Message):
    __slots__ = ("team_id", "key_id", "private_key_p8", "private_key_p8_set", "topic", "production")
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_P8_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_P8_SET_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PRODUCTION_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    key_id: str
    private_key_p8: str
    private_key_p8_set: bool
    topic: str
    production: bool
    def __init__(self, team_id: _Optional[str] = ..., key_id: _Optional[str] = ..., private_key_p8: _Optional[str] = ..., private_key_p8_set: _Optional[bool] = ..., topic: _Optional[str] = ..., production: _Optional[bool] = ...) -> None: ...

class WebPushCredentials(_message.Message):
    __slots__ = ("vapid_private_key", "vapid_private_key_set", "vapid_public_key", "subject")
    VAPID_PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    VAPID_PRIVATE_KEY_SET_FIELD_NUMBER: _ClassVar[int]
    VAPID_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    vapid_private_key: str
    vapid_private_key_set: bool
    vapid_public_key: str
    subject: str
    def __init__(self, vapid_private_key: _Optional[str] = ..., vapid_private_key_set: _Optional[bool] = ..., vapid_public_key: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...

class WebPushSubscription(_message.Message):
    __slots__ = ("endpoint", "p256dh", "auth")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    P256DH_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    p256dh: str
    auth: str
    def __init__(self, endpoint: _Optional[str] = ..., p256dh: _Optional[str] = ..., auth: _Optional[str] = ...) -> None: ...

class PushTarget(_message.Message):
    __slots__ = ("target_id", "user_id", "kind", "token", "web_push", "registered_at")
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    WEB_PUSH_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    target_id: str
    user_id: str
    kind: PushKind
    token: str
    web_push: WebPushSubscription
    registered_at: _timestamp_pb2.Timestamp
    def __init__(self, target_id: _Optional[str] = ..., user_id: _Optional[str] = ..., kind: _Optional[_Union[PushKind, str]] = ..., token: _Optional[str] = ..., web_push: _Optional[_Union[WebPushSubscription, _Mapping]] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisterPushTargetRequest(_message.Message):
    __slots__ = ("user_id", "kind", "token", "web_push")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    WEB_PUSH_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    kind: PushKind
    token: str
    web_push: WebPushSubscription
    def __init__(self, user_id: _Optional[str] = ..., kind: _Optional[_Union[PushKind, str]] = ..., token: _Optional[str] = ..., web_push: _Optional[_Union[WebPushSubscription, _Mapping]] = ...) -> None: ...

class RegisterPushTargetResponse(_message.Message):
    __slots__ = ("target",)
    TARGET_FIELD_NUMBER: _ClassVar[int]
    target: PushTarget
    def __init__(self, target: _Optional[_Union[PushTarget, _Mapping]] = ...) -> None: ...

class UnregisterPushTargetRequest(_message.Message):
    __slots__ = ("user_id", "target_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    target_id: str
    def __init__(self, user_id: _Optional[str] = ..., target_id: _Optional[str] = ...) -> None: ...

class UnregisterPushTargetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPushTargetsRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ListPushTargetsResponse(_message.Message):
    __slots__ = ("targets",)
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedCompositeFieldContainer[PushTarget]
    def __init__(self, targets: _Optional[_Iterable[_Union[PushTarget, _Mapping]]] = ...) -> None: ...

class GetTenantSettingsRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class GetTenantSettingsResponse(_message.Message):
    __slots__ = ("settings", "effective_rate_limits")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    settings: TenantSettings
    effective_rate_limits: TenantRateLimits
    def __init__(self, settings: _Optional[_Union[TenantSettings, _Mapping]] = ..., effective_rate_limits: _Optional[_Union[TenantRateLimits, _Mapping]] = ...) -> None: ...

class PutTenantSettingsRequest(_message.Message):
    __slots__ = ("tenant_id", "settings", "expected_version")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    settings: TenantSettings
    expected_version: int
    def __init__(self, tenant_id: _Optional[str] = ..., settings: _Optional[_Union[TenantSettings, _Mapping]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class PutTenantSettingsResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: TenantSettings
    def __init__(self, settings: _Optional[_Union[TenantSettings, _Mapping]] = ...) -> None: ...

class DeleteTenantSettingsRequest(_message.Message):
    __slots__ = ("tenant_id", "expected_version")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    expected_version: int
    def __init__(self, tenant_id: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DeleteTenantSettingsResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: TenantSettings
    def __init__(self, settings: _Optional[_Union[TenantSettings, _Mapping]] = ...) -> None: ...

class ListTenantSettingsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTenantSettingsResponse(_message.Message):
    __slots__ = ("settings", "next_page_token")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    settings: _containers.RepeatedCompositeFieldContainer[TenantSettings]
    next_page_token: str
    def __init__(self, settings: _Optional[_Iterable[_Union[TenantSettings, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("name", "member_count", "created_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    member_count: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., member_count: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateSegmentRequest(_message.Message):
    __slots__ = ("name", "tenant_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    tenant_id: str
    def __init__(self, name: _Optional[str] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class CreateSegmentResponse(_message.Message):
    __slots__ = ("segment",)
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    segment: Segment
    def __init__(self, segment: _Optional[_Union[Segment, _Mapping]] = ...) -> None: ...

class AddSegmentMembersRequest(_message.Message):
    __slots__ = ("name", "user_ids", "tenant_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    tenant_id: str
    def __init__(self, name: _Optional[str] = ..., user_ids: _Optional[_Iterable[str]] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class AddSegmentMembersResponse(_message.Message):
    __slots__ = ("added", "member_count")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    added: int
    member_count: int
    def __init__(self, added: _Optional[int] = ..., member_count: _Optional[int] = ...) -> None: ...

class RemoveSegmentMembersRequest(_message.Message):
    __slots__ = ("name", "user_ids", "tenant_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    tenant_id: str
    def __init__(self, name: _Optional[str] = ..., user_ids: _Optional[_Iterable[str]] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class RemoveSegmentMembersResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...

class ListSegmentMembersRequest(_message.Message):
    __slots__ = ("name", "page_size", "page_token", "tenant_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    page_token: str
    tenant_id: str
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class ListSegmentMembersResponse(_message.Message):
    __slots__ = ("user_ids", "next_page_token")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListSegmentsRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListSegmentsResponse(_message.Message):
    __slots__ = ("segments",)
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    def __init__(self, segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ...) -> None: ...

class DeleteSegmentRequest(_message.Message):
    __slots__ = ("name", "tenant_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    tenant_id: str
    def __init__(self, name: _Optional[str] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class DeleteSegmentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeliveryPreference(_message.Message):
    __slots__ = ("category", "in_app", "push", "webhook")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    IN_APP_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    category: str
    in_app: bool
    push: bool
    webhook: bool
    def __init__(self, category: _Optional[str] = ..., in_app: _Optional[bool] = ..., push: _Optional[bool] = ..., webhook: _Optional[bool] = ...) -> None: ...

class Preferences(_message.Message):
    __slots__ = ("user_id", "defaults", "categories", "updated_at")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    defaults: DeliveryPreference
    categories: _containers.RepeatedCompositeFieldContainer[DeliveryPreference]
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., defaults: _Optional[_Union[DeliveryPreference, _Mapping]] = ..., categories: _Optional[_Iterable[_Union[DeliveryPreference, _Mapping]]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetPreferencesRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetPreferencesResponse(_message.Message):
    __slots__ = ("preferences",)
    PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    preferences: Preferences
    def __init__(self, preferences: _Optional[_Union[Preferences, _Mapping]] = ...) -> None: ...

class PutPreferencesRequest(_message.Message):
    __slots__ = ("user_id", "preferences")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    preferences: Preferences
    def __init__(self, user_id: _Optional[str] = ..., preferences: _Optional[_Union[Preferences, _Mapping]] = ...) -> None: ...

class PutPreferencesResponse(_message.Message):
    __slots__ = ("preferences",)
    PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    preferences: Preferences
    def __init__(self, preferences: _Optional[_Union[Preferences, _Mapping]] = ...) -> None: ...

class WebhookSettings(_message.Message):
    __slots__ = ("enabled", "url", "secret", "secret_set", "events", "max_batch_events", "max_delay_ms")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    SECRET_SET_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_EVENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    url: str
    secret: str
    secret_set: bool
    events: _containers.RepeatedScalarFieldContainer[WebhookEventKind]
    max_batch_events: int
    max_delay_ms: int
    def __init__(self, enabled: _Optional[bool] = ..., url: _Optional[str] = ..., secret: _Optional[str] = ..., secret_set: _Optional[bool] = ..., events: _Optional[_Iterable[_Union[WebhookEventKind, str]]] = ..., max_batch_events: _Optional[int] = ..., max_delay_ms: _Optional[int] = ...) -> None: ...

class ParkedWebhook(_message.Message):
    __slots__ = ("batch_id", "event_count", "reason", "attempts", "created_at", "parked_at", "replay_pending")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PARKED_AT_FIELD_NUMBER: _ClassVar[int]
    REPLAY_PENDING_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    event_count: int
    reason: str
    attempts: int
    created_at: _timestamp_pb2.Timestamp
    parked_at: _timestamp_pb2.Timestamp
    replay_pending: bool
    def __init__(self, batch_id: _Optional[str] = ..., event_count: _Optional[int] = ..., reason: _Optional[str] = ..., attempts: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., parked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., replay_pending: _Optional[bool] = ...) -> None: ...

class ListParkedWebhooksRequest(_message.Message):
    __slots__ = ("tenant_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListParkedWebhooksResponse(_message.Message):
    __slots__ = ("batches", "next_page_token")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[ParkedWebhook]
    next_page_token: str
    def __init__(self, batches: _Optional[_Iterable[_Union[ParkedWebhook, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReplayWebhooksRequest(_message.Message):
    __slots__ = ("tenant_id", "batch_ids", "all")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    batch_ids: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    def __init__(self, tenant_id: _Optional[str] = ..., batch_ids: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ...) -> None: ...

class ReplayWebhooksResponse(_message.Message):
    __slots__ = ("replayed",)
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    replayed: int
    def __init__(self, replayed: _Optional[int] = ...) -> None: ...

class DeleteParkedWebhooksRequest(_message.Message):
    __slots__ = ("tenant_id", "batch_ids", "all")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    batch_ids: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    def __init__(self, tenant_id: _Optional[str] = ..., batch_ids: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ...) -> None: ...

class DeleteParkedWebhooksResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...
