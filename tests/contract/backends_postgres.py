"""Openers of the PostgreSQL stores for the contract suites: each opens a pool on the test
session's database with every table emptied (tests/postgres.py), yields a store on it, then
closes the store and the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.ingest.idempotency import IdempotencyStore
from services.ingest.idempotency_postgres import PostgresIdempotencyStore
from services.registry.templates import TemplateStore
from services.registry.templates_postgres import PostgresTemplateStore
from services.stream.acks import AckStore
from services.stream.acks_postgres import PostgresAckStore
from services.stream.log import LogStore
from services.stream.log_postgres import PostgresLogStore
from services.stream.status import StatusStore
from services.stream.status_buffered import WriteBehindStatusStore
from services.stream.status_postgres import PostgresStatusStore
from tests.postgres import clean_pool


@asynccontextmanager
async def status_store() -> AsyncIterator[StatusStore]:
    async with clean_pool() as pool:
        store = PostgresStatusStore(pool)
        try:
            yield store
        finally:
            await store.aclose()


@asynccontextmanager
async def write_behind_status_store() -> AsyncIterator[StatusStore]:
    """The production status store: PostgreSQL behind a write-behind buffer."""
    async with clean_pool() as pool:
        store = WriteBehindStatusStore(PostgresStatusStore(pool))
        try:
            yield store
        finally:
            await store.aclose()


@asynccontextmanager
async def log_store() -> AsyncIterator[LogStore]:
    async with clean_pool() as pool:
        store = PostgresLogStore(pool)
        try:
            yield store
        finally:
            await store.aclose()


@asynccontextmanager
async def paired_stores() -> AsyncIterator[tuple[LogStore, StatusStore]]:
    """A log store and the status store it creates records in, on one pool."""
    async with clean_pool() as pool:
        status = PostgresStatusStore(pool)
        logs = PostgresLogStore(pool, status)
        try:
            yield logs, status
        finally:
            await logs.aclose()
            await status.aclose()


@asynccontextmanager
async def ack_store() -> AsyncIterator[AckStore]:
    async with clean_pool() as pool:
        store = PostgresAckStore(pool)
        try:
            yield store
        finally:
            await store.aclose()


@asynccontextmanager
async def idempotency_store() -> AsyncIterator[IdempotencyStore]:
    async with clean_pool() as pool:
        store = PostgresIdempotencyStore(pool)
        try:
            yield store
        finally:
            await store.aclose()


@asynccontextmanager
async def template_store() -> AsyncIterator[TemplateStore]:
    async with clean_pool() as pool:
        store = PostgresTemplateStore(pool)
        try:
            yield store
        finally:
            await store.aclose()
