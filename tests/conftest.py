"""Shared fixtures: real Herald deployments on loopback, in both topologies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from services.clock import ManualClock
from tests import postgres
from tests.harness import Herald, make_config, start_herald

Deploy = Callable[..., Awaitable[tuple[Herald, ManualClock]]]


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing a test does may touch the developer's real dev key.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="session", autouse=True)
def _postgres_session_database() -> Iterator[None]:
    # The session's PostgreSQL database is made by the first test that needs it (tests/postgres.py).
    yield
    postgres.drop_session_database()


@pytest_asyncio.fixture(params=["up", "split"])
async def herald(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Herald]:
    """Herald in `herald up` form and in the split (three services over gRPC) form."""
    deployment = await start_herald(request.param, make_config(tmp_path))
    try:
        yield deployment
    finally:
        await deployment.stop()


@pytest_asyncio.fixture
async def herald_up(tmp_path: Path) -> AsyncIterator[Herald]:
    deployment = await start_herald("up", make_config(tmp_path))
    try:
        yield deployment
    finally:
        await deployment.stop()


@pytest_asyncio.fixture
async def deploy(tmp_path: Path) -> AsyncIterator[Deploy]:
    """Starts Herald with a manual clock: `herald, clock = await deploy("up", delivery=...)`."""
    started: list[Herald] = []

    async def start(topology: str = "up", **settings: object) -> tuple[Herald, ManualClock]:
        clock = ManualClock()
        deployment = await start_herald(
            topology, make_config(tmp_path / f"d{len(started)}", **settings), clock=clock
        )
        started.append(deployment)
        return deployment, clock

    try:
        yield start
    finally:
        for deployment in started:
            await deployment.stop()
