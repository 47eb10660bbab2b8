"""TemplateStore in process memory."""

from __future__ import annotations

import builtins
import dataclasses

from services.domain import TemplateRecord


class MemoryTemplateStore:
    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], builtins.list[TemplateRecord]] = {}

    async def put(self, tenant: str, template: TemplateRecord) -> TemplateRecord:
        versions = self._versions.setdefault((tenant, template.template_id), [])
        stored = dataclasses.replace(template, version=len(versions) + 1)
        versions.append(stored)
        return stored

    async def get(self, tenant: str, template_id: str, version: int = 0) -> TemplateRecord | None:
        versions = self._versions.get((tenant, template_id))
        if not versions:
            return None
        if version == 0:
            return versions[-1]
        return versions[version - 1] if version <= len(versions) else None

    async def list(self, tenant: str) -> builtins.list[TemplateRecord]:
        return [
            versions[-1]
            for (t, _), versions in sorted(self._versions.items())
            if t == tenant and versions
        ]

    async def delete(self, tenant: str, template_id: str) -> int:
        return len(self._versions.pop((tenant, template_id), []))

    async def aclose(self) -> None:
        return None
