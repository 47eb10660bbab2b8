"""The server times its garbage-collector pauses: they stop every stream on the node."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY

from services import metrics


def _full_collections() -> float:
    value = REGISTRY.get_sample_value("herald_gc_pause_seconds_count", {"generation": "2"})
    return value or 0.0


def test_each_collection_is_timed_once_by_generation() -> None:
    metrics.observe_gc_pauses()
    metrics.observe_gc_pauses()  # idempotent: one timer, however often it is called
    before = _full_collections()
    gc.collect()
    gc.collect()
    assert _full_collections() == before + 2
