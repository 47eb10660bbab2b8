"""SessionDirectory in Redis: shared by every node, one hash per session, one slot per tenant.

Keys, under B = `<prefix>{<tenant>}` (services/redis_keys.py; docs/redis.md):

- `B:session:<session id>`, a hash: user_id, node_id, node_address, device, channels (a JSON
  list) and connected_at;
- `B:sessions`, a sorted set of the tenant's session ids scored by last_seen_at: the tenant's
  index, what `touch` refreshes and what `expire` sweeps;
- `B:user:<user id>`, a set: that user's session ids, whose size is the user's session count;
- `B:presence:<user id>`, a hash: online_since while the user has a session, left_at after; it
  expires `presence_retention_s` after the user's last session closed (a user not seen for that
  long reads as never seen), so users who never come back do not stay in Redis for ever;
- `<prefix>tenants`, a set of the tenants that ever had a session, for `expire`: it has no hash
  tag, so it is never touched in the same script as a tenant's keys.

Redis out of reach raises Unavailable (UNAVAILABLE to a gRPC caller), not an internal error.

Every change is one Lua script, so it is atomic (`add` checks the per-user limit and adds in one
step) and takes one round trip. A script names the keys it was given; the other keys it touches
(a moved session's former user's set) are built from B, so they lie in the same cluster slot.
"""

from __future__ import annotations

import builtins
import functools
import json
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final, ParamSpec, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.domain import SessionInfo, UserPresenceRecord
from services.errors import Unavailable
from services.redis_keys import checked_client, checked_prefix, tenant_base
from services.registry.sessions import PRESENCE_RETENTION_S

# Expired sessions removed per tenant per script, so that one sweep never blocks Redis for long.
_EXPIRE_BATCH: Final = 500

# Lua: removes session `sid` under tenant base `base`, the user going offline at `at` when it was
# their last (their presence then expires after `keep` seconds); returns its hash fields then
# 'last_seen_at' and its score, or false when unknown.
_DROP: Final = """
local function drop(base, sid, at, keep)
  local skey = base .. ':session:' .. sid
  local fields = redis.call('HGETALL', skey)
  local index = base .. ':sessions'
  if #fields == 0 then
    redis.call('ZREM', index, sid)
    return false
  end
  local score = redis.call('ZSCORE', index, sid) or '0'
  local uid = ''
  for i = 1, #fields, 2 do
    if fields[i] == 'user_id' then uid = fields[i + 1] end
  end
  redis.call('DEL', skey)
  redis.call('ZREM', index, sid)
  local ukey = base .. ':user:' .. uid
  redis.call('SREM', ukey, sid)
  if redis.call('SCARD', ukey) == 0 then
    local pkey = base .. ':presence:' .. uid
    redis.call('HDEL', pkey, 'online_since')
    redis.call('HSET', pkey, 'left_at', at)
    redis.call('EXPIRE', pkey, keep)
  end
  fields[#fields + 1] = 'last_seen_at'
  fields[#fields + 1] = score
  return fields
end
"""

# KEYS: session hash, tenant index, user set, user presence.
# ARGV: base, session id, user id, max per user, connected_at, last_seen_at, presence retention,
# field, value, ...
_ADD: Final = (
    _DROP
    + """
local base, sid, uid, at = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local previous = redis.call('HGET', KEYS[1], 'user_id')
if previous and previous ~= uid then
  -- The id now names another user's session: it moves, nothing stays behind.
  drop(base, sid, at, ARGV[7])
end
if redis.call('SISMEMBER', KEYS[3], sid) == 0 then
  local open = redis.call('SCARD', KEYS[3])
  if open >= tonumber(ARGV[4]) then return 0 end
  if open == 0 then redis.call('HSET', KEYS[4], 'online_since', at) end
  redis.call('SADD', KEYS[3], sid)
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('ZADD', KEYS[2], ARGV[6], sid)
redis.call('HDEL', KEYS[4], 'left_at')
redis.call('PERSIST', KEYS[4])
return 1
"""
)

