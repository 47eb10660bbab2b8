"""A throwaway PostgreSQL server on a free port, for tests that stop and restart it (the Redis
one is tests/redis_support.py's `throwaway_redis`).

The shared servers of the machine are never restarted; these are. A machine without the
binaries skips such tests with the reason (and fails them under CI=true, where they are
installed).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest


def _missing(what: str) -> NoReturn:
    message = f"{what} is not installed: this test starts and stops a throwaway server"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run its tools as the `postgres` user then.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


class ThrowawayPostgres:
    """A cluster in a directory of its own under the system's temp dir (the `postgres` user
    must reach it when the tests run as root: pytest's own tmp dirs are private to root)."""

    def __init__(self) -> None:
        for tool in ("initdb", "pg_ctl", "postgres"):
            if shutil.which(tool) is None:
                _missing(tool)
        self.directory = Path(tempfile.mkdtemp(prefix="herald-pg-"))
        self.data = self.directory / "pgdata"
        self.port = free_port()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(  # noqa: S603 - fixed tool names, arguments made here
            _as_postgres(list(args)), check=True, capture_output=True, timeout=60
        )

    async def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        await asyncio.to_thread(
            self._run, "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres"
        )
        await self.start()

    async def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off"
        await asyncio.to_thread(
            self._run,
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.directory / "postgres.log"),
            "-w",
            "start",
        )

    async def stop(self) -> None:
        """Stops at once (connections are cut, as when the server dies)."""
        await asyncio.to_thread(
            self._run, "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"
        )

    async def remove(self) -> None:
        """Stops the server if it runs and deletes its directory."""
        if (self.data / "postmaster.pid").exists():
            await self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
