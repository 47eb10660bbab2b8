"""Wiring: builds the cores for a topology and serves them on one grpc.aio server.

`herald up` runs ingest, stream and registry in one process, wired directly; `herald serve X`
runs one of them, wired to the others over gRPC. The cores are the same in both.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Literal
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import make_wsgi_app

from herald.node.v1 import node_pb2, node_pb2_grpc
from herald.v1 import ingest_pb2, registry_pb2, registry_pb2_grpc, stream_pb2
from services import auth, metrics, tls, tracing
from services.backends import Backend, Stores, open_stores
from services.breaker import BreakerState
from services.chain import Chain, ChainInterceptor, PolicyProvider, default_policy
from services.chain.keys_http import WsgiApp, signing_keys_app
from services.chain.policy import ChainPolicy, tenant_policy
from services.chain.signing import KeyRing, dev_ring, load_dir
from services.clock import Clock, SystemClock
from services.config import Config, StartupError, TLSSettings
from services.domain import SessionInfo, State
from services.health import NodeHealth
from services.ingest.core import IngestCore
from services.ingest.scheduler import Scheduler
from services.ingest.servicer import IngestServicer
from services.ingest.sources import Source, start_sources
from services.interceptors import AuthInterceptor
from services.ports import DeliveryPort, NodePort, RegistryPort, TemplatePort
from services.preferences.gate import PreferenceGate
from services.push.fallback import PushFallbackWorker
from services.push.providers import ProviderEndpoints, ProviderSet
from services.push.registration import PushRegistration
from services.ratelimit.admission import Admission
from services.ratelimit.limiter_memory import MemoryRateLimiter
from services.registry.core import Presence, RegistryCore
from services.registry.servicer import RegistryServicer
from services.remote import NodeClient, NodeCredentials, RegistryClient
from services.stream.delivery import DeliveryCore
from services.stream.dispatch import Dispatcher
from services.stream.requests import StreamRequests
from services.stream.servicer import NodeServicer, StreamServicer
from services.stream.websocket import WebSocketEndpoint, tls_context
from services.tenant_settings_cache import TenantSettingsCache, TenantSettingsSource
from services.webhooks.events import WebhookEvents
from services.webhooks.sender import WebhookSender
from services.webhooks.wanted import WebhookPreferences

log = logging.getLogger(__name__)

Role = Literal["ingest", "stream", "registry"]
ALL_ROLES: tuple[Role, ...] = ("ingest", "stream", "registry")

SERVICE_NAMES: dict[Role, tuple[str, ...]] = {
    "ingest": (ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,),
    "stream": (
        stream_pb2.DESCRIPTOR.services_by_name["StreamService"].full_name,
        node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    ),
    "registry": (registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,),
}


def server_options(config: Config) -> list[tuple[str, int]]:
    s = config.server
    return [
        ("grpc.keepalive_time_ms", int(s.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(s.min_client_ping_interval_s * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ("grpc.so_reuseport", 1 if s.reuse_port else 0),
        # Calls that arrived and wait for the application to take them: past the soft bound
        # grpc core cancels the ones that waited too long, past the hard bound every new one,
        # with CANCELLED and no details (grpc's defaults, 1,000 and 3,000, cancelled 879 of a
        # storm of 3,200 Subscribes in the test below and 150 of 2,000 in bench/memory.py).
        # Test: test_a_connect_storm_past_grpcs_default_pending_bound_opens_every_stream.
        ("grpc.server.max_pending_requests", s.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", 2 * s.max_pending_calls),
    ]


@dataclass
class Node:
    """A running server and the cores it serves."""

    server: aio.Server
    port: int
    roles: tuple[Role, ...]
    health: NodeHealth
    delivery: DeliveryCore | None = None
    registry: RegistryCore | None = None
    ingest: IngestCore | None = None
    admission: Admission | None = None
    # The tenant settings this node uses (rate limits, stream policy), read from the registry.
    tenant_settings: TenantSettingsCache | None = None
    closers: list[object] = field(default_factory=list)
    dispatcher: Dispatcher | None = None
    stores: Stores | None = None
    # The node-to-node listener's port, when it has one (HERALD_NODE_PORT).
    node_port: int | None = None
    # The tracer provider this node made from its settings (flushed and stopped last).
    own_tracing: tracing.Tracing | None = None
    # The transformer chain of this node's StreamService (its key ring: `chain.keys`).
    chain: Chain | None = None
    # The WebSocket endpoint and its port, when the node has one (HERALD_WS_PORT).
    websocket: WebSocketEndpoint | None = None
    ws_port: int | None = None
    # Ingestion sources (JetStream, the outbox): stopped first.
    sources: list[Source] = field(default_factory=list)
    # The offline fallback's worker (docs/push.md), on ingest nodes with a registry core.
    push: PushFallbackWorker | None = None
    # The webhook sender (docs/webhooks.md), on stream nodes.
    webhooks: WebhookSender | None = None
    # How long each closer (step 4 of `stop`) may take, past the grace period if need be: the
    # stores flush what must persist, but a closer that hangs must not hold up the rest.
    close_step_s: float = 10.0
    _stopped: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def node_address(self) -> str:
        """Where other nodes call this one (its own listener for that, if it has one)."""
        return f"127.0.0.1:{self.node_port or self.port}"

    async def stop(self, grace_s: float) -> None:
        """Ordered shutdown, all of it within `grace_s`:

        0. the ingestion sources stop taking (what they hold is settled or comes back);
        1. health NOT_SERVING (Watch streams say so, then end), so balancers stop routing here;
        2. every session gets the closing hint (Closing REASON_SHUTDOWN) and ends, then the ack
           streams, each once idle (`DeliveryCore.shutdown`); on WebSocket, each session's
           connection closes with 1012, then the WebSocket listener stops;
        3. the server stops: new calls are refused, calls in flight (a Send, an Ack) get what
           is left of the grace period, and are cancelled after it;
        4. clients of other nodes close, then the stores, flushing what must persist.

        Nothing of Herald's own waits without a bound: a background task that does not end when
        cancelled (step 2) or a closer that overruns `close_step_s` (step 4) is left behind
        with a warning that names it, and the rest goes on. grpc's own stop (step 3) is not
        cut short: cancelling it breaks grpc for the rest of the process.
        """
        if self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        for source in self.sources:
            with contextlib.suppress(Exception):
                await source.aclose(max(0.0, min(5.0, deadline - loop.time())))
        await self.health.enter_graceful_shutdown()
        if self.delivery is not None:
            await self.delivery.shutdown(grace_s)
        if self.websocket is not None:
            await self.websocket.stop(deadline - loop.time())
        # Not bounded here: grpc's stop has the grace, and cancelling it leaves grpc's completion
        # queue broken for the rest of the process (measured: every later call failed).
        await self.server.stop(max(0.0, deadline - loop.time()))
        # Clients of other nodes first, then the stores (the last closer).
        for closer in self.closers:
            # Stores close with `aclose`, gRPC clients with `close`.
            close = getattr(closer, "aclose", None) or getattr(closer, "close", None)
            if close is None:
                continue
            part = type(closer).__name__
            try:
                async with asyncio.timeout(max(self.close_step_s, deadline - loop.time())):
                    await close()
            except TimeoutError:
                log.warning(
                    "a part of the node did not close in time; stopping without it",
                    extra={"part": part, "timeout_s": self.close_step_s},
                )
            except Exception:
                log.warning(
                    "a part of the node failed to close", extra={"part": part}, exc_info=True
                )
        with contextlib.suppress(Exception):
            await tracing.shutdown(self.own_tracing)


async def start_node(
    config: Config,
    roles: Iterable[Role] = ALL_ROLES,
    *,
    clock: Clock | None = None,
    keys: auth.Keys | None = None,
    traces: tracing.Tracing | None = None,
    policy_for: PolicyProvider | None = None,
) -> Node:
    """Builds the cores for `roles`, wires them (directly or over gRPC) and starts serving.

    `traces` (tests pass one on an in-memory exporter) replaces the tracer provider that
    HERALD_OTEL_* would make; with neither, nothing is traced. `policy_for` gives each
    tenant's transformer-chain policy (default: HERALD_CHAIN_* for every tenant)."""
    roles = tuple(roles)
    clock = clock or SystemClock()
    keys = keys or auth.load_keys(config.auth, config.server.data_dir)
    verifier = auth.TokenVerifier(keys, config.auth)
    node_tls = _check_transport(config)
    node_id = (
        config.server.node_id or f"{socket.gethostname()}-{roles[0] if len(roles) == 1 else 'up'}"
    )
    own_tracing = None if traces is not None else tracing.from_settings(config.tracing)
    traces = traces or own_tracing
    interceptors: list[aio.ServerInterceptor] = [  # type: ignore[type-arg]
        AuthInterceptor(verifier, node_certificates=node_tls is not None and node_tls.mutual)
    ]
    chain: Chain | None = None
    # The tenant settings' cache, once the registry it reads is known (below): the chain's
    # default provider reads each tenant's StreamPolicy from it.
    settings_cache: list[TenantSettingsCache] = []
    if "stream" in roles:
        if policy_for is None:
            policy = default_policy(config.chain)

            async def registry_policy(tenant: str) -> ChainPolicy:
                if not settings_cache:
                    return policy
                stored = await settings_cache[0].get(tenant)
                return tenant_policy(policy, stored.stream_policy)

            policy_for = registry_policy
        chain = Chain(load_key_ring(config), config.chain.cache_entries, policy_for)
        # Inside the AuthInterceptor: the caller's principal is set and the request decoded.
        interceptors.append(ChainInterceptor(chain))
    if traces is not None:
        # First, so that its span covers authentication and decoding too: the AuthInterceptor
        # re-registers each method (request bytes in) and this one wraps what that returns.
        interceptors.insert(0, traces.server_interceptor())
    server = aio.server(interceptors=interceptors, options=server_options(config))
    public = node_tls.server_credentials() if node_tls is not None else None
    listener = node_tls.node_server_credentials() if node_tls is not None else None
    host = config.server.host
    port = _bind(server, host, config.server.port, public)
    node_port: int | None = None
    if config.server.node_port is not None:
        node_port = _bind(server, host, config.server.node_port, listener, "HERALD_NODE_PORT")
    elif config.server.reuse_port and not config.server.advertise_address:
        # Workers share the clients' port, so a call to it reaches any of them: node-to-node
        # calls (disconnect, channel changes) go to a port of this worker's own.
        node_port = _bind(server, host, 0, listener)
    advertise = config.server.advertise_address or f"{host}:{node_port or port}"
    credentials = NodeCredentials(
        _node_token_source(config, keys, node_id),
        tls=node_tls.channel_credentials() if node_tls is not None else None,
        interceptors=traces.client_interceptors() if traces is not None else (),
    )
    health_servicer = NodeHealth()
    names = [name for role in roles for name in SERVICE_NAMES[role]]
    # Backends whose breaker is not closed -> the services that need them.
    down: dict[str, tuple[str, ...]] = {}
    health_updates: set[asyncio.Future[None]] = set()

    def backend_changed(backend: Backend, state: BreakerState) -> None:
        if state is BreakerState.CLOSED:
            down.pop(backend.name, None)
        else:
            down[backend.name] = backend.needed_by
        update = asyncio.ensure_future(_set_health(health_servicer, roles, down))
        health_updates.add(update)
        update.add_done_callback(health_updates.discard)

    stores = await open_stores(config, clock, backend_changed)
    try:
        closers: list[object] = []
        registry_core: RegistryCore | None = None
        delivery_core: DeliveryCore | None = None
        websocket: WebSocketEndpoint | None = None
        ws_port: int | None = None
        dispatcher: Dispatcher | None = None
        node_clients: dict[str, NodeClient] = {}
        # Preferences (docs/preferences.md) where the registry's stores are this node's too:
        # `herald up` and every node on shared stores (as the push fallback).
        preferences: PreferenceGate | None = None

        def node_for(session: SessionInfo) -> NodePort | None:
            if delivery_core is not None and session.node_id == delivery_core.node_id:
                return delivery_core
            if not session.node_address:
                return None
            client = node_clients.get(session.node_address)
            if client is None:
                client = node_clients[session.node_address] = NodeClient(
                    session.node_address, credentials
                )
                closers.append(client)
            return client

        # On shared stores every node reads and writes them itself: the registry's directory and
        # templates, the logs. Only the calls to a session's own node go over gRPC.
        if "registry" in roles or stores.shared:
            registry_core = RegistryCore(
                stores.sessions,
                stores.templates,
                config.registry,
                clock,
                node_for,
                stores.tenant_settings,
            )
            preferences = PreferenceGate(
                stores.preferences, clock, config.registry.tenant_settings_ttl_s
            )
        if "registry" in roles and registry_core is not None:
            push_registration = PushRegistration(
                stores.push_targets,
                clock,
                allow_http_endpoints=config.push.webpush_allow_http,
                allow_private_endpoints=config.push.webpush_allow_private,
            )
            registry_pb2_grpc.add_RegistryServiceServicer_to_server(
                RegistryServicer(
                    registry_core,
                    config.rate_limit,
                    push_registration,
                    stores.segments,
                    clock,
                    preferences,
                    parked_webhooks=stores.webhooks_parked,
                ),
                server,
            )
        # Without a registry core of its own, a node reads the registry over gRPC: the stream
        # node always, ingest when it is given the address (for templates and tenant settings).
        remote_registry: RegistryClient | None = None
        if registry_core is None and config.server.registry_address:
            remote_registry = RegistryClient(config.server.registry_address, credentials)
            closers.append(remote_registry)
        settings_source: TenantSettingsSource | None = registry_core or remote_registry
        tenant_settings = None
        if settings_source is not None:
            tenant_settings = TenantSettingsCache(
                settings_source, clock, config.registry.tenant_settings_ttl_s
            )
            if registry_core is not None:
                registry_core.watch_tenant_settings(tenant_settings.store)
            settings_cache.append(tenant_settings)
        admission = Admission(
            stores.rate_limiter or MemoryRateLimiter(clock), config.rate_limit, tenant_settings
        )
        # The delivery path's state changes go to the webhooks' queues (docs/webhooks.md).
        webhook_events: WebhookEvents | None = None
        if "stream" in roles and tenant_settings is not None:
            webhook_events = WebhookEvents(
                tenant_settings.get, max_queued=config.webhooks.max_queued_events
            )
        if "stream" in roles or (stores.shared and "ingest" in roles):
            dispatcher = Dispatcher(
                logs=stores.logs,
                status=stores.status,
                broker=stores.broker,
                settings=config.delivery,
                clock=clock,
                group_window_s=config.backends.group_commit_ms / 1000 if stores.shared else 0.0,
                tracing=traces,
                inbox_states=stores.inbox_states,
                events=webhook_events,
            )

        if "stream" in roles and dispatcher is not None:
            registry_port: RegistryPort
            if registry_core is not None:
                registry_port = registry_core
            elif remote_registry is not None:
                registry_port = remote_registry
            else:
                raise ValueError(_required("", "REGISTRY"))
            delivery_core = DeliveryCore(
                node_id=node_id,
                node_address=advertise,
                logs=stores.logs,
                acks=stores.acks,
                status=stores.status,
                broker=stores.broker,
                registry=registry_port,
                settings=config.delivery,
                clock=clock,
                tracing=traces,
                tenant_labels=metrics.TenantLabels(config.server.tenant_labels),
                inbox_states=stores.inbox_states,
                events=webhook_events,
            )
            StreamServicer(delivery_core, admission, chain.keys if chain else None).register(server)
            if config.server.ws_port is not None:
                websocket = WebSocketEndpoint(
                    StreamRequests(delivery_core, admission),
                    verifier,
                    health_servicer,
                    max_frame_bytes=config.server.ws_max_frame_bytes,
                    subscribe_timeout_s=config.server.ws_subscribe_timeout_s,
                    ping_interval_s=config.server.keepalive_time_s,
                    ping_timeout_s=config.server.keepalive_timeout_s,
                    chain=chain,
                )
            node_pb2_grpc.add_NodeServiceServicer_to_server(
                NodeServicer(delivery_core, dispatcher), server
            )

        ingest_core: IngestCore | None = None
        push_worker: PushFallbackWorker | None = None
        if "ingest" in roles:
            delivery_port: DeliveryPort
            if dispatcher is not None:
                delivery_port = dispatcher
            else:
                remote_node = NodeClient(
                    _required(config.server.stream_address, "STREAM"), credentials
                )
                closers.append(remote_node)
                delivery_port = remote_node
            templates: TemplatePort | None = registry_core or remote_registry
            if registry_core is not None and tenant_settings is not None:
                push_worker = _push_worker(
                    config, clock, stores, registry_core, tenant_settings, delivery_port
                )
                closers.append(push_worker)
            ingest_core = IngestCore(
                delivery_port,
                stores.idempotency,
                config.ingest,
                clock,
                templates,
                tenant_settings,
                push=push_worker,
                preferences=preferences,
                scheduled=stores.scheduled,
                # A segment's members are read here and appended by this node's dispatcher:
                # handed to a stream node they would not travel with the notification.
                segments=(
                    stores.segments
                    if registry_core is not None and dispatcher is not None
                    else None
                ),
            )
            IngestServicer(ingest_core, admission).register(server)

        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        webhooks: WebhookSender | None = None
        if webhook_events is not None and tenant_settings is not None:
            webhooks = WebhookSender(
                events=webhook_events,
                parked=stores.webhooks_parked,
                settings_for=tenant_settings.get,
                clock=clock,
                settings=config.webhooks,
                refresh_s=config.registry.tenant_settings_ttl_s,
                preferences=(
                    None if preferences is None else WebhookPreferences(preferences, stores.logs)
                ),
            )
        if dispatcher is not None:
            # Its group commits finish (and announce what they stored: status events included)
            # before the webhook sender and the stores close.
            closers.append(dispatcher)
        if webhooks is not None:
            # After the sessions ended (their last acks are queued), before the stores close.
            closers.append(webhooks)
        closers.append(stores)
        await server.start()
        if websocket is not None and config.server.ws_port is not None:
            ws_port = await _start_websocket(websocket, config, host)
        if delivery_core is not None:
            delivery_core.start()
        sources: list[Source] = []
        if ingest_core is not None:
            sources = await start_sources(config, ingest_core, admission)
            scheduler = _scheduler(config, ingest_core, clock)
            scheduler.start()
            closers.insert(0, scheduler)
        await _set_health(health_servicer, roles, down)
        closers.insert(0, _NodeMetrics(node_id, roles, delivery_core, dispatcher, stores))
        if stores.backends:
            monitor = asyncio.ensure_future(stores.monitor(config.backends.breaker_reset_s / 2))
            closers.insert(0, _Cancel(monitor))
        if webhooks is not None and config.webhooks.worker:
            closers.insert(0, _Cancel(asyncio.ensure_future(webhooks.run())))
        if push_worker is not None and config.push.worker:
            pushes = asyncio.ensure_future(push_worker.run(config.push.poll_interval_s))
            closers.insert(0, _Cancel(pushes))
        if chain is not None and config.chain.signing_keys_dir and config.chain.keys_reload_s:
            reloads = asyncio.ensure_future(
                _reload_keys(chain.keys, config.chain.signing_keys_dir, config)
            )
            closers.insert(0, _Cancel(reloads))
        log.info(
            "herald node serving",
            extra={
                "roles": list(roles),
                "port": port,
                "node_port": node_port,
                "ws_port": ws_port,
                "node_id": node_id,
                "tls": "off" if node_tls is None else "mtls" if node_tls.mutual else "on",
            },
        )
        return Node(
            server,
            port,
            roles,
            health_servicer,
            delivery_core,
            registry_core,
            ingest_core,
            admission,
            tenant_settings,
            closers,
            dispatcher,
            stores,
            node_port,
            own_tracing,
            chain,
            websocket,
            ws_port,
            sources,
            push_worker,
            webhooks,
        )
    except BaseException:
        # Nothing half-started stays behind: the pool, the Redis client, the broker task.
        if websocket is not None:
            await websocket.stop(0)
        await server.stop(0)
        await stores.aclose()
        await tracing.shutdown(own_tracing)
        raise


