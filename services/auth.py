"""JWT verification and minting, and the principal each RPC runs as.

Tokens carry `sub`, a tenant claim (default `tenant`), `scope` (space separated), `exp`, `iss`
and `aud`; user tokens may carry `channels` (the channels the user may join). Scopes:

- `subscribe`: open streams and ack, as user `sub` of the tenant (user tokens);
- `send`: send notifications to the tenant and read their status (backend tokens);
- `presence:read`: look up presence and sessions of the tenant;
- `sessions:admin`: disconnect sessions, join them to channels (implies `presence:read`);
- `templates:write`: store and delete templates (`send` may read them);
- `tenant:admin`: replace and reset the tenant's settings, rate limits included (give it to
  operators, not to a tenant's backends); `tenant:read`: read them (implied by `tenant:admin`
  and by `send`);
- `node`: node-to-node calls; only node tokens may use the tenant `*`.
"""

from __future__ import annotations

import contextvars
import fnmatch
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from services.bounds import quote
from services.config import AuthSettings
from services.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

SCOPE_SUBSCRIBE = "subscribe"
SCOPE_SEND = "send"
SCOPE_PRESENCE_READ = "presence:read"
SCOPE_SESSIONS_ADMIN = "sessions:admin"
SCOPE_TEMPLATES_WRITE = "templates:write"
SCOPE_TENANT_ADMIN = "tenant:admin"
SCOPE_TENANT_READ = "tenant:read"
SCOPE_NODE = "node"
# The push-target RPCs (docs/push.md): a user token (`subscribe`) for its own user, a backend
# token (`send`) for any user of its tenant. Not a scope a token carries.
SCOPE_PUSH_TARGETS = "push:targets"
_PUSH_TARGETS = frozenset({SCOPE_SUBSCRIBE, SCOPE_SEND})
# The preference RPCs (docs/preferences.md): the same callers as the push targets'. Not a scope
# a token carries.
SCOPE_PREFERENCES = "preferences"
ANY_TENANT = "*"
# The scopes that may read their tenant's settings besides `tenant:read` itself.
_READS_TENANT = frozenset({SCOPE_TENANT_ADMIN, SCOPE_SEND})

_DEV_KEY_FILE = "dev-signing-key"
_MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user, a backend service or a node."""

    subject: str
    tenant: str
    scopes: frozenset[str]
    channels: tuple[str, ...] = ()
    # When the token stops verifying (`exp` plus the leeway, Unix seconds): long-lived streams
    # that check it end then.
    expires_at: float = math.inf

    def require(self, scope: str) -> None:
        """Raises PERMISSION_DENIED unless the token has `scope` (or is a node token)."""
        if scope in self.scopes or SCOPE_NODE in self.scopes:
            return
        if scope == SCOPE_PRESENCE_READ and SCOPE_SESSIONS_ADMIN in self.scopes:
            return
        if scope == SCOPE_TENANT_READ and not self.scopes.isdisjoint(_READS_TENANT):
            return
        if scope in (SCOPE_PUSH_TARGETS, SCOPE_PREFERENCES) and not self.scopes.isdisjoint(
            _PUSH_TARGETS
        ):
            return

        raise PermissionDenied(f"the token lacks the '{scope}' scope")

    def require_tenant(self, tenant: str) -> None:
        """Raises PERMISSION_DENIED unless the token may act on `tenant`."""
        if self.tenant == ANY_TENANT and SCOPE_NODE in self.scopes:
            return
        if tenant != self.tenant:
            raise PermissionDenied(
                f"the token of tenant {quote(self.tenant)} cannot act on another tenant"
            )

    def may_join(self, channel: str) -> bool:
        """Whether the token's `channels` claim allows joining `channel` (glob patterns)."""
        return any(fnmatch.fnmatchcase(channel, pattern) for pattern in self.channels)


_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("herald_principal")


def current_principal() -> Principal:
    """The principal of the RPC being handled (set by the auth interceptor)."""
    try:
        return _current.get()
    except LookupError:
        raise Unauthenticated("no credentials were checked for this call") from None


def set_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal]) -> None:
    _current.reset(token)


@dataclass(frozen=True)
class Keys:
    """The key material a node verifies (and possibly mints) tokens with."""

    algorithm: str
    verify_key: Any
    signing_key: Any | None


