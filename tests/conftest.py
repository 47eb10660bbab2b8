"""Shared fixtures: real Herald deployments on loopback, in both topologies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.harness import Herald, make_config, start_herald


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing a test does may touch the developer's real dev key.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


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
