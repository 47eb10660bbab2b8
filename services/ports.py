"""What each service needs of the others. In `herald up` the cores implement these directly; in the
split topology (`herald serve ...`) gRPC clients in services/remote.py do."""

from __future__ import annotations

from typing import Protocol

from services.domain import Accepted, NotificationRecord, SessionInfo, TemplateRecord


class DeliveryPort(Protocol):
    """What ingest needs of the delivery node."""

    async def dispatch(self, notifications: list[Accepted]) -> list[int]:
        """Appends to the logs and wakes readers; returns the user-log count per notification."""
        ...

    async def status(self, tenant: str, notification_id: str) -> NotificationRecord | None: ...


class RegistryPort(Protocol):
    """What a stream node needs of the registry."""

    async def register(self, session: SessionInfo) -> None:
        """Raises ResourceExhausted when the user already has the maximum number of sessions."""
        ...

    async def heartbeat(self, tenant: str, session_ids: list[str]) -> list[str]:
        """Refreshes leases; returns the ids the registry no longer knows."""
        ...

    async def unregister(self, tenant: str, session_id: str) -> None: ...


class TemplatePort(Protocol):
    """What ingest needs of the registry."""

    async def get_template(
        self, tenant: str, template_id: str, version: int
    ) -> TemplateRecord | None: ...


class NodePort(Protocol):
    """What the registry needs of a stream node."""

    async def close_sessions(
        self, tenant: str, session_ids: list[str], user_id: str, reason: str
    ) -> int: ...

    async def change_channels(
        self, tenant: str, session_id: str, join: list[str], leave: list[str]
    ) -> list[str] | None:
        """The session's channels after the change; None when the node has no such session."""
        ...
