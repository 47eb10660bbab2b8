"""What a tenant allows and what a subscriber gets: `ChainPolicy`, `Variant` and `negotiate`.

A variant is the exact transformation one session's deliveries go through. It is decided once,
when the session opens, from the subscriber's `accept_encodings` and the tenant's policy, and
reported back in `SessionStarted.encodings`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from services.domain import StreamPolicy
from services.errors import FailedPrecondition

PROTOBUF = "protobuf"
JSON = "json"
IDENTITY = "identity"
GZIP = "gzip"
ZSTD = "zstd"
SIGNED = "signed"

FORMATS = (PROTOBUF, JSON)
COMPRESSIONS = (ZSTD, GZIP)


@dataclass(frozen=True, slots=True)
class ChainPolicy:
    """What one tenant's subscribers may negotiate (RegistryService's tenant settings feed it).

    Attributes:
        compression: the compressions subscribers may pick ("zstd", "gzip"); empty: none.
        compression_min_bytes: payloads shorter than this travel uncompressed ("identity").
        signing_required: every delivery is signed, whatever the subscriber asked.
        formats: the formats subscribers may pick; "protobuf" is always allowed.
    """

    compression: tuple[str, ...] = COMPRESSIONS
    compression_min_bytes: int = 256
    signing_required: bool = False
    formats: tuple[str, ...] = FORMATS


# The tenant's policy: plain, or awaitable (a policy read from the registry).
PolicyProvider = Callable[[str], "ChainPolicy | Awaitable[ChainPolicy]"]


def tenant_policy(default: ChainPolicy, stored: StreamPolicy | None) -> ChainPolicy:
    """A tenant's policy from its settings in RegistryService (docs/tenants.md): the node's
    HERALD_CHAIN_* policy while the tenant has set none; otherwise exactly what it set (no
    compression when it lists none, every format when it lists none)."""
    if stored is None:
        return default
    formats = tuple(f for f in stored.allowed_formats if f in FORMATS) or FORMATS
    return ChainPolicy(
        compression=tuple(c for c in stored.compression if c in COMPRESSIONS),
        compression_min_bytes=stored.compression_min_bytes,
        signing_required=stored.signing_required,
        formats=formats if PROTOBUF in formats else (PROTOBUF, *formats),
    )


async def policy_of(provider: PolicyProvider, tenant: str) -> ChainPolicy:
    policy = provider(tenant)
    if inspect.isawaitable(policy):
        return await policy
    return policy


class Variant(NamedTuple):
    """One way of transforming a notification; part of the cache key (a tuple: its hash is
    computed in C, once per stream message on the hot path)."""

    format: str = PROTOBUF
    compression: str = IDENTITY
    signed: bool = False
    compression_min_bytes: int = 256

    @property
    def plain(self) -> bool:
        return self.format == PROTOBUF and self.compression == IDENTITY and not self.signed

    @property
    def tokens(self) -> tuple[str, ...]:
        """What SessionStarted.encodings says (empty for plain)."""
        tokens: list[str] = []
        if self.format != PROTOBUF:
            tokens.append(self.format)
        if self.compression != IDENTITY:
            tokens.append(self.compression)
        if self.signed:
            tokens.append(SIGNED)
        return tuple(tokens)

    @property
    def label(self) -> str:
        """The metrics label: "plain", or the tokens joined by "+" (a bounded set)."""
        return "+".join(self.tokens) or "plain"


PLAIN = Variant()


def negotiate(accept: Iterable[str], policy: ChainPolicy, *, can_sign: bool) -> Variant:
    """The variant for a subscriber that accepts `accept` (in order of preference).

    Tokens the policy does not allow, and unknown ones, are ignored: the client reads what was
    picked in SessionStarted.encodings.

    Raises:
        FailedPrecondition: the tenant requires signing and this node has no signing key.
    """
    tokens = [token.strip().lower() for token in accept]
    fmt = JSON if JSON in tokens and JSON in policy.formats else PROTOBUF
    compression = IDENTITY
    for token in tokens:
        if token == IDENTITY:
            break
        if token in COMPRESSIONS and token in policy.compression:
            compression = token
            break
    signed = SIGNED in tokens or policy.signing_required
    if signed and not can_sign:
        if policy.signing_required:
            raise FailedPrecondition(
                "this tenant requires signed deliveries and this node has no signing key "
                "(HERALD_CHAIN_SIGNING_KEYS_DIR); try another node or tell the operator"
            )
        signed = False
    return Variant(fmt, compression, signed, policy.compression_min_bytes)
