"""Configuration: one frozen settings class per concern, read from `HERALD_*` variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "herald"


class ServerSettings(BaseSettings):
    """Where a node listens and how it treats long-lived connections."""

    model_config = SettingsConfigDict(env_prefix="HERALD_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    node_id: str = ""
    # Address other nodes use to reach this one; defaults to host:port.
    advertise_address: str = ""
    # A second listener for node-to-node calls (none when unset). With
    # HERALD_TLS_CLIENT_CA_FILE it requires client certificates, and node calls are refused
    # anywhere else; the advertise address defaults to host:node_port.
    node_port: int | None = Field(default=None, ge=0, le=65535)
    # The WebSocket endpoint of a stream node (docs/websocket.md): its port; unset or `off`:
    # none. `herald up` and `herald serve stream` default it to 8081 (their --ws-port flag).
    ws_port: int | None = Field(default=None, ge=0, le=65535)
    # The largest frame a WebSocket client may send (a subscribe or an ack), in bytes; a larger
    # one closes the connection with 1009 (message too big).
    ws_max_frame_bytes: int = Field(default=65_536, ge=1024, le=4 * 1024 * 1024)
    # How long a WebSocket client has, once connected, to send its subscribe frame.
    ws_subscribe_timeout_s: float = Field(default=10.0, gt=0)
    # Split topology: where the other services are (empty in `herald up`).
    registry_address: str = ""
    stream_address: str = ""
    # HTTP/2 keepalive for long streams (see DESIGN.md: grpc defaults do not suit them).
    keepalive_time_s: float = Field(default=25.0, gt=0)
    keepalive_timeout_s: float = Field(default=10.0, gt=0)
    min_client_ping_interval_s: float = Field(default=10.0, gt=0)
    # Share the port with other processes (SO_REUSEPORT), as `herald serve stream --workers N`
    # does on purpose. Off otherwise: a port already in use is a start-up error, not a silent
    # split of the clients between two servers.
    reuse_port: bool = False
    # Calls grpc core holds while the server is busy taking earlier ones (a connect storm):
    # past it the oldest are cancelled, past twice it every new one (grpc's defaults: 1,000, 3,000).
    max_pending_calls: int = Field(default=20_000, ge=100)
    # How long shutdown waits for streams to drain and stores to flush.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    log_level: str = "INFO"
    # Prometheus /metrics on this port; 0 turns it off.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Where /metrics listens, apart from the gRPC host (e.g. a private interface, or 0.0.0.0
    # for a scraper while gRPC stays on loopback behind Envoy); empty: HERALD_HOST.
    metrics_host: str = ""
    # A bearer token /metrics requires (Prometheus: `authorization: {credentials: ...}`); unset:
    # /metrics is open to whoever reaches its port. /signing-keys stays public (browsers).
    metrics_token: SecretStr | None = None
    # Tenants whose metrics carry their own `tenant` label, comma-separated; every other
    # tenant is counted as "other", so the number of series stays bounded (docs/metrics.md).
    metrics_tenant_labels: str = ""

    @field_validator("ws_port", mode="before")
    @classmethod
    def _ws_port_off(cls, value: object) -> object:
        # HERALD_WS_PORT=off (or empty): no WebSocket endpoint, also where a command defaults one.
        if isinstance(value, str) and value.strip().lower() in ("", "off"):
            return None
        return value

    @property
    def tenant_labels(self) -> tuple[str, ...]:
        return tuple(t for t in (t.strip() for t in self.metrics_tenant_labels.split(",")) if t)

    data_dir: Path = Field(default_factory=_default_data_dir)


class AuthSettings(BaseSettings):
    """How tokens are verified (and, in dev mode, minted)."""

    model_config = SettingsConfigDict(env_prefix="HERALD_AUTH_", frozen=True, extra="ignore")

    # dev: a signing key is generated on first start and kept in the data dir (never in the repo).
    # production: keys must come from configuration.
    mode: Literal["dev", "production"] = "dev"
    issuer: str = "herald"
    audience: str = "herald"
    algorithm: Literal["HS256", "RS256", "ES256", "EdDSA"] = "HS256"
    # HS256 shared secret (production), at least 32 bytes.
    secret: SecretStr | None = None
    # PEM public key file for RS256 / ES256 / EdDSA verification.
    public_key_file: Path | None = None
    # PEM private key file, only needed to mint tokens (`herald token`, node tokens).
    private_key_file: Path | None = None
    leeway_s: float = Field(default=30.0, ge=0)
    tenant_claim: str = "tenant"
    # A ready node token for node-to-node calls when this node cannot mint one.
    node_token: SecretStr | None = None


class TLSSettings(BaseSettings):
    """TLS for every listener and for node-to-node calls (docs/tls.md).

    With a certificate and key, every port of the node serves TLS only, and the node calls the
    other nodes over TLS, verifying them against `ca_file` (the system roots when unset) and
    presenting its client certificate. `client_ca_file` turns on mTLS for node-to-node calls."""

    model_config = SettingsConfigDict(env_prefix="HERALD_TLS_", frozen=True, extra="ignore")

    # PEM server certificate (chain) and its private key.
    cert_file: Path | None = None
    key_file: Path | None = None
    # PEM CA bundle the node-to-node listener verifies client certificates against (mTLS).
    client_ca_file: Path | None = None
    # PEM CA bundle this node verifies other nodes' certificates against (system roots if unset).
    ca_file: Path | None = None
    # The certificate and key this node presents on node-to-node calls (default: cert/key_file,
    # which then need the clientAuth extended key usage, or none).
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    # Production mode refuses plaintext unless TLS ends in front of Herald (a load balancer, an
    # Envoy, a service mesh sidecar) and this says so.
    terminated_upstream: bool = False

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None or self.key_file is not None


class StartupError(ValueError):
    """The node cannot start as configured; the message says why and what to do."""


class IngestSettings(BaseSettings):
    """Limits on what backends may send."""

    model_config = SettingsConfigDict(env_prefix="HERALD_INGEST_", frozen=True, extra="ignore")

    max_payload_bytes: int = Field(default=4096, gt=0)
    max_batch: int = Field(default=500, gt=0)
    max_users_per_send: int = Field(default=1000, gt=0)
    default_ttl_s: int = Field(default=86_400, gt=0)
    max_ttl_s: int = Field(default=30 * 86_400, gt=0)
    idempotency_window_s: int = Field(default=86_400, gt=0)
    # Scheduled sends (docs/scheduling.md): how far ahead deliver_at may be, and the scheduler
    # each ingest node runs: sends released per pass, how long a claim is leased (a node that
    # dies holding one gives it to another after it), the longest sleep between passes.
    max_schedule_ahead_s: int = Field(default=366 * 86_400, gt=0)
    schedule_batch: int = Field(default=100, gt=0, le=2000)
    schedule_lease_s: float = Field(default=30.0, gt=0)
    schedule_poll_interval_s: float = Field(default=5.0, gt=0)


class DeliverySettings(BaseSettings):
    """How stream nodes deliver: batching, buffers, heartbeats, acks and redelivery."""

    model_config = SettingsConfigDict(env_prefix="HERALD_DELIVERY_", frozen=True, extra="ignore")

    heartbeat_interval_s: float = Field(default=15.0, gt=0, le=30)
    # Deliveries already waiting are coalesced into one stream message, up to this many.
    batch_max: int = Field(default=64, ge=1, le=1024)
    # Deliveries a session may have waiting before it counts as a slow consumer.
    session_buffer: int = Field(default=4096, ge=1)
    # ... and at most this many bytes of them (the notifications' encoded size plus a fixed
    # overhead per entry, session.ENTRY_OVERHEAD); past either bound the session reads the log
    # later instead, so a full buffer costs no memory and loses nothing.
    session_buffer_bytes: int = Field(default=1024 * 1024, ge=1024)
    # The bytes all sessions of the node may have waiting together; past it a session takes
    # at most one entry at a time (so none starves) until writes free room.
    node_buffer_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    # A write that does not complete in this time closes the session as a slow consumer.
    write_timeout_s: float = Field(default=10.0, gt=0)
    ack_timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    backoff_factor: float = Field(default=2.0, ge=1)
    backoff_max_s: float = Field(default=300.0, gt=0)
    # Entries kept per user log (the offline inbox); the oldest is dropped beyond it.
    inbox_limit: int = Field(default=1000, ge=1)
    channel_log_limit: int = Field(default=10_000, ge=1)
    max_channels_per_session: int = Field(default=50, ge=0)
    status_retention_s: int = Field(default=90 * 86_400, gt=0)
    # The embedded (memory) status store keeps at most this many notifications' status records,
    # dropping the oldest first, so a long-running node does not grow without bound.
    status_max_records: int = Field(default=1_000_000, ge=1)
    # How often a node reads the heads of the logs its sessions read, to deliver what a lost
    # broker publication did not announce: the bound on the delay such a loss causes.
    catchup_interval_s: float = Field(default=2.0, gt=0)
    # How often a node refreshes its sessions' leases in the directory: well inside
    # HERALD_REGISTRY_SESSION_LEASE_S, or live sessions would expire.
    lease_refresh_s: float = Field(default=10.0, gt=0)


class BackendSettings(BaseSettings):
    """Where the stores live. Neither DSN nor URL: memory (the embedded default). Both: the
    production profile, PostgreSQL for what must last and Redis for what is shared and short.
    One without the other is refused at start-up (see `profile`)."""

    model_config = SettingsConfigDict(env_prefix="HERALD_", frozen=True, extra="ignore")

    # postgresql://user:password@host:5432/db (a secret: it may hold a password).
    postgres_dsn: SecretStr | None = None
    # redis://[:password@]host:6379/0 (a secret for the same reason).
    redis_url: SecretStr | None = None
    postgres_pool_min: int = Field(default=2, ge=1)
    postgres_pool_max: int = Field(default=10, ge=1)
    postgres_statement_timeout_s: float = Field(default=5.0, gt=0)
    # libpq sslmode for the PostgreSQL connections (empty: what the DSN says).
    postgres_sslmode: Literal["", "disable", "prefer", "require", "verify-ca", "verify-full"] = ""
    # Keys that encrypt tenants' stored credentials (push keys, webhook secrets):
    # <id>:<base64 of 32 bytes>[,...], the first encrypting (services/secrets_at_rest.py).
    secrets_keys: SecretStr | None = None
    # Prefix of every Redis key and channel (several deployments can share one Redis).
    redis_prefix: str = "herald:"
    # Consecutive backend failures that open its circuit, and how long it stays open.
    breaker_failures: int = Field(default=3, ge=1)
    breaker_reset_s: float = Field(default=2.0, gt=0)
    # Sends arriving within this many milliseconds are committed together (production only),
    # while the node is busy (a group committed in the last 100 ms); an idle node commits a
    # lone send at once.
    group_commit_ms: float = Field(default=10.0, ge=0)

    @property
    def profile(self) -> Literal["memory", "production"]:
        """Raises ValueError when only one of the two is configured."""
        if self.postgres_dsn is None and self.redis_url is None:
            return "memory"
        if self.postgres_dsn is None or self.redis_url is None:
            missing = "HERALD_POSTGRES_DSN" if self.postgres_dsn is None else "HERALD_REDIS_URL"
            raise ValueError(
                f"the production profile needs both HERALD_POSTGRES_DSN and HERALD_REDIS_URL; "
                f"{missing} is not set (set neither for the embedded memory profile)"
            )
        return "production"


class RegistrySettings(BaseSettings):
    """Session leases and presence; how long nodes keep tenant settings."""

    model_config = SettingsConfigDict(env_prefix="HERALD_REGISTRY_", frozen=True, extra="ignore")

    session_lease_s: int = Field(default=60, gt=0)
    # After the last session closes, a user is RECONNECTING for this long, then OFFLINE.
    presence_grace_s: float = Field(default=30.0, ge=0)
    max_sessions_per_user: int = Field(default=5, ge=1)
    # How long a user's "left at" is kept after their last session closed (30 days); past it
    # GetPresence answers as for a user never seen, and the record is gone from the store.
    presence_retention_s: int = Field(default=30 * 24 * 3600, ge=1)
    # How long a node keeps the tenant settings it read from the registry before reading them
    # again: the bound on how long a change takes to be in force on every node
    # (docs/tenants.md). The node that stored the change has it in force at once.
    tenant_settings_ttl_s: float = Field(default=5.0, gt=0, le=3600)


class TenantRateLimits(BaseModel):
    """One tenant's own limits; a field left out (None) takes the node's default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant_send_rate: float | None = Field(default=None, ge=0)
    tenant_send_burst: int | None = Field(default=None, ge=1)
    key_send_rate: float | None = Field(default=None, ge=0)
    key_send_burst: int | None = Field(default=None, ge=1)
    tenant_subscribe_rate: float | None = Field(default=None, ge=0)
    tenant_subscribe_burst: int | None = Field(default=None, ge=1)
    user_subscribe_rate: float | None = Field(default=None, ge=0)
    user_subscribe_burst: int | None = Field(default=None, ge=1)


