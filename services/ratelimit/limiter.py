"""The `RateLimiter` Protocol: take N tokens from several token buckets at once, or none.

A bucket holds at most `burst` tokens and gains `rate` tokens a second. A check takes `cost`
tokens from every bucket it names, atomically: either each bucket had `cost` tokens and each
loses them, or none is touched and the answer says how long until all of them will have them.
A bucket nobody took from for `burst / rate` seconds is full again, so an implementation may
forget it: a forgotten bucket and a full one behave the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Bucket(NamedTuple):
    """One token bucket of `tenant`: `name` tells it from the tenant's other buckets (e.g.
    `send:key:billing`); it gains `rate` tokens a second (> 0) and holds at most `burst` (>= 1).
    The buckets of one check belong to one tenant (so Redis Cluster keeps them in one slot)."""

    tenant: str
    name: str
    rate: float
    burst: int


class Decision(NamedTuple):
    """What a check decided. Refused: `retry_after_s` is how long until every bucket holds the
    cost again (assuming nobody else takes), and `limited_by` the index of the bucket that needs
    longest. Allowed: both are 0 and -1."""

    allowed: bool
    retry_after_s: float = 0.0
    limited_by: int = -1


ALLOWED = Decision(True)

# Tokens a bucket may lack and still pass: times are seconds since the epoch, whose float
# sums lose about 1e-7 s, so that a caller waiting exactly the advised delay is let in.
EPSILON = 1e-6


class RateLimiter(Protocol):
    async def take(self, buckets: Sequence[Bucket], cost: int) -> Decision:
        """Takes `cost` tokens from every bucket, or from none of them.

        `cost` is at most every bucket's burst (the caller refuses larger ones: they could never
        pass). An empty `buckets` is always allowed.

        Raises:
            Unavailable: a shared store could not be reached and the limiter fails closed.
        """
        ...

    async def aclose(self) -> None: ...
