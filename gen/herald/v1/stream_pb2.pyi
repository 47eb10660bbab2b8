import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from herald.v1 import ingest_pb2 as _ingest_pb2
from herald.v1 import notification_pb2 as _notification_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InboxAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INBOX_ACTION_UNSPECIFIED: _ClassVar[InboxAction]
    INBOX_ACTION_SEEN: _ClassVar[InboxAction]
    INBOX_ACTION_READ: _ClassVar[InboxAction]
    INBOX_ACTION_UNREAD: _ClassVar[InboxAction]
    INBOX_ACTION_ARCHIVE: _ClassVar[InboxAction]
    INBOX_ACTION_UNARCHIVE: _ClassVar[InboxAction]

class InboxFilter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INBOX_FILTER_UNSPECIFIED: _ClassVar[InboxFilter]
    INBOX_FILTER_ALL: _ClassVar[InboxFilter]
    INBOX_FILTER_ARCHIVED: _ClassVar[InboxFilter]
    INBOX_FILTER_UNREAD: _ClassVar[InboxFilter]
INBOX_ACTION_UNSPECIFIED: InboxAction
INBOX_ACTION_SEEN: InboxAction
INBOX_ACTION_READ: InboxAction
INBOX_ACTION_UNREAD: InboxAction
INBOX_ACTION_ARCHIVE: InboxAction
INBOX_ACTION_UNARCHIVE: InboxAction
INBOX_FILTER_UNSPECIFIED: InboxFilter
INBOX_FILTER_ALL: InboxFilter
INBOX_FILTER_ARCHIVED: InboxFilter
INBOX_FILTER_UNREAD: InboxFilter