class RateLimitSettings(BaseSettings):
    """Token buckets on Send/SendBatch (notifications per second) and Subscribe (connects per
    second), per tenant, per service key (the backend token's `sub`) and per user. A rate of 0
    turns that bucket off. docs/rate-limits.md says how they behave."""

    model_config = SettingsConfigDict(env_prefix="HERALD_RATE_LIMIT_", frozen=True, extra="ignore")

    enabled: bool = True
    # Notifications per second a tenant may send, all its keys together, and the burst.
    tenant_send_rate: float = Field(default=10_000.0, ge=0)
    tenant_send_burst: int = Field(default=20_000, ge=1)
    # Notifications per second one service key (backend token subject) may send.
    key_send_rate: float = Field(default=5_000.0, ge=0)
    key_send_burst: int = Field(default=10_000, ge=1)
    # Subscribe calls per second a tenant may open, all its users together.
    tenant_subscribe_rate: float = Field(default=2_000.0, ge=0)
    tenant_subscribe_burst: int = Field(default=10_000, ge=1)
    # Subscribe calls per second one user may open (all their devices).
    user_subscribe_rate: float = Field(default=5.0, ge=0)
    user_subscribe_burst: int = Field(default=30, ge=1)
    # Per-tenant overrides, as JSON: {"acme": {"tenant_send_rate": 100, "tenant_send_burst": 200}}.
    # The tenant's settings in the registry (PutTenantSettings) override these, field by field.
    tenants: dict[str, TenantRateLimits] = Field(default_factory=dict)
    # The production profile keeps the buckets in Redis (shared by every node). When Redis
    # cannot be reached: `open` lets the call through (counted), `closed` answers UNAVAILABLE.
    redis_failure: Literal["open", "closed"] = "open"


