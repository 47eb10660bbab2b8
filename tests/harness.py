"""Real Herald nodes on free loopback ports, in either topology, with tokens for the tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from herald.v1 import notification_pb2, registry_pb2_grpc
from services import auth
from services.client import HeraldClient
from services.clock import Clock
from services.config import (
    AuthSettings,
    Config,
    DeliverySettings,
    IngestSettings,
    RateLimitSettings,
    RegistrySettings,
    ServerSettings,
)
from services.server import Node, start_node


def make_config(data_dir: Path, **overrides: object) -> Config:
    """A config for tests: port 0 (free port), a random HS256 secret, production-mode auth."""
    secret = SecretStr(secrets.token_hex(32))
    delivery = overrides.pop("delivery", None) or DeliverySettings()
    registry = overrides.pop("registry", None) or RegistrySettings()
    ingest = overrides.pop("ingest", None) or IngestSettings()
    rate_limit = overrides.pop("rate_limit", None) or RateLimitSettings()
    return Config(
        server=ServerSettings(host="127.0.0.1", port=0, data_dir=data_dir, shutdown_grace_s=2),
        auth=AuthSettings(mode="production", secret=secret),
        delivery=delivery,  # type: ignore[arg-type]
        registry=registry,  # type: ignore[arg-type]
        ingest=ingest,  # type: ignore[arg-type]
        rate_limit=rate_limit,  # type: ignore[arg-type]
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

    def address(self, role: str) -> str:
        node = self.nodes.get(role) or self.nodes["up"]
        return node.address

    def node(self, role: str) -> Node:
        return self.nodes.get(role) or self.nodes["up"]

    def backend(self, tenant: str = "acme", *scopes: str) -> HeraldClient:
        client = HeraldClient(self.address("ingest"), self.tokens.backend(tenant, *scopes))
        self.clients.append(client)
        return client

    def user(self, user: str, tenant: str = "acme", channels: Iterable[str] = ()) -> HeraldClient:
        client = HeraldClient(self.address("stream"), self.tokens.user(tenant, user, channels))
        self.clients.append(client)
        return client

    def registry_stub(
        self, token: str
    ) -> tuple[registry_pb2_grpc.RegistryServiceStub, tuple[tuple[str, str], ...]]:
        client = HeraldClient(self.address("registry"), token)
        self.clients.append(client)
        return registry_pb2_grpc.RegistryServiceStub(client._channel), client.metadata()

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        for role in ("ingest", "stream", "registry", "up"):
            if role in self.nodes:
                await self.nodes[role].stop(1.0)


async def start_herald(topology: str, config: Config, clock: Clock | None = None) -> Herald:
    keys = auth.load_keys(config.auth, config.server.data_dir)
    tokens = Tokens(auth.TokenMinter(keys, config.auth))
    if topology == "up":
        return Herald(topology, {"up": await start_node(config, clock=clock, keys=keys)}, tokens)
    registry = await start_node(config, ["registry"], clock=clock, keys=keys)
    stream_config = Config(
        server=config.server.model_copy(update={"registry_address": registry.address}),
        auth=config.auth,
        delivery=config.delivery,
        registry=config.registry,
        ingest=config.ingest,
        rate_limit=config.rate_limit,
    )
    stream = await start_node(stream_config, ["stream"], clock=clock, keys=keys)
    ingest_config = Config(
        server=config.server.model_copy(
            update={"stream_address": stream.address, "registry_address": registry.address}
        ),
        auth=config.auth,
        delivery=config.delivery,
        registry=config.registry,
        ingest=config.ingest,
        rate_limit=config.rate_limit,
    )
    ingest = await start_node(ingest_config, ["ingest"], clock=clock, keys=keys)
    return Herald(topology, {"registry": registry, "stream": stream, "ingest": ingest}, tokens)


def to_user(user: str, title: str = "Hello", **fields: object) -> notification_pb2.Notification:
    notification = notification_pb2.Notification(**fields)  # type: ignore[arg-type]
    notification.target.user_id = user
    notification.content.title = title
    return notification
