"""Real Herald nodes on free loopback ports, in either topology, with tokens for the tests."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import SecretStr

from herald.v1 import notification_pb2, registry_pb2_grpc
from services import auth
from services.chain import PolicyProvider
from services.client import HeraldClient
from services.clock import Clock
from services.config import (
    AuthSettings,
    ChainSettings,
    Config,
    DeliverySettings,
    IngestSettings,
    PushSettings,
    RateLimitSettings,
    RegistrySettings,
    ServerSettings,
    TLSSettings,
)
from services.server import Node, start_node
from services.tracing import Tracing


def make_config(data_dir: Path, **overrides: object) -> Config:
    """A config for tests: port 0 (free port), a random HS256 secret, production-mode auth.

    Plaintext on loopback unless `tls` is given: production mode allows it only because the
    config says TLS ends in front (HERALD_TLS_TERMINATED_UPSTREAM)."""
    secret = SecretStr(secrets.token_hex(32))
    delivery = overrides.pop("delivery", None) or DeliverySettings()
    registry = overrides.pop("registry", None) or RegistrySettings()
    ingest = overrides.pop("ingest", None) or IngestSettings()
    tls = overrides.pop("tls", None) or TLSSettings(terminated_upstream=True)
    rate_limit = overrides.pop("rate_limit", None) or RateLimitSettings()
    chain = overrides.pop("chain", None) or ChainSettings()
    push = overrides.pop("push", None) or PushSettings()
    server = overrides.pop("server", None) or ServerSettings(
        host="127.0.0.1", port=0, ws_port=0, data_dir=data_dir, shutdown_grace_s=2
    )
    return Config(
        server=server,  # type: ignore[arg-type]
        auth=AuthSettings(mode="production", secret=secret),
        delivery=delivery,  # type: ignore[arg-type]
        registry=registry,  # type: ignore[arg-type]
        ingest=ingest,  # type: ignore[arg-type]
        tls=tls,  # type: ignore[arg-type]
        rate_limit=rate_limit,  # type: ignore[arg-type]
        chain=chain,  # type: ignore[arg-type]
        push=push,  # type: ignore[arg-type]
    )


@dataclass
class Tokens:
    minter: auth.TokenMinter

    def user(self, tenant: str, user: str, channels: Iterable[str] = ()) -> str:
        return self.minter.mint(user, tenant, [auth.SCOPE_SUBSCRIBE], channels=tuple(channels))

    def backend(self, tenant: str, *scopes: str) -> str:
        return self.minter.mint(
            "billing", tenant, list(scopes) or [auth.SCOPE_SEND, auth.SCOPE_SESSIONS_ADMIN]
        )


@dataclass
class Herald:
    """A running deployment: one node (`up`) or three (`split`)."""

    topology: str
    nodes: dict[str, Node]
    tokens: Tokens
    clients: list[HeraldClient] = field(default_factory=list)
    # With TLS: the CA its clients verify it against (None: plaintext clients).
    ca_file: Path | None = None

    def client(self, role: str, token: str) -> HeraldClient:
        client = HeraldClient(self.address(role), token, ca_file=self.ca_file)
        self.clients.append(client)
        return client

    def address(self, role: str) -> str:
        node = self.nodes.get(role) or self.nodes["up"]
        return node.address

    def ws_url(self, role: str = "stream") -> str:
        """The WebSocket endpoint of the node serving `role`."""
        node = self.node(role)
        assert node.ws_port is not None, "this node has no WebSocket endpoint"
        scheme = "wss" if self.ca_file is not None else "ws"
        return f"{scheme}://127.0.0.1:{node.ws_port}/ws"

    def node(self, role: str) -> Node:
        return self.nodes.get(role) or self.nodes["up"]

    def backend(self, tenant: str = "acme", *scopes: str) -> HeraldClient:
        return self.client("ingest", self.tokens.backend(tenant, *scopes))

    def user(self, user: str, tenant: str = "acme", channels: Iterable[str] = ()) -> HeraldClient:
        return self.client("stream", self.tokens.user(tenant, user, channels))

    def registry_stub(
        self, token: str
    ) -> tuple[registry_pb2_grpc.RegistryServiceStub, tuple[tuple[str, str], ...]]:
        client = self.client("registry", token)
        return registry_pb2_grpc.RegistryServiceStub(client._channel), client.metadata()

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        for role in ("ingest", "stream", "registry", "up"):
            if role in self.nodes:
                await self.nodes[role].stop(1.0)


async def start_herald(
    topology: str,
    config: Config,
    clock: Clock | None = None,
    traces: Tracing | None = None,
    policy_for: PolicyProvider | None = None,
) -> Herald:
    keys = auth.load_keys(config.auth, config.server.data_dir)
    tokens = Tokens(auth.TokenMinter(keys, config.auth))
    ca_file = config.tls.ca_file if config.tls.enabled else None
    if topology == "up":
        node = await start_node(
            config, clock=clock, keys=keys, traces=traces, policy_for=policy_for
        )
        return Herald(topology, {"up": node}, tokens, ca_file=ca_file)
    registry = await start_node(config, ["registry"], clock=clock, keys=keys, traces=traces)
    stream_config = replace(
        config,
        server=config.server.model_copy(update={"registry_address": registry.node_address}),
    )
    stream = await start_node(
        stream_config, ["stream"], clock=clock, keys=keys, traces=traces, policy_for=policy_for
    )
    ingest_config = replace(
        config,
        server=config.server.model_copy(
            update={
                "stream_address": stream.node_address,
                "registry_address": registry.node_address,
            }
        ),
    )
    ingest = await start_node(ingest_config, ["ingest"], clock=clock, keys=keys, traces=traces)
    nodes = {"registry": registry, "stream": stream, "ingest": ingest}
    return Herald(topology, nodes, tokens, ca_file=ca_file)


def to_user(user: str, title: str = "Hello", **fields: object) -> notification_pb2.Notification:
    notification = notification_pb2.Notification(**fields)  # type: ignore[arg-type]
    notification.target.user_id = user
    notification.content.title = title
    return notification


# How long a token_about_to_expire token surely outlives: then it no longer verifies.
ABOUT_TO_EXPIRE_S = 2.1


def token_about_to_expire(
    minter: auth.TokenMinter, user: str, tenant: str = "acme", scopes: Iterable[str] = ()
) -> str:
    """A token past its `exp` but within the default 30 s leeway for one to two seconds more.
    `exp` is whole seconds, rounded up here: a token minted late in a second still has a second
    left (`ttl_s=-29` would leave it anywhere between none and one)."""
    expires = math.ceil(time.time()) - 29
    return minter.mint(user, tenant, list(scopes) or [auth.SCOPE_SUBSCRIBE], extra={"exp": expires})