class TracingSettings(BaseSettings):
    """OpenTelemetry traces (docs/tracing.md): off by default, and then nothing is traced,
    stored or exported. On: unary RPCs get server spans, each delivery and each ack a span
    linked to the Send, exported over OTLP/gRPC."""

    model_config = SettingsConfigDict(env_prefix="HERALD_OTEL_", frozen=True, extra="ignore")

    enabled: bool = False
    # OTLP/gRPC collector, e.g. http://otel-collector:4317 (http:// is plaintext, https://
    # TLS). Empty: the exporter's own default (OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317).
    endpoint: str = ""
    service_name: str = "herald"
    # Share of traces kept, decided at the root (a Send); children follow their parent's choice.
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


class ChainSettings(BaseSettings):
    """The transformer chain (docs/transformers.md): the default policy of every tenant, the
    signing key ring and the variant cache."""

    model_config = SettingsConfigDict(env_prefix="HERALD_CHAIN_", frozen=True, extra="ignore")

    # Compressions subscribers may pick, comma-separated (zstd, gzip); empty: none.
    compression: str = "zstd,gzip"
    # Payloads shorter than this are sent uncompressed.
    compression_min_bytes: int = Field(default=256, ge=0)
    # Every delivery signed, whatever the subscriber asked.
    signing_required: bool = False
    # Formats subscribers may pick, comma-separated (protobuf, json); protobuf always is.
    formats: str = "protobuf,json"
    # The key ring: `<id>.pem` private keys (sign and verify), `<id>.pub.pem` public keys
    # (verify only). Unset: dev mode generates a key in the data dir; production signs nothing.
    signing_keys_dir: Path | None = None
    # The key that signs; empty: the private key whose id sorts last.
    signing_key: str = ""
    # How often the directory is read again (rotation without a restart); 0: never.
    keys_reload_s: float = Field(default=30.0, ge=0)
    # Transformed notifications kept, per variant and notification, so that a fan-out to many
    # sessions transforms each once.
    cache_entries: int = Field(default=4096, ge=1)

    @staticmethod
    def _names(value: str) -> tuple[str, ...]:
        return tuple(n for n in (n.strip().lower() for n in value.split(",")) if n)

    @property
    def compressions(self) -> tuple[str, ...]:
        return self._names(self.compression)

    @property
    def format_names(self) -> tuple[str, ...]:
        return self._names(self.formats)


