"""Preferences at send time: who of a notification's users gets it on which delivery path.

What a send costs:

- a tenant none of whose users stored preferences: one lookup in this node's memory (the
  store is asked again at most every `recheck_s`);
- otherwise: one store call per batch of notifications, for every recipient of the batch at
  once (`load`), never one per user.

A tenant's first preferences reach the other nodes within `recheck_s` (this node at once);
after that every change applies from the next send. A critical notification is never looked
up: it goes on every path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final, NamedTuple

from services.clock import Clock
from services.preferences.store import DeliveryPath, PreferenceStore, UserPreferences

# Tenants remembered either way (past it, forgotten all at once and read again).
_TENANTS_MAX: Final = 100_000


class Split(NamedTuple):
    """A notification's users as their preferences sort them."""

    # Get it in-app (their log), in the target's order.
    in_app: tuple[str, ...]
    # Do not: no log entry.
    muted: tuple[str, ...]
    # Of both, those who do not get it as a push.
    no_push: frozenset[str]


def split(
    user_ids: tuple[str, ...], category: str, choices: Mapping[str, UserPreferences]
) -> Split:
    """Sorts `user_ids` for a non-critical notification of `category` by `choices` (what
    `PreferenceGate.load` returned for them)."""
    if not choices:
        return Split(user_ids, (), frozenset())
    kept: list[str] = []
    muted: list[str] = []
    no_push: set[str] = set()
    for user in user_ids:
        found = choices.get(user)
        if found is None:
            kept.append(user)
            continue
        (kept if found.wants(category, DeliveryPath.IN_APP) else muted).append(user)
        if not found.wants(category, DeliveryPath.PUSH):
            no_push.add(user)
    return Split(tuple(kept), tuple(muted), frozenset(no_push))


class PreferenceGate:
    """Reads preferences for sends, with each tenant's "has any" flag cached; the writes go
    through it too, so that this node's flag follows them at once."""

    def __init__(self, store: PreferenceStore, clock: Clock, recheck_s: float) -> None:
        self._store = store
        self._clock = clock
        self._recheck_s = recheck_s
        # Tenants known to have preferences (once some are stored, they stay: a user's
        # preferences are replaced, never removed).
        self._with: set[str] = set()
        # Tenants found with none -> when that was read.
        self._without: dict[str, float] = {}

    async def get(self, tenant: str, user_id: str) -> UserPreferences:
        """The user's preferences; everything on when none were stored."""
        return await self._store.get(tenant, user_id) or UserPreferences(user_id)

    async def put(self, tenant: str, preferences: UserPreferences) -> UserPreferences:
        """Stores the user's preferences (checked: `check_preferences`), stamped now."""
        stored = await self._store.put(
            tenant,
            UserPreferences(
                preferences.user_id,
                preferences.defaults,
                preferences.categories,
                self._clock.now(),
            ),
        )
        self.stored(tenant)
        return stored

    def stored(self, tenant: str) -> None:
        """Preferences of `tenant` were stored through this node: its sends read them now."""
        self._without.pop(tenant, None)
        self._remember(tenant)

    async def tenant_has_any(self, tenant: str) -> bool:
        if tenant in self._with:
            return True
        now = self._clock.now()
        read_at = self._without.get(tenant)
        if read_at is not None and now - read_at < self._recheck_s:
            return False
        if await self._store.has_any(tenant):
            self._without.pop(tenant, None)
            self._remember(tenant)
            return True
        if len(self._without) >= _TENANTS_MAX:
            self._without.clear()
        self._without[tenant] = now
        return False

    def _remember(self, tenant: str) -> None:
        if len(self._with) >= _TENANTS_MAX:
            self._with.clear()
        self._with.add(tenant)

    async def load(self, tenant: str, user_ids: Sequence[str]) -> dict[str, UserPreferences]:
        """The stored preferences of those of `user_ids` that have any: one store call, none
        for a tenant without preferences."""
        if not user_ids or not await self.tenant_has_any(tenant):
            return {}
        return await self._store.load(tenant, user_ids)

    async def wanted(
        self,
        tenant: str,
        user_ids: Iterable[str],
        category: str,
        path: DeliveryPath,
        critical: bool = False,
    ) -> set[str]:
        """Those of `user_ids` who get a notification of `category` on `path`, in one store
        call (the webhooks' check for a batch of events)."""
        users = list(dict.fromkeys(user_ids))
        if critical:
            return set(users)
        choices = await self.load(tenant, users)
        return {u for u in users if u not in choices or choices[u].wants(category, path)}

    async def wants(
        self,
        tenant: str,
        user_id: str,
        category: str,
        path: DeliveryPath,
        critical: bool = False,
    ) -> bool:
        """Whether `user_id` gets a notification of `category` on `path` (always, when
        `critical`). For many users, `wanted` reads them in one call."""
        return bool(await self.wanted(tenant, [user_id], category, path, critical))
