"""Domain values shared by the services: what a notification, a log, a status and a session are.

Plain values only: no I/O, no wire types (services/model.py converts between these and the
herald.v1 messages), no imports from the service packages, which all import from here.

Status states only move forward along QUEUED -> DELIVERED -> ACKED; EXPIRED and FAILED end a
delivery attempt (a FAILED notification stays in the log and may still be DELIVERED and ACKED on
the next connect; an EXPIRED one never changes again). SUPPRESSED is where a recipient whose
preferences turned the notification off in-app starts and stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Final, NamedTuple

from services.errors import InvalidArgument

USER: Final = "user"
CHANNEL: Final = "channel"
BROADCAST_KIND: Final = "broadcast"
_CHANNEL_PREFIX: Final = "channel:"


class LogKey(NamedTuple):
    """Which log of a tenant: a user's own log (the inbox), a channel's, or the broadcast log.

    `kind` is one of USER, CHANNEL and BROADCAST_KIND; `name` is the user id or the channel name
    (empty for the broadcast log)."""

    kind: str
    name: str = ""

    @property
    def is_user(self) -> bool:
        return self.kind == USER

    @property
    def client_name(self) -> str:
        """How the subscriber names the log: `user` (its own), `broadcast`, `channel:<name>`."""
        if self.kind == CHANNEL:
            return _CHANNEL_PREFIX + self.name
        return self.kind

    @property
    def stored(self) -> str:
        """A string naming the log within its tenant, for stores that key by strings."""
        return self.kind if self.kind == BROADCAST_KIND else f"{self.kind}:{self.name}"

    @staticmethod
    def from_stored(stored: str) -> LogKey:
        kind, _, name = stored.partition(":")
        return LogKey(kind, name)

    @staticmethod
    def from_client_name(name: str, user_id: str) -> LogKey:
        """The log a subscriber names (`user`, `broadcast`, `channel:<name>`).

        Raises:
            InvalidArgument: no log is named so.
        """
        if name == USER:
            return LogKey(USER, user_id)
        if name == BROADCAST_KIND:
            return BROADCAST
        if name.startswith(_CHANNEL_PREFIX) and len(name) > len(_CHANNEL_PREFIX):
            return LogKey(CHANNEL, name[len(_CHANNEL_PREFIX) :])
        raise InvalidArgument(
            f"unknown log {name[:64]!r}: logs are 'user', 'broadcast' and 'channel:<name>'"
        )


BROADCAST: Final = LogKey(BROADCAST_KIND)


def user_log(user_id: str) -> LogKey:
    return LogKey(USER, user_id)


def channel_log(channel: str) -> LogKey:
    return LogKey(CHANNEL, channel)


class TargetKind(Enum):
    USER = "user"
    USERS = "users"
    CHANNEL = "channel"
    BROADCAST = "broadcast"


class Accepted(NamedTuple):
    """A validated notification, fully resolved, ready to append to its logs.

    A NamedTuple rather than a frozen dataclass: one is built per notification at ingest, and a
    frozen dataclass's __init__ costs a `object.__setattr__` call per field."""

    notification_id: str
    tenant: str
    kind: TargetKind
    user_ids: tuple[str, ...]
    channel: str
    priority: int
    created_at: float
    expires_at: float
    # The encoded herald.v1.Notification, serialized once at ingest.
    encoded: bytes
    # The encoded herald.v1.Target, for the status record.
    target: bytes
    # The W3C traceparent of the Send's span, stored with the entries (services/tracing.py);
    # "" when tracing is off.
    trace_context: str = ""
    # Users of the target whose preferences turn the notification off in-app: not in
    # `user_ids`, no log entry, status SUPPRESSED (docs/preferences.md).
    muted: tuple[str, ...] = ()
    # Users of `user_ids` and `muted` whose preferences turn it off for push.
    no_push: frozenset[str] = frozenset()


class State(IntEnum):
    """Mirrors herald.v1.DeliveryState."""

    QUEUED = 1
    DELIVERED = 2
    ACKED = 3
    EXPIRED = 4
    FAILED = 5
    # Never in the recipient's log: its preferences turned the category off in-app.
    SUPPRESSED = 6


# Which state may follow which; anything else is ignored (e.g. a late DELIVERED after ACKED).
ALLOWED: dict[State | None, frozenset[State]] = {
    None: frozenset(State),
    # SUPPRESSED follows QUEUED only as every state may (a suppressed recipient is never
    # queued: it starts SUPPRESSED); it is final.
    State.QUEUED: frozenset(
        {State.DELIVERED, State.ACKED, State.EXPIRED, State.FAILED, State.SUPPRESSED}
    ),
    State.DELIVERED: frozenset({State.DELIVERED, State.ACKED, State.EXPIRED, State.FAILED}),
    State.FAILED: frozenset({State.DELIVERED, State.ACKED, State.EXPIRED}),
    State.ACKED: frozenset(),
    State.EXPIRED: frozenset(),
    State.SUPPRESSED: frozenset(),
}


@dataclass(slots=True)
class RecipientRecord:
    user_id: str
    state: State
    updated_at: float
    queued_at: float = 0.0
    delivered_at: float = 0.0
    acked_at: float = 0.0
    attempts: int = 0
    reason: str = ""
    read_at: float = 0.0