def _scheduler(config: Config, core: IngestCore, clock: Clock) -> Scheduler:
    """The task that releases the scheduled sends when due (docs/scheduling.md)."""
    ingest = config.ingest
    return Scheduler(
        core.scheduling,
        clock,
        batch=ingest.schedule_batch,
        lease_s=ingest.schedule_lease_s,
        poll_interval_s=ingest.schedule_poll_interval_s,
        retry_delay_s=min(ingest.schedule_poll_interval_s, 1.0),
        retention_s=config.delivery.status_retention_s,
    )


def _push_worker(
    config: Config,
    clock: Clock,
    stores: Stores,
    registry: RegistryCore,
    tenant_settings: TenantSettingsCache,
    delivery: DeliveryPort,
) -> PushFallbackWorker:
    """The offline fallback's worker: presence from the registry, acks from the status store."""
    settings = config.push

    async def online(tenant: str, user_ids: list[str]) -> set[str]:
        views = await registry.presence(tenant, user_ids)
        return {v.user_id for v in views if v.state is Presence.ONLINE}

    async def acked(tenant: str, notification_id: str, user_id: str) -> bool:
        record = await delivery.status(tenant, notification_id)
        recipient = None if record is None else record.recipients.get(user_id)
        return recipient is not None and recipient.state is State.ACKED

    return PushFallbackWorker(
        pending=stores.push_pending,
        targets=stores.push_targets,
        providers=ProviderSet(
            ProviderEndpoints(
                fcm_base_url=settings.fcm_base_url,
                fcm_token_url=settings.fcm_token_url,
                apns_base_url=settings.apns_base_url,
                apns_cleartext_h2=settings.apns_cleartext_h2,
                webpush_allow_private=settings.webpush_allow_private,
            )
        ),
        settings_for=tenant_settings.get,
        online=online,
        acked=acked,
        clock=clock,
        lease_s=settings.lease_s,
        batch=settings.batch,
        max_attempts=settings.max_attempts,
        backoff_s=settings.retry_delay_s,
        max_backoff_s=settings.retry_delay_max_s,
    )


