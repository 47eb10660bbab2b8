"""Rate limits: token buckets per tenant, service key and user (docs/rate-limits.md).

`limiter.py` is the `RateLimiter` Protocol, `limiter_memory.py` the local buckets of one
process, `limiter_redis.py` the buckets every node shares; `admission.py` turns a caller and a
cost into the buckets to take from, and a refusal into the status the caller gets.
"""
