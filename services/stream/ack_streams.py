"""The AckStreams open on a node, so that a shutdown can end them without losing an ack.

An AckStream is a client stream: only its client ends it, and an open one used to hold the
node's shutdown for the whole grace period. At shutdown each stream ends as soon as it is idle:
an ack being handled is stored and answered first; a stream waiting for its next request ends at
once, with UNAVAILABLE. Its client reopens the stream (on any node) and sends again what got no
answer; acks are idempotent, so nothing acknowledged is lost and nothing is acked twice.
"""

from __future__ import annotations

import asyncio
import contextlib

from services.errors import Unavailable

SHUTTING_DOWN = "the server is shutting down; reopen the ack stream (any node takes acks)"


class AckStream:
    """One open AckStream call: its handler task and whether it is handling a request."""

    __slots__ = ("_task", "busy", "ending")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self._task = task
        # True from reading a request to writing its answer: the stream is not ended then.
        self.busy = False
        self.ending = False

    def end(self) -> None:
        """Ends the stream now if it is idle, else right after the answer it is writing."""
        self.ending = True
        if not self.busy:
            self._task.cancel()  # wakes the handler from its read (see `ended`)

    def ended(self) -> bool:
        """True when a cancellation of the handler came from `end`: it then ends the call with
        UNAVAILABLE instead of being cancelled."""
        if not self.ending:
            return False
        self._task.uncancel()
        return True


class AckStreams:
    """Every AckStream open on this node."""

    def __init__(self) -> None:
        self._open: set[AckStream] = set()
        self._none_open = asyncio.Event()
        self._none_open.set()
        self.closing = False

    def __len__(self) -> int:
        return len(self._open)

    def open(self) -> AckStream:
        """Registers the calling handler's stream.

        Raises:
            Unavailable: the node is shutting down.
        """
        if self.closing:
            raise Unavailable(SHUTTING_DOWN)
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - handlers always run in a task
            raise RuntimeError("AckStreams.open needs a running task")
        stream = AckStream(task)
        self._open.add(stream)
        self._none_open.clear()
        return stream

    def close(self, stream: AckStream) -> None:
        self._open.discard(stream)
        if not self._open:
            self._none_open.set()

    async def end_all(self, timeout_s: float) -> None:
        """Refuses new streams, ends every open one when idle, waits up to `timeout_s` for
        them to be gone."""
        self.closing = True
        for stream in list(self._open):
            stream.end()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, timeout_s)):
                await self._none_open.wait()