def load_key_ring(config: Config) -> KeyRing:
    """The signing keys: HERALD_CHAIN_SIGNING_KEYS_DIR; in dev mode without it, a key kept in
    the data dir; in production without it, none (signing is not offered).

    Raises:
        StartupError: unreadable or invalid key files.
    """
    settings = config.chain
    if settings.signing_keys_dir is not None:
        return load_dir(settings.signing_keys_dir, settings.signing_key)
    if config.auth.mode == "dev":
        return dev_ring(config.server.data_dir)
    return KeyRing.empty()


async def _reload_keys(ring: KeyRing, directory: Path, config: Config) -> None:
    """Re-reads the key ring every HERALD_CHAIN_KEYS_RELOAD_S; a bad directory keeps the keys
    it had (and says so), so a half-copied rotation never stops signing."""
    while True:
        await asyncio.sleep(config.chain.keys_reload_s)
        try:
            fresh = load_dir(directory, config.chain.signing_key)
        except StartupError as exc:
            log.warning("signing keys not reloaded: %s", exc)
            continue
        before = [k.key_id for k in ring.keys]
        ring.replace(fresh)
        after = [k.key_id for k in ring.keys]
        if before != after:
            log.info(
                "signing keys reloaded",
                extra={"keys": after, "active": ring.active.key_id if ring.active else ""},
            )


