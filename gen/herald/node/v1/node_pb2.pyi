from herald.v1 import ingest_pb2 as _ingest_pb2
from herald.v1 import notification_pb2 as _notification_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DispatchRequest(_message.Message):
    __slots__ = ("notifications",)
    NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    notifications: _containers.RepeatedCompositeFieldContainer[_notification_pb2.Notification]
    def __init__(self, notifications: _Optional[_Iterable[_Union[_notification_pb2.Notification, _Mapping]]] = ...) -> None: ...

class DispatchResponse(_message.Message):
    __slots__ = ("recipient_counts",)
    RECIPIENT_COUNTS_FIELD_NUMBER: _ClassVar[int]
    recipient_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, recipient_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class GetDeliveryStatusRequest(_message.Message):
    __slots__ = ("tenant_id", "notification_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    notification_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., notification_id: _Optional[str] = ...) -> None: ...

class GetDeliveryStatusResponse(_message.Message):
    __slots__ = ("found", "status")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    status: _ingest_pb2.GetStatusResponse
    def __init__(self, found: _Optional[bool] = ..., status: _Optional[_Union[_ingest_pb2.GetStatusResponse, _Mapping]] = ...) -> None: ...

class CloseSessionsRequest(_message.Message):
    __slots__ = ("tenant_id", "session_ids", "user_id", "reason")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    user_id: str
    reason: str
    def __init__(self, tenant_id: _Optional[str] = ..., session_ids: _Optional[_Iterable[str]] = ..., user_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CloseSessionsResponse(_message.Message):
    __slots__ = ("closed",)
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    closed: int
    def __init__(self, closed: _Optional[int] = ...) -> None: ...

class ChangeChannelsRequest(_message.Message):
    __slots__ = ("tenant_id", "session_id", "join", "leave")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    session_id: str
    join: _containers.RepeatedScalarFieldContainer[str]
    leave: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant_id: _Optional[str] = ..., session_id: _Optional[str] = ..., join: _Optional[_Iterable[str]] = ..., leave: _Optional[_Iterable[str]] = ...) -> None: ...

class ChangeChannelsResponse(_message.Message):
    __slots__ = ("found", "channels")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    channels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, found: _Optional[bool] = ..., channels: _Optional[_Iterable[str]] = ...) -> None: ...

class LogPublication(_message.Message):
    __slots__ = ("tenant_id", "log", "epoch", "head", "entries", "origin")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    log: str
    epoch: int
    head: int
    entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    origin: int
    def __init__(self, tenant_id: _Optional[str] = ..., log: _Optional[str] = ..., epoch: _Optional[int] = ..., head: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ..., origin: _Optional[int] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("cursor", "notification_id", "priority", "created_at", "expires_at", "notification_field", "trace_context")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_FIELD_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    notification_id: str
    priority: int
    created_at: float
    expires_at: float
    notification_field: bytes
    trace_context: str
    def __init__(self, cursor: _Optional[int] = ..., notification_id: _Optional[str] = ..., priority: _Optional[int] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., notification_field: _Optional[bytes] = ..., trace_context: _Optional[str] = ...) -> None: ...

class UserEventPublication(_message.Message):
    __slots__ = ("tenant_id", "user_id", "response", "origin")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    user_id: str
    response: bytes
    origin: int
    def __init__(self, tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., response: _Optional[bytes] = ..., origin: _Optional[int] = ...) -> None: ...
