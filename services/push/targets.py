"""Push targets per tenant and user: FCM and APNs device tokens, Web Push subscriptions."""

from __future__ import annotations

import builtins
import enum
import hashlib
from dataclasses import dataclass
from typing import Protocol


class PushKind(enum.IntEnum):
    """The provider a target is reached through; values as herald.v1.PushKind."""

    FCM = 1
    APNS = 2
    WEBPUSH = 3


@dataclass(frozen=True, slots=True)
class PushTargetRecord:
    """One registered target. `token` is the FCM registration token or the APNs device token;
    for Web Push, `token` is the subscription endpoint and `p256dh`/`auth` its keys."""

    target_id: str
    user_id: str
    kind: PushKind
    token: str
    p256dh: str = ""
    auth: str = ""
    registered_at: float = 0.0


def target_id(kind: PushKind, token: str) -> str:
    """The id of a target: the same token (or endpoint) of one kind is always the same id."""
    digest = hashlib.sha256(f"{int(kind)}\x00{token}".encode()).hexdigest()
    return f"{kind.name.lower()}-{digest[:24]}"


class PushTargetStore(Protocol):
    async def register(self, tenant: str, target: PushTargetRecord) -> PushTargetRecord:
        """Stores `target` (replacing one with its id, keys included); returns what is stored.
        A token registered for another user of the tenant moves to this user (a device has
        one user at a time)."""
        ...

    async def unregister(self, tenant: str, user_id: str, target_id: str) -> bool:
        """Removes one target; False when the user had none with that id."""
        ...

    async def remove(self, tenant: str, target_ids: builtins.list[str]) -> int:
        """Removes targets a provider reported gone, whoever holds them; returns how many."""
        ...

    async def list(self, tenant: str, user_id: str) -> builtins.list[PushTargetRecord]:
        """The user's targets, oldest first."""
        ...

    async def aclose(self) -> None:
        """Releases connections; the store is not used afterwards."""
        ...