class LogCursor(_message.Message):
    __slots__ = ("log", "cursor", "epoch")
    LOG_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    log: str
    cursor: int
    epoch: int
    def __init__(self, log: _Optional[str] = ..., cursor: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class LogPosition(_message.Message):
    __slots__ = ("log", "epoch", "head", "recovered")
    LOG_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    log: str
    epoch: int
    head: int
    recovered: bool
    def __init__(self, log: _Optional[str] = ..., epoch: _Optional[int] = ..., head: _Optional[int] = ..., recovered: _Optional[bool] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("cursors", "channels", "device", "accept_encodings")
    CURSORS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    cursors: _containers.RepeatedCompositeFieldContainer[LogCursor]
    channels: _containers.RepeatedScalarFieldContainer[str]
    device: str
    accept_encodings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cursors: _Optional[_Iterable[_Union[LogCursor, _Mapping]]] = ..., channels: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., accept_encodings: _Optional[_Iterable[str]] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("session_id", "node_id", "user_id", "tenant_id", "heartbeat_interval_seconds", "channels", "logs", "encodings")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    node_id: str
    user_id: str
    tenant_id: str
    heartbeat_interval_seconds: int
    channels: _containers.RepeatedScalarFieldContainer[str]
    logs: _containers.RepeatedCompositeFieldContainer[LogPosition]
    encodings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., node_id: _Optional[str] = ..., user_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[int] = ..., channels: _Optional[_Iterable[str]] = ..., logs: _Optional[_Iterable[_Union[LogPosition, _Mapping]]] = ..., encodings: _Optional[_Iterable[str]] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("notification", "log", "cursor", "attempt", "resume_cursor", "sealed")
    NOTIFICATION_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESUME_CURSOR_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    notification: _notification_pb2.Notification
    log: str
    cursor: int
    attempt: int
    resume_cursor: int
    sealed: SealedNotification
    def __init__(self, notification: _Optional[_Union[_notification_pb2.Notification, _Mapping]] = ..., log: _Optional[str] = ..., cursor: _Optional[int] = ..., attempt: _Optional[int] = ..., resume_cursor: _Optional[int] = ..., sealed: _Optional[_Union[SealedNotification, _Mapping]] = ...) -> None: ...

class SealedNotification(_message.Message):
    __slots__ = ("format", "encoding", "key_id", "signature", "payload")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    format: str
    encoding: str
    key_id: str
    signature: bytes
    payload: bytes
    def __init__(self, format: _Optional[str] = ..., encoding: _Optional[str] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., payload: _Optional[bytes] = ...) -> None: ...

class DeliveryBatch(_message.Message):
    __slots__ = ("deliveries",)
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("server_time",)
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Closing(_message.Message):
    __slots__ = ("reason", "message", "retry_after_ms")
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REASON_UNSPECIFIED: _ClassVar[Closing.Reason]
        REASON_SHUTDOWN: _ClassVar[Closing.Reason]
        REASON_SLOW_CONSUMER: _ClassVar[Closing.Reason]
        REASON_DISCONNECTED: _ClassVar[Closing.Reason]
        REASON_REPLACED: _ClassVar[Closing.Reason]
        REASON_TOKEN_EXPIRED: _ClassVar[Closing.Reason]
    REASON_UNSPECIFIED: Closing.Reason
    REASON_SHUTDOWN: Closing.Reason
    REASON_SLOW_CONSUMER: Closing.Reason
    REASON_DISCONNECTED: Closing.Reason
    REASON_REPLACED: Closing.Reason
    REASON_TOKEN_EXPIRED: Closing.Reason
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    reason: Closing.Reason
    message: str
    retry_after_ms: int
    def __init__(self, reason: _Optional[_Union[Closing.Reason, str]] = ..., message: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("deliveries", "heartbeat", "session_started", "closing", "inbox_event")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SESSION_STARTED_FIELD_NUMBER: _ClassVar[int]
    CLOSING_FIELD_NUMBER: _ClassVar[int]
    INBOX_EVENT_FIELD_NUMBER: _ClassVar[int]
    deliveries: DeliveryBatch
    heartbeat: Heartbeat
    session_started: SessionStarted
    closing: Closing
    inbox_event: InboxEvent
    def __init__(self, deliveries: _Optional[_Union[DeliveryBatch, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., session_started: _Optional[_Union[SessionStarted, _Mapping]] = ..., closing: _Optional[_Union[Closing, _Mapping]] = ..., inbox_event: _Optional[_Union[InboxEvent, _Mapping]] = ...) -> None: ...

class InboxCounts(_message.Message):
    __slots__ = ("unseen", "unread", "total")
    UNSEEN_FIELD_NUMBER: _ClassVar[int]
    UNREAD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    unseen: int
    unread: int
    total: int
    def __init__(self, unseen: _Optional[int] = ..., unread: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class InboxEvent(_message.Message):
    __slots__ = ("action", "notification_ids", "all", "up_to_cursor", "counts", "changed_at")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    UP_TO_CURSOR_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    action: InboxAction
    notification_ids: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    up_to_cursor: int
    counts: InboxCounts
    changed_at: _timestamp_pb2.Timestamp
    def __init__(self, action: _Optional[_Union[InboxAction, str]] = ..., notification_ids: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ..., up_to_cursor: _Optional[int] = ..., counts: _Optional[_Union[InboxCounts, _Mapping]] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("notification_ids", "up_to")
    NOTIFICATION_IDS_FIELD_NUMBER: _ClassVar[int]
    UP_TO_FIELD_NUMBER: _ClassVar[int]
    notification_ids: _containers.RepeatedScalarFieldContainer[str]
    up_to: _containers.RepeatedCompositeFieldContainer[LogCursor]
    def __init__(self, notification_ids: _Optional[_Iterable[str]] = ..., up_to: _Optional[_Iterable[_Union[LogCursor, _Mapping]]] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("acked",)
    ACKED_FIELD_NUMBER: _ClassVar[int]
    acked: int
    def __init__(self, acked: _Optional[int] = ...) -> None: ...

class AckStreamRequest(_message.Message):
    __slots__ = ("notification_ids", "up_to")
    NOTIFICATION_IDS_FIELD_NUMBER: _ClassVar[int]
    UP_TO_FIELD_NUMBER: _ClassVar[int]
    notification_ids: _containers.RepeatedScalarFieldContainer[str]
    up_to: _containers.RepeatedCompositeFieldContainer[LogCursor]
    def __init__(self, notification_ids: _Optional[_Iterable[str]] = ..., up_to: _Optional[_Iterable[_Union[LogCursor, _Mapping]]] = ...) -> None: ...

class AckStreamResponse(_message.Message):
    __slots__ = ("acked",)
    ACKED_FIELD_NUMBER: _ClassVar[int]
    acked: int
    def __init__(self, acked: _Optional[int] = ...) -> None: ...

class ListInboxRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "filter", "accept_encodings")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    filter: InboxFilter
    accept_encodings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[_Union[InboxFilter, str]] = ..., accept_encodings: _Optional[_Iterable[str]] = ...) -> None: ...

class InboxItem(_message.Message):
    __slots__ = ("notification", "cursor", "state", "read_at", "seen_at", "archived_at", "sealed")
    NOTIFICATION_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    READ_AT_FIELD_NUMBER: _ClassVar[int]
    SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_AT_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    notification: _notification_pb2.Notification
    cursor: int
    state: _ingest_pb2.DeliveryState
    read_at: _timestamp_pb2.Timestamp
    seen_at: _timestamp_pb2.Timestamp
    archived_at: _timestamp_pb2.Timestamp
    sealed: SealedNotification
    def __init__(self, notification: _Optional[_Union[_notification_pb2.Notification, _Mapping]] = ..., cursor: _Optional[int] = ..., state: _Optional[_Union[_ingest_pb2.DeliveryState, str]] = ..., read_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., archived_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sealed: _Optional[_Union[SealedNotification, _Mapping]] = ...) -> None: ...

class ListInboxResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[InboxItem]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[InboxItem, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateInboxStateRequest(_message.Message):
    __slots__ = ("notification_ids", "action")
    NOTIFICATION_IDS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    notification_ids: _containers.RepeatedScalarFieldContainer[str]
    action: InboxAction
    def __init__(self, notification_ids: _Optional[_Iterable[str]] = ..., action: _Optional[_Union[InboxAction, str]] = ...) -> None: ...

class UpdateInboxStateResponse(_message.Message):
    __slots__ = ("changed", "counts")
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    changed: int
    counts: InboxCounts
    def __init__(self, changed: _Optional[int] = ..., counts: _Optional[_Union[InboxCounts, _Mapping]] = ...) -> None: ...

class MarkAllReadRequest(_message.Message):
    __slots__ = ("up_to_cursor",)
    UP_TO_CURSOR_FIELD_NUMBER: _ClassVar[int]
    up_to_cursor: int
    def __init__(self, up_to_cursor: _Optional[int] = ...) -> None: ...

class MarkAllReadResponse(_message.Message):
    __slots__ = ("marked", "counts")
    MARKED_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    marked: int
    counts: InboxCounts
    def __init__(self, marked: _Optional[int] = ..., counts: _Optional[_Union[InboxCounts, _Mapping]] = ...) -> None: ...

class GetInboxCountsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInboxCountsResponse(_message.Message):
    __slots__ = ("counts",)
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    counts: InboxCounts
    def __init__(self, counts: _Optional[_Union[InboxCounts, _Mapping]] = ...) -> None: ...

class MarkReadRequest(_message.Message):
    __slots__ = ("notification_ids",)
    NOTIFICATION_IDS_FIELD_NUMBER: _ClassVar[int]
    notification_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, notification_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetSigningKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SigningKey(_message.Message):
    __slots__ = ("key_id", "algorithm", "public_key", "active")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    algorithm: str
    public_key: bytes
    active: bool
    def __init__(self, key_id: _Optional[str] = ..., algorithm: _Optional[str] = ..., public_key: _Optional[bytes] = ..., active: _Optional[bool] = ...) -> None: ...

class GetSigningKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[SigningKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[SigningKey, _Mapping]]] = ...) -> None: ...

class MarkReadResponse(_message.Message):
    __slots__ = ("marked",)
    MARKED_FIELD_NUMBER: _ClassVar[int]
    marked: int
    def __init__(self, marked: _Optional[int] = ...) -> None: ...

class WebSocketClientFrame(_message.Message):
    __slots__ = ("subscribe", "ack")
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    subscribe: WebSocketSubscribe
    ack: AckRequest
    def __init__(self, subscribe: _Optional[_Union[WebSocketSubscribe, _Mapping]] = ..., ack: _Optional[_Union[AckRequest, _Mapping]] = ...) -> None: ...

class WebSocketSubscribe(_message.Message):
    __slots__ = ("token", "request")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    token: str
    request: SubscribeRequest
    def __init__(self, token: _Optional[str] = ..., request: _Optional[_Union[SubscribeRequest, _Mapping]] = ...) -> None: ...