async def _set_health(
    health: NodeHealth, roles: tuple[Role, ...], down: dict[str, tuple[str, ...]]
) -> None:
    """SERVING for each service whose backends are all reachable, NOT_SERVING otherwise; the
    node as a whole ("") is SERVING only when all of its services are."""
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    all_up = True
    for role in roles:
        up = not any(role in needed_by for needed_by in down.values())
        all_up = all_up and up
        for name in SERVICE_NAMES[role]:
            await health.set(name, serving if up else not_serving)
    await health.set("", serving if all_up else not_serving)


class _NodeMetrics:
    """The node's live gauges (queue depths, breaker states, node info) while it runs; a
    closer that takes them away when it stops."""

    def __init__(
        self,
        node_id: str,
        roles: tuple[Role, ...],
        delivery: DeliveryCore | None,
        dispatcher: Dispatcher | None,
        stores: Stores,
    ) -> None:
        self._delivery = delivery
        self._dispatcher = dispatcher
        self._stores = stores
        self._info = (node_id, ",".join(roles))
        metrics.NODE.labels(*self._info).set(1)
        self._forget = metrics.LIVE.watch(self.samples)

    def samples(self) -> list[metrics.LiveSample]:
        depths: dict[str, int] = {}
        if self._delivery is not None:
            depths.update(self._delivery.queue_depths())
        if self._dispatcher is not None:
            depths["group_commit"] = self._dispatcher.waiting
        status_waiting = getattr(self._stores.status, "waiting", None)
        if isinstance(status_waiting, int):
            depths["status_buffer"] = status_waiting
        samples: list[metrics.LiveSample] = [
            ("herald_queue_depth", (queue,), depth) for queue, depth in depths.items()
        ]
        if self._delivery is not None:
            budget = self._delivery.budget
            samples.append(("herald_buffered_bytes", ("used",), budget.used))
            samples.append(("herald_buffered_bytes", ("limit",), budget.limit))
        for backend in self._stores.backends:
            current = backend.breaker.state
            samples.extend(
                ("herald_breaker_state", (backend.name, state.value), float(state is current))
                for state in BreakerState
            )
        return samples

    async def aclose(self) -> None:
        self._forget()
        with contextlib.suppress(KeyError):
            metrics.NODE.remove(*self._info)