def load_keys(settings: AuthSettings, data_dir: Path) -> Keys:
    """Loads keys from configuration; in dev mode without configuration, the dev key file.

    Raises:
        ValueError: the configuration cannot verify tokens (never falls back in production).
    """
    if settings.algorithm == "HS256":
        if settings.secret is not None:
            secret = settings.secret.get_secret_value().encode()
            if len(secret) < _MIN_SECRET_BYTES:
                raise ValueError(f"HERALD_AUTH_SECRET must be at least {_MIN_SECRET_BYTES} bytes")
            return Keys("HS256", secret, secret)
        if settings.mode != "dev":
            raise ValueError(
                "production mode needs HERALD_AUTH_SECRET (HS256) or HERALD_AUTH_PUBLIC_KEY_FILE"
            )
        secret = dev_secret(data_dir)
        return Keys("HS256", secret, secret)
    if settings.public_key_file is None:
        raise ValueError(f"{settings.algorithm} needs HERALD_AUTH_PUBLIC_KEY_FILE")
    public = settings.public_key_file.read_bytes()
    private = settings.private_key_file.read_bytes() if settings.private_key_file else None
    return Keys(settings.algorithm, public, private)


def dev_secret(data_dir: Path) -> bytes:
    """The dev signing key: generated on first use, kept (mode 0600) in the data dir."""
    path = data_dir / _DEV_KEY_FILE
    if path.exists():
        return path.read_bytes().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    log.info("generated a dev signing key", extra={"path": str(path)})
    return secret


class TokenVerifier:
    """Checks bearer tokens and turns them into principals; remembers recent good tokens."""

    _CACHE_MAX = 50_000
    _SCOPE_SETS_MAX = 1_000

    def __init__(self, keys: Keys, settings: AuthSettings) -> None:
        self._keys = keys
        self._settings = settings
        self._cache: dict[str, Principal] = {}
        # A token's `scope` claim -> its scopes, shared by every principal of that claim: a
        # frozenset is 216 bytes, and a node holds a principal per open stream (and per cached
        # token). Few distinct claims exist; bounded like the cache all the same.
        self._scopes: dict[str, frozenset[str]] = {}

    def verify_header(self, authorization: str | None) -> Principal:
        """Verifies an `authorization` metadata value.

        Raises:
            Unauthenticated: no token, a malformed one, or one that fails verification.
        """
        if not authorization:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization metadata must be 'Bearer <token>'")
        return self.verify(token.strip())

    def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None and cached.expires_at > time.time():
            return cached
        try:
            claims = jwt.decode(
                token,
                self._keys.verify_key,
                algorithms=[self._keys.algorithm],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token has the wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token lacks the '{exc.claim}' claim") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the token is malformed or its signature is invalid") from None
        principal = self._principal(claims, float(claims["exp"]) + self._settings.leeway_s)
        if len(self._cache) >= self._CACHE_MAX:
            self._cache.clear()
        self._cache[token] = principal
        return principal

    def _principal(self, claims: dict[str, Any], expires_at: float) -> Principal:
        subject = claims.get("sub")
        tenant = claims.get(self._settings.tenant_claim)
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("the token's 'sub' claim must be a non-empty string")
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated(f"the token lacks the '{self._settings.tenant_claim}' claim")
        scope = claims.get("scope", "")
        scopes = self._scope_set(scope) if isinstance(scope, str) else frozenset()
        if tenant == ANY_TENANT and SCOPE_NODE not in scopes:
            raise Unauthenticated("only node tokens may name the tenant '*'")
        channels = claims.get("channels", [])
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise Unauthenticated("the token's 'channels' claim must be a list of strings")
        return Principal(subject, tenant, scopes, tuple(channels), expires_at)

    def _scope_set(self, scope: str) -> frozenset[str]:
        scopes = self._scopes.get(scope)
        if scopes is None:
            if len(self._scopes) >= self._SCOPE_SETS_MAX:
                self._scopes.clear()
            scopes = self._scopes[scope] = frozenset(scope.split())
        return scopes


class TokenMinter:
    """Signs tokens with the node's signing key (dev mode, tests, node-to-node calls)."""

    def __init__(self, keys: Keys, settings: AuthSettings) -> None:
        if keys.signing_key is None:
            raise ValueError("no signing key is configured (HERALD_AUTH_PRIVATE_KEY_FILE)")
        self._signing_key: Any = keys.signing_key
        self._keys = keys
        self._settings = settings

    def mint(
        self,
        subject: str,
        tenant: str,
        scopes: list[str] | tuple[str, ...],
        *,
        ttl_s: int = 3600,
        channels: list[str] | tuple[str, ...] = (),
        extra: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": subject,
            self._settings.tenant_claim: tenant,
            "scope": " ".join(scopes),
            "iss": self._settings.issuer,
            "aud": self._settings.audience,
            "iat": now,
            "exp": now + ttl_s,
        }
        if channels:
            claims["channels"] = list(channels)
        if extra:
            claims.update(extra)
        return jwt.encode(claims, self._signing_key, algorithm=self._keys.algorithm)

    def node_token(self, node_id: str, ttl_s: int = 24 * 3600) -> str:
        return self.mint(f"node:{node_id}", ANY_TENANT, [SCOPE_NODE], ttl_s=ttl_s)