class JetStreamSettings(BaseSettings):
    """Ingestion from a NATS JetStream durable pull consumer (docs/ingestion.md); off by default.

    The tenant of a message is the subject token where `subject` has its first wildcard
    (`herald.ingest.acme` under `herald.ingest.*`), or, for a subject without one, the
    `Herald-Tenant` header."""

    model_config = SettingsConfigDict(env_prefix="HERALD_JETSTREAM_", frozen=True, extra="ignore")

    enabled: bool = False
    # nats://[user:password@]host:4222, comma-separated for a cluster (a secret: it may hold a
    # password).
    url: SecretStr = SecretStr("nats://127.0.0.1:4222")
    stream: str = "HERALD_INGEST"
    subject: str = "herald.ingest.*"
    durable: str = "herald-ingest"
    # Messages fetched (and accepted together) per pull request.
    batch: int = Field(default=100, ge=1, le=1000)
    # Batches in flight at once per node (pull requests of their own on the consumer). Above 1,
    # notifications of different batches may be appended out of publication order.
    concurrency: int = Field(default=1, ge=1, le=16)
    # How long a pull waits for messages before it asks again.
    fetch_timeout_s: float = Field(default=1.0, gt=0)
    # The consumer's ack wait: a message neither acked nor NAKed in this time is redelivered.
    ack_wait_s: float = Field(default=30.0, gt=0)
    # Where messages that can never be accepted go, with the reason in headers.
    dead_letter_subject: str = "herald.dead-letter.ingest"
    # Make the stream, the dead-letter stream (`<stream>_DEAD`) and the consumer when missing.
    create_streams: bool = True
    # Tenants the consumer may send for, comma-separated; `*`: any tenant.
    tenants: str = "*"
    # The service principal the consumer acts as (its service-key rate limit bucket).
    service: str = "jetstream"
    # Deliveries of a message that failed for a reason of its own before it is dead-lettered.
    max_attempts: int = Field(default=5, ge=1)
    # The first redelivery delay after a failure or push-back (doubled per delivery, capped).
    retry_delay_s: float = Field(default=0.5, gt=0)
    retry_delay_max_s: float = Field(default=30.0, gt=0)