class _Cancel:
    """A closer that cancels a background task."""

    def __init__(self, task: asyncio.Future[None]) -> None:
        self._task = task

    async def aclose(self) -> None:
        self._task.cancel()
        # `wait`, not `await`: a cancel of this closer itself is not swallowed with the task's.
        await asyncio.wait([self._task])
        if not self._task.cancelled() and (error := self._task.exception()) is not None:
            log.warning("a background task had failed", exc_info=error)


def tune_gc() -> None:
    """The stores hold many long-lived objects (log entries, status records), and a collection
    stalls the event loop for as long as it takes to traverse its generation.

    Start-up objects move out of the collector's reach (`gc.freeze`). Young generations stay
    small, so each young collection is short: measured under the delivery bench, (5000, 10)
    keeps them under ~30 ms where (50000, 20) had 350 ms gen-1 pauses that set p99. Full
    collections stay rare (100 gen-1 collections and the interpreter's 25 % rule)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(5_000, 10, 100)
    metrics.observe_gc_pauses()


def start_metrics_server(
    port: int,
    host: str,
    tls_settings: TLSSettings | None = None,
    keys: KeyRing | None = None,
    token: str = "",
) -> WSGIServer:
    """Serves Prometheus /metrics from a background thread (a WSGI server, as prometheus_client
    runs its own), and, with `keys`, the public signing keys as JSON at /signing-keys (for
    browsers: services/chain/keys_http.py); over HTTPS with the node's certificate when TLS is
    on, like every other listener. With `token`, /metrics answers only requests that carry it
    as `Authorization: Bearer <token>` (401 otherwise); /signing-keys stays public."""
    secure = tls_settings is not None and tls_settings.enabled
    metrics_app: WsgiApp = make_wsgi_app()
    if token:
        metrics_app = bearer_protected(metrics_app, token)
    app = signing_keys_app(metrics_app, keys) if keys is not None else metrics_app
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("MetricsServer", (_MetricsServer,), {"address_family": family})
    server: WSGIServer = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    if secure and tls_settings is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(tls_settings.cert_file), str(tls_settings.key_file))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics serving", extra={"host": host, "port": server.server_port, "tls": secure})
    return server


def bearer_protected(app: WsgiApp, token: str) -> WsgiApp:
    """`app` behind `Authorization: Bearer <token>`, compared in constant time."""
    expected = f"Bearer {token}".encode()

    def protected(
        environ: dict[str, object], start_response: Callable[..., object]
    ) -> Iterable[bytes]:
        given = str(environ.get("HTTP_AUTHORIZATION", "")).encode()
        if hmac.compare_digest(given, expected):
            return app(environ, start_response)
        body = b"401: /metrics needs Authorization: Bearer <HERALD_METRICS_TOKEN>\n"
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("WWW-Authenticate", 'Bearer realm="herald-metrics"'),
            ],
        )
        return [body]

    return protected


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No access log: scrapes every few seconds would drown the node's own lines."""