# KEYS: tenant index. ARGV: at, session id, ... Returns the ids that are not in the index.
_TOUCH: Final = """
local unknown = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
  else
    unknown[#unknown + 1] = ARGV[i]
  end
end
return unknown
"""

# KEYS: session hash. ARGV: channels (JSON). Returns 1, or 0 when the session is unknown.
_SET_CHANNELS: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'channels', ARGV[1])
return 1
"""

# KEYS: session hash, tenant index. ARGV: base, session id, at, presence retention.
_REMOVE: Final = _DROP + "\nreturn drop(ARGV[1], ARGV[2], ARGV[3], ARGV[4])\n"

# KEYS: tenant index. ARGV: base, older_than, at, limit, presence retention.
# Returns how many stale ids it found (at most limit), then session id, fields, ...
_EXPIRE: Final = (
    _DROP
    + """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[4])
local out = {#stale}
for _, sid in ipairs(stale) do
  local fields = drop(ARGV[1], sid, ARGV[3], ARGV[5])
  if fields then
    out[#out + 1] = sid
    out[#out + 1] = fields
  end
end
return out
"""
)

# KEYS: tenant index, and a user set to list only that user's sessions.
# ARGV: base. Returns session id, fields, ... (fields end with last_seen_at).
_LIST: Final = """
local ids
if #KEYS > 1 then
  ids = redis.call('SMEMBERS', KEYS[2])
else
  ids = redis.call('ZRANGE', KEYS[1], 0, -1)
end
local out = {}
for _, sid in ipairs(ids) do
  local fields = redis.call('HGETALL', ARGV[1] .. ':session:' .. sid)
  if #fields > 0 then
    fields[#fields + 1] = 'last_seen_at'
    fields[#fields + 1] = redis.call('ZSCORE', KEYS[1], sid) or '0'
    out[#out + 1] = sid
    out[#out + 1] = fields
  end
end
return out
"""


P = ParamSpec("P")
R = TypeVar("R")


def _reachable(method: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Redis out of reach is UNAVAILABLE to the caller (retry later), not an internal error."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise Unavailable("the session directory (Redis) is out of reach; retry") from error

    return call


class RedisSessionDirectory:
    """Sessions of every node in one Redis (or one cluster slot per tenant).

    Args:
        client: a client made with decode_responses=False.
        prefix: what every key starts with (no braces), e.g. "herald:".
        owns_client: close the client in `aclose`; leave False when the client is shared.
        presence_retention_s: how long a user's presence (left_at) is kept after they left.
    """

    def __init__(
        self,
        client: Redis,
        prefix: str,
        *,
        owns_client: bool = False,
        presence_retention_s: int = PRESENCE_RETENTION_S,
    ) -> None:
        self._client = checked_client(client)
        self._keep = max(1, int(presence_retention_s))
        self._prefix = checked_prefix(prefix)
        self._owns_client = owns_client
        self._tenants = prefix + "tenants"
        self._add = client.register_script(_ADD)
        self._touch = client.register_script(_TOUCH)
        self._set_channels = client.register_script(_SET_CHANNELS)
        self._remove = client.register_script(_REMOVE)
        self._expire = client.register_script(_EXPIRE)
        self._list = client.register_script(_LIST)

    def _base(self, tenant: str) -> str:
        return tenant_base(self._prefix, tenant)

    @_reachable
    async def add(self, session: SessionInfo, max_per_user: int) -> bool:
        base = self._base(session.tenant)
        fields = (
            "user_id",
            session.user_id,
            "node_id",
            session.node_id,
            "node_address",
            session.node_address,
            "device",
            session.device,
            "channels",
            json.dumps(list(session.channels)),
            "connected_at",
            repr(session.connected_at),
        )
        async with self._client.pipeline(transaction=False) as pipe:
            # Before the session exists, so that `expire` always knows its tenant.
            pipe.sadd(self._tenants, session.tenant)
            await self._add(
                keys=[
                    f"{base}:session:{session.session_id}",
                    f"{base}:sessions",
                    f"{base}:user:{session.user_id}",
                    f"{base}:presence:{session.user_id}",
                ],
                args=[
                    base,
                    session.session_id,
                    session.user_id,
                    max_per_user,
                    repr(session.connected_at),
                    repr(session.last_seen_at),
                    self._keep,
                    *fields,
                ],
                client=pipe,
            )
            _, added = await pipe.execute()
        return bool(added)

    @_reachable
    async def touch(
        self, tenant: str, session_ids: builtins.list[str], at: float
    ) -> builtins.list[str]:
        if not session_ids:
            return []
        unknown = await self._touch(
            keys=[f"{self._base(tenant)}:sessions"], args=[repr(at), *session_ids]
        )
        return [session_id.decode() for session_id in unknown]

    @_reachable
    async def set_channels(self, tenant: str, session_id: str, channels: tuple[str, ...]) -> bool:
        found = await self._set_channels(
            keys=[f"{self._base(tenant)}:session:{session_id}"], args=[json.dumps(list(channels))]
        )
        return bool(found)

    @_reachable
    async def remove(self, tenant: str, session_id: str, at: float) -> SessionInfo | None:
        base = self._base(tenant)
        fields = await self._remove(
            keys=[f"{base}:session:{session_id}", f"{base}:sessions"],
            args=[base, session_id, repr(at), self._keep],
        )
        return None if fields is None else _session(tenant, session_id, fields)

    @_reachable
    async def list(self, tenant: str, user_id: str = "") -> builtins.list[SessionInfo]:
        base = self._base(tenant)
        keys = [f"{base}:sessions"]
        if user_id:
            keys.append(f"{base}:user:{user_id}")
        found = await self._list(keys=keys, args=[base])
        return _sessions(tenant, found)

    @_reachable
    async def presence(
        self, tenant: str, user_ids: builtins.list[str]
    ) -> builtins.list[UserPresenceRecord]:
        if not user_ids:
            return []
        base = self._base(tenant)
        async with self._client.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.scard(f"{base}:user:{user_id}")
                pipe.hmget(f"{base}:presence:{user_id}", ["left_at", "online_since"])
            replies = await pipe.execute()
        records = []
        for i, user_id in enumerate(user_ids):
            count, (left_at, online_since) = replies[2 * i], replies[2 * i + 1]
            records.append(
                UserPresenceRecord(
                    user_id,
                    int(count),
                    float(left_at) if left_at is not None else 0.0,
                    float(online_since) if online_since is not None else 0.0,
                )
            )
        return records

    @_reachable
    async def expire(self, older_than: float, at: float) -> builtins.list[SessionInfo]:
        tenants = sorted(
            t.decode() if isinstance(t, bytes) else t
            for t in await self._client.smembers(self._tenants)
        )
        expired: builtins.list[SessionInfo] = []
        while tenants:
            async with self._client.pipeline(transaction=False) as pipe:
                for tenant in tenants:
                    base = self._base(tenant)
                    await self._expire(
                        keys=[f"{base}:sessions"],
                        args=[base, repr(older_than), repr(at), _EXPIRE_BATCH, self._keep],
                        client=pipe,
                    )
                replies = await pipe.execute()
            more = []
            for tenant, (stale, *found) in zip(tenants, replies, strict=True):
                expired.extend(_sessions(tenant, found))
                if stale >= _EXPIRE_BATCH:
                    more.append(tenant)
            tenants = more
        return expired

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def _sessions(tenant: str, found: Sequence[Any]) -> builtins.list[SessionInfo]:
    """Sessions from a script's [session id, fields, session id, fields, ...]."""
    return [_session(tenant, found[i].decode(), found[i + 1]) for i in range(0, len(found), 2)]


def _session(tenant: str, session_id: str, flat: Sequence[bytes]) -> SessionInfo:
    """A session from its hash fields, flattened, ending with last_seen_at."""
    fields = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
    return SessionInfo(
        session_id,
        tenant,
        fields[b"user_id"].decode(),
        fields[b"node_id"].decode(),
        fields[b"node_address"].decode(),
        device=fields[b"device"].decode(),
        channels=tuple(json.loads(fields[b"channels"])),
        connected_at=float(fields[b"connected_at"]),
        last_seen_at=float(fields[b"last_seen_at"]),
    )