class OutboxSettings(BaseSettings):
    """Ingestion from the transactional outbox table `herald_outbox` on PostgreSQL
    (docs/ingestion.md); off by default."""

    model_config = SettingsConfigDict(env_prefix="HERALD_OUTBOX_", frozen=True, extra="ignore")

    enabled: bool = False
    # The database holding herald_outbox (the backend's own); empty: HERALD_POSTGRES_DSN.
    dsn: SecretStr | None = None
    # Rows taken (locked, accepted and deleted) per transaction.
    batch: int = Field(default=100, ge=1, le=1000)
    # The safety net under LISTEN/NOTIFY (not durable): how often the table is read anyway.
    poll_interval_s: float = Field(default=5.0, gt=0)
    # Tenants rows may name, comma-separated; `*`: any tenant.
    tenants: str = "*"
    service: str = "outbox"
    # Failed attempts of a row (for a reason of its own) before it is dead-lettered.
    max_attempts: int = Field(default=5, ge=1)
    retry_delay_s: float = Field(default=0.5, gt=0)
    retry_delay_max_s: float = Field(default=30.0, gt=0)


class PushSettings(BaseSettings):
    """The offline fallback's worker on ingest nodes (docs/push.md). Whether a tenant gets
    pushes, and with which credentials, is in its tenant settings (push_fallback)."""

    model_config = SettingsConfigDict(env_prefix="HERALD_PUSH_", frozen=True, extra="ignore")

    # How often the pending pushes are looked at.
    poll_interval_s: float = Field(default=0.5, gt=0)
    # Pending pushes one round claims, and how long a claim holds before another node takes it.
    batch: int = Field(default=100, ge=1, le=1000)
    lease_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    retry_delay_s: float = Field(default=0.5, gt=0)
    retry_delay_max_s: float = Field(default=30.0, gt=0)
    # The providers' addresses; only tests and proxies change them.
    fcm_base_url: str = "https://fcm.googleapis.com"
    # Empty: Google's (https://oauth2.googleapis.com/token); a tenant's key file never chooses.
    fcm_token_url: str = ""
    apns_base_url: str = ""
    apns_cleartext_h2: bool = False
    # Web Push endpoints over plain http accepted at registration (local test servers only).
    webpush_allow_http: bool = False
    # Web Push endpoints on loopback or private addresses, at registration and at send: off, a
    # user cannot make the node call an internal address (services/push/public_hosts.py).
    webpush_allow_private: bool = False
    # Off: pending pushes are stored but handled only by `PushFallbackWorker.run_once` (tests).
    worker: bool = True