def _check_transport(config: Config) -> tls.NodeTLS | None:
    """The node's TLS material (None: plaintext), once the transport settings are coherent.

    Raises:
        StartupError: plaintext in production without the explicit opt-out, mTLS without a
            listener to require it on, or unusable TLS files.
    """
    node_tls = tls.load(config.tls)
    if node_tls is None and config.auth.mode == "production" and not config.tls.terminated_upstream:
        raise StartupError(
            "production mode refuses plaintext: tokens would cross the network in the clear. "
            "Set HERALD_TLS_CERT_FILE and HERALD_TLS_KEY_FILE, or, when TLS ends in front of "
            "Herald (a load balancer, Envoy, a mesh sidecar), HERALD_TLS_TERMINATED_UPSTREAM=true"
        )
    server = config.server
    if server.node_port is not None and server.reuse_port:
        raise StartupError(
            "HERALD_NODE_PORT cannot be shared by workers (--workers / HERALD_REUSE_PORT): "
            "leave it unset and each worker listens for node-to-node calls on a port of its own"
        )
    # Workers (SO_REUSEPORT, no advertise address) each listen on a node port of their own.
    own_node_port = server.reuse_port and not server.advertise_address
    if node_tls is not None and node_tls.mutual and server.node_port is None and not own_node_port:
        raise StartupError(
            "HERALD_TLS_CLIENT_CA_FILE (mTLS for node-to-node calls) needs HERALD_NODE_PORT: "
            "the port other nodes call, which requires their client certificates (clients "
            "keep using HERALD_PORT with server TLS only)"
        )
    return node_tls


