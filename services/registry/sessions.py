"""The session directory: every open session of every node, with leases."""

from __future__ import annotations

import builtins
from typing import Final, Protocol

from services.domain import SessionInfo, UserPresenceRecord

# How long a user's presence (when they left) is kept after their last session closed: 30 days.
# Past it the user reads as never seen (HERALD_REGISTRY_PRESENCE_RETENTION_S).
PRESENCE_RETENTION_S: Final = 30 * 24 * 3600


class SessionDirectory(Protocol):
    """Open sessions per tenant; implementations share it across nodes.

    Stores hold values: what `add` is given and what `list` returns are copies, so a change is
    made only through a method (as any networked implementation must).
    """

    async def add(self, session: SessionInfo, max_per_user: int) -> bool:
        """Adds the session unless the user already has `max_per_user`; False when refused."""
        ...

    async def touch(
        self, tenant: str, session_ids: builtins.list[str], at: float
    ) -> builtins.list[str]:
        """Refreshes sessions; returns the ids that are not known."""
        ...

    async def set_channels(self, tenant: str, session_id: str, channels: tuple[str, ...]) -> bool:
        """Records the channels a session reads; False when the session is unknown."""
        ...

    async def remove(self, tenant: str, session_id: str, at: float) -> SessionInfo | None: ...

    async def list(self, tenant: str, user_id: str = "") -> builtins.list[SessionInfo]: ...

    async def presence(
        self, tenant: str, user_ids: builtins.list[str]
    ) -> builtins.list[UserPresenceRecord]: ...

    async def expire(self, older_than: float, at: float) -> builtins.list[SessionInfo]:
        """Removes sessions last seen before `older_than` (their node stopped heartbeating)."""
        ...

    async def aclose(self) -> None:
        """Releases connections; the store is not used afterwards."""
        ...