class WebhooksSettings(BaseSettings):
    """The webhook sender on stream nodes (docs/webhooks.md). Whether a tenant gets webhooks,
    where, and which events, is in its tenant settings (webhooks)."""

    model_config = SettingsConfigDict(env_prefix="HERALD_WEBHOOKS_", frozen=True, extra="ignore")

    # How often the sender looks for batches that are ready or due for a retry.
    tick_s: float = Field(default=0.2, gt=0)
    # One POST's time limit (connect, write, answer).
    timeout_s: float = Field(default=10.0, gt=0)
    # Attempts before a batch is parked; the delays between them double from retry_delay_s.
    max_attempts: int = Field(default=8, ge=1, le=100)
    retry_delay_s: float = Field(default=1.0, gt=0)
    retry_delay_max_s: float = Field(default=300.0, gt=0)
    # Events waiting in a node's queues at most (more are dropped and counted).
    max_queued_events: int = Field(default=100_000, ge=1)
    # POSTs in flight at once, all tenants together.
    max_in_flight: int = Field(default=16, ge=1)
    # Parked batches one round takes for replay, and how long it holds them (longer than the
    # whole retry schedule, so that no other node takes one while it is being retried).
    replay_batch: int = Field(default=100, ge=1, le=1000)
    replay_lease_s: float = Field(default=900.0, gt=0)
    # At shutdown: how long the last attempt of what is queued may take before it is parked.
    shutdown_s: float = Field(default=5.0, ge=0)
    # Off: the sender runs only when `WebhookSender.run_once` is called (tests).
    worker: bool = True
    # POSTs to loopback and private addresses too. Off, a batch goes only to a host on the
    # public internet, checked before each attempt by what its name resolves to and again at
    # the connection, on the address connected to: a tenant's admin sets the URL, and the node
    # POSTs from inside the operator's network (services/push/public_hosts.py). On for a local
    # receiver or one inside the network.
    allow_private: bool = False


@dataclass(frozen=True)
class Config:
    """All settings, built once in the entry point and passed down."""

    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    backends: BackendSettings = field(default_factory=BackendSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    chain: ChainSettings = field(default_factory=ChainSettings)
    jetstream: JetStreamSettings = field(default_factory=JetStreamSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    push: PushSettings = field(default_factory=PushSettings)
    webhooks: WebhooksSettings = field(default_factory=WebhooksSettings)