@dataclass(slots=True)
class NotificationRecord:
    notification_id: str
    tenant: str
    # The encoded herald.v1.Target.
    target: bytes
    created_at: float
    expires_at: float
    recipients: dict[str, RecipientRecord] = field(default_factory=dict)


class NewRecord(NamedTuple):
    """A notification just appended to its logs: each of `user_ids` starts QUEUED (channel and
    broadcast recipients are added by their first transition). A NamedTuple: one is built per
    notification at ingest."""

    notification_id: str
    tenant: str
    # The encoded herald.v1.Target.
    target: bytes
    created_at: float
    expires_at: float
    user_ids: tuple[str, ...]
    # The cursor of the notification's entry in each user's own log, in the order of
    # `user_ids`, once appended (a store that derives status from marks needs them; empty
    # before the append, and for users whose entry the log's bound pushed out at once: 0).
    cursors: tuple[int, ...] = ()


class Transition(NamedTuple):
    """A requested change of one recipient's state (a NamedTuple: several are built per
    delivery, and a frozen dataclass costs a call per field to build)."""

    notification_id: str
    user_id: str
    state: State
    reason: str = ""


@dataclass(slots=True)
class SessionInfo:
    session_id: str
    tenant: str
    user_id: str
    node_id: str
    node_address: str
    device: str = ""
    channels: tuple[str, ...] = ()
    connected_at: float = 0.0
    last_seen_at: float = 0.0


@dataclass(slots=True)
class UserPresenceRecord:
    user_id: str
    sessions: int
    # When the user's last session closed (0 while online or never seen).
    last_left_at: float = 0.0
    # When the user came online (first session opened).
    online_since: float = 0.0


@dataclass(frozen=True, slots=True)
class TemplateAction:
    action_id: str
    label: str
    url: str


@dataclass(frozen=True, slots=True)
class TemplateText:
    """A template's text in one locale; placeholders are written {{name}}."""

    title: str = ""
    body: str = ""
    image_url: str = ""
    actions: tuple[TemplateAction, ...] = ()


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    template_id: str
    version: int
    default_locale: str
    locales: dict[str, TemplateText] = field(default_factory=dict)
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class RateLimitOverrides:
    """A tenant's own rate limits (per second, and bursts); None takes the node's value."""

    tenant_send_rate: float | None = None
    tenant_send_burst: int | None = None
    key_send_rate: float | None = None
    key_send_burst: int | None = None
    tenant_subscribe_rate: float | None = None
    tenant_subscribe_burst: int | None = None
    user_subscribe_rate: float | None = None
    user_subscribe_burst: int | None = None


RATE_LIMIT_FIELDS: Final = tuple(RateLimitOverrides.__dataclass_fields__)


# The secrets of PushFallback: write-only on the API (docs/push.md), never in a repr or a log.
PUSH_SECRET_FIELDS: Final = ("fcm_service_account_json", "apns_private_key_p8", "vapid_private_key")


@dataclass(frozen=True, slots=True)
class PushFallback:
    """A tenant's offline fallback to push providers (herald.v1.PushFallbackSettings)."""

    enabled: bool = False
    # 0: DEFAULT_PUSH_DELAY_S.
    delay_s: int = 0
    fcm_project_id: str = ""
    fcm_service_account_json: str = field(default="", repr=False)
    apns_team_id: str = ""
    apns_key_id: str = ""
    apns_private_key_p8: str = field(default="", repr=False)
    apns_topic: str = ""
    apns_production: bool = False
    vapid_private_key: str = field(default="", repr=False)
    vapid_public_key: str = ""
    vapid_subject: str = ""

    @property
    def delay(self) -> int:
        return self.delay_s or DEFAULT_PUSH_DELAY_S


DEFAULT_PUSH_DELAY_S: Final = 30
MAX_PUSH_DELAY_S: Final = 86_400

# The delivery-state events a tenant's webhook may get, by name (herald.v1.WebhookEventKind).
WEBHOOK_EVENTS: Final = ("delivered", "acked", "failed", "expired")


@dataclass(frozen=True, slots=True)
class Webhooks:
    """A tenant's webhook for delivery-state events (herald.v1.WebhookSettings)."""

    enabled: bool = False
    url: str = ""
    secret: str = field(default="", repr=False)
    # Names from WEBHOOK_EVENTS; empty: every kind.
    events: tuple[str, ...] = ()
    # 0: the defaults (services/webhooks/settings.py).
    max_batch_events: int = 0
    max_delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    """What the transformer chain may do to a tenant's streams (herald.v1.StreamPolicy)."""

    compression: tuple[str, ...] = ()
    compression_min_bytes: int = 0
    signing_required: bool = False
    allowed_formats: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TenantSettingsRecord:
    """A tenant's settings at one version (0: never stored, every value the node's default)."""

    tenant: str
    version: int = 0
    rate_limits: RateLimitOverrides = RateLimitOverrides()
    # None: the stream nodes' defaults.
    stream_policy: StreamPolicy | None = None
    updated_at: float = 0.0
    updated_by: str = ""
    # What ingest applies to the tenant's sends (None: the node's HERALD_INGEST_* value).
    default_ttl_s: int | None = None
    max_users_per_send: int | None = None
    # None: no push fallback.
    push_fallback: PushFallback | None = None
    # None: no webhooks.
    webhooks: Webhooks | None = None
