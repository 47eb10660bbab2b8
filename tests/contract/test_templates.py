"""TemplateStore contract: versions per tenant and id, newest by default."""

from __future__ import annotations

import pytest

from services.domain import TemplateRecord, TemplateText
from services.registry.templates import TemplateStore

pytestmark = pytest.mark.asyncio

T1, T2 = "tenant-1", "tenant-2"


def template(template_id: str = "welcome", title: str = "Hi {{name}}") -> TemplateRecord:
    return TemplateRecord(template_id, 0, "en", {"en": TemplateText(title=title)}, 100.0)


async def test_versions_start_at_one_and_grow(template_store: TemplateStore) -> None:
    first = await template_store.put(T1, template(title="v1"))
    second = await template_store.put(T1, template(title="v2"))
    assert (first.version, second.version) == (1, 2)
    newest = await template_store.get(T1, "welcome")
    assert newest is not None
    assert (newest.version, newest.locales["en"].title) == (2, "v2")
    old = await template_store.get(T1, "welcome", 1)
    assert old is not None
    assert old.locales["en"].title == "v1"
    assert await template_store.get(T1, "welcome", 3) is None
    assert await template_store.get(T1, "other") is None


async def test_list_gives_the_newest_of_each(template_store: TemplateStore) -> None:
    await template_store.put(T1, template("a", "a1"))
    await template_store.put(T1, template("b", "b1"))
    await template_store.put(T1, template("a", "a2"))
    listed = await template_store.list(T1)
    assert sorted((t.template_id, t.version) for t in listed) == [("a", 2), ("b", 1)]


async def test_delete_removes_every_version(template_store: TemplateStore) -> None:
    await template_store.put(T1, template())
    await template_store.put(T1, template())
    assert await template_store.delete(T1, "welcome") == 2
    assert await template_store.get(T1, "welcome") is None
    assert await template_store.delete(T1, "welcome") == 0
    again = await template_store.put(T1, template())
    assert again.version == 1


async def test_tenants_have_their_own_templates(template_store: TemplateStore) -> None:
    await template_store.put(T1, template(title="mine"))
    assert await template_store.get(T2, "welcome") is None
    assert await template_store.list(T2) == []
    assert await template_store.delete(T2, "welcome") == 0
    theirs = await template_store.put(T2, template(title="theirs"))
    assert theirs.version == 1