def _bind(
    server: aio.Server,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None,
    setting: str = "--port / HERALD_PORT",
) -> int:
    try:
        if credentials is None:
            return server.add_insecure_port(f"{host}:{port}")
        return server.add_secure_port(f"{host}:{port}", credentials)
    except RuntimeError:
        raise StartupError(
            f"cannot listen on {host}:{port}: the port is in use (another herald on it?). "
            f"Stop it, or choose another port with {setting}"
        ) from None


async def _start_websocket(websocket: WebSocketEndpoint, config: Config, host: str) -> int:
    """Listens for WebSocket clients on HERALD_WS_PORT, over TLS when the node serves TLS."""
    port = config.server.ws_port or 0
    context = None
    if config.tls.cert_file is not None and config.tls.key_file is not None:
        context = tls_context(str(config.tls.cert_file), str(config.tls.key_file))
    try:
        return await websocket.start(host, port, context, reuse_port=config.server.reuse_port)
    except OSError:
        raise StartupError(
            f"cannot listen on {host}:{port} for WebSocket: the port is in use (another herald "
            "on it?). Stop it, or choose another port with --ws-port / HERALD_WS_PORT"
        ) from None


def _required(value: str, name: str) -> str:
    if not value:
        raise ValueError(
            f"this service needs HERALD_{name}_ADDRESS (host:port of the {name.lower()} service)"
        )
    return value


def _node_token_source(config: Config, keys: auth.Keys, node_id: str) -> Callable[[], str]:
    if config.auth.node_token is not None:
        token = config.auth.node_token.get_secret_value()
        return lambda: token
    if keys.signing_key is None:

        def missing() -> str:
            raise ValueError("node-to-node calls need HERALD_AUTH_NODE_TOKEN or a signing key")

        return missing
    minter = auth.TokenMinter(keys, config.auth)
    return lambda: minter.node_token(node_id, ttl_s=3600)


async def serve_forever(config: Config, roles: Iterable[Role]) -> None:
    """Runs a node until SIGINT or SIGTERM, then shuts it down within the grace period."""
    node = await start_node(config, roles)
    tune_gc()
    if config.server.metrics_port:
        # The files were checked at start-up (start_node).
        start_metrics_server(
            config.server.metrics_port,
            config.server.metrics_host or config.server.host,
            config.tls,
            node.chain.keys if node.chain is not None else None,
            ""
            if config.server.metrics_token is None
            else config.server.metrics_token.get_secret_value(),
        )
    lag = asyncio.ensure_future(metrics.watch_loop_lag())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_s": config.server.shutdown_grace_s})
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    lag.cancel()
    await node.stop(config.server.shutdown_grace_s)
