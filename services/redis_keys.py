"""Names of Herald's keys and channels in Redis: a prefix, the tenant as a hash tag, a name.

Every key and channel of one tenant starts with `<prefix>{<tenant>}`, so Redis Cluster puts them
in one slot and a Lua script may touch several of them. Redis hashes what lies between the first
`{` and the first `}` after it, so the prefix may hold no brace and the tenant id is escaped:
`%`, `{` and `}` become `%25`, `%7B` and `%7D` (one-to-one, and readable for the ids people
use). An empty tenant id becomes a lone `%`, which no escaped id can be: `{}` would make Redis
hash the whole key. docs/redis.md lists the keys.
"""

from __future__ import annotations

import functools

from redis.asyncio import Redis


def checked_prefix(prefix: str) -> str:
    """The prefix, refused when it would hide the tenant's hash tag.

    Raises:
        ValueError: the prefix holds a brace.
    """
    if "{" in prefix or "}" in prefix:
        raise ValueError(
            f"a Redis key prefix may not hold braces (they make hash tags): {prefix!r}"
        )
    return prefix


def checked_client(client: Redis) -> Redis:
    """The client, refused when it decodes replies (Herald stores bytes: encoded protobuf).

    Raises:
        ValueError: the client was made with decode_responses=True.
    """
    if client.connection_pool.connection_kwargs.get("decode_responses", False):
        raise ValueError("Herald needs a Redis client made with decode_responses=False")
    return client


@functools.lru_cache(maxsize=4096)
def tenant_base(prefix: str, tenant: str) -> str:
    """`<prefix>{<escaped tenant>}`: what every key and channel of the tenant starts with."""
    if not tenant:
        return prefix + "{%}"
    escaped = tenant.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return f"{prefix}{{{escaped}}}"
