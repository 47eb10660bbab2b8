"""Templates per tenant, versioned: each put adds a version; sends name a version or the newest."""

from __future__ import annotations

import builtins
from typing import Protocol

from services.domain import TemplateRecord


class TemplateStore(Protocol):
    async def put(self, tenant: str, template: TemplateRecord) -> TemplateRecord:
        """Stores `template` as the next version (its `version` is ignored); returns it."""
        ...

    async def get(self, tenant: str, template_id: str, version: int = 0) -> TemplateRecord | None:
        """One version; 0 means the newest."""
        ...

    async def list(self, tenant: str) -> builtins.list[TemplateRecord]:
        """The newest version of each template, by id."""
        ...

    async def delete(self, tenant: str, template_id: str) -> int:
        """Deletes every version; returns how many there were."""
        ...

    async def aclose(self) -> None:
        """Releases connections; the store is not used afterwards."""
        ...
