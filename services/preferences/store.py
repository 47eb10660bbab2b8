"""Notification preferences per tenant and user: per category and delivery path, with a default.

A user's preferences are one value (`UserPreferences`), stored and replaced whole. A path a
choice leaves unset (None) follows the user's default, and a default left unset is on: a user
with nothing stored gets everything. The bounds below are checked by `check_preferences` before
anything is stored.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

from services.bounds import quote
from services.errors import InvalidArgument

MAX_CATEGORY_LEN: Final = 64
MAX_CATEGORIES: Final = 100
_CATEGORY: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")


class DeliveryPath(enum.Enum):
    IN_APP = "in_app"
    PUSH = "push"
    WEBHOOK = "webhook"


class Choice(NamedTuple):
    """On (True), off (False) or as the default (None), per path."""

    in_app: bool | None = None
    push: bool | None = None
    webhook: bool | None = None

    def on(self, path: DeliveryPath) -> bool | None:
        value: bool | None = getattr(self, path.value)
        return value


@dataclass(frozen=True, slots=True)
class UserPreferences:
    user_id: str
    defaults: Choice = field(default_factory=Choice)
    # category -> choice; at most MAX_CATEGORIES.
    categories: Mapping[str, Choice] = field(default_factory=dict)
    # When stored (0: never).
    updated_at: float = 0.0

    def wants(self, category: str, path: DeliveryPath) -> bool:
        """Whether the user gets a notification of `category` on `path` (a critical one goes
        whatever this says: the caller checks that)."""
        choice = self.categories.get(category) if category else None
        if choice is not None:
            value = choice.on(path)
            if value is not None:
                return value
        default = self.defaults.on(path)
        return True if default is None else default


def check_category(category: str, what: str = "category") -> None:
    """Raises InvalidArgument unless `category` is a category name (1 to 64 characters of
    A-Z a-z 0-9 . _ : / -, starting with a letter or digit)."""
    if not _CATEGORY.fullmatch(category):
        raise InvalidArgument(
            f"{what} {quote(category)} is not a category name: 1 to {MAX_CATEGORY_LEN} "
            "characters of A-Z a-z 0-9 . _ : / -, starting with a letter or digit"
        )


def check_preferences(categories: Sequence[tuple[str, Choice]]) -> dict[str, Choice]:
    """The categories of a put as a mapping, each name checked and listed once.

    Raises:
        InvalidArgument: a bad name, one listed twice, or more than MAX_CATEGORIES.
    """
    if len(categories) > MAX_CATEGORIES:
        raise InvalidArgument(
            f"preferences list {len(categories)} categories; a user has at most "
            f"{MAX_CATEGORIES} (set the rest through the default)"
        )
    found: dict[str, Choice] = {}
    for name, choice in categories:
        check_category(name, "categories[].category")
        if name in found:
            raise InvalidArgument(f"category {quote(name)} is listed twice")
        found[name] = choice
    return found


class PreferenceStore(Protocol):
    async def get(self, tenant: str, user_id: str) -> UserPreferences | None:
        """The user's stored preferences; None when none were stored."""
        ...

    async def put(self, tenant: str, preferences: UserPreferences) -> UserPreferences:
        """Replaces the user's preferences whole; returns what is stored."""
        ...

    async def load(self, tenant: str, user_ids: Sequence[str]) -> dict[str, UserPreferences]:
        """The stored preferences of those of `user_ids` that have any, in one call."""
        ...

    async def has_any(self, tenant: str) -> bool:
        """Whether any user of the tenant has preferences stored."""
        ...

    async def aclose(self) -> None:
        """Releases connections; the store is not used afterwards."""
        ...
