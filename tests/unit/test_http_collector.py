"""A service worker's collector (``infra.http.collector``, ADR 0023): what is alive at the start
and then once a second is frozen, so the collector's passes walk only what is new; a full
collection (unfrozen, collected, frozen again) every ``http_gc_full_seconds``; 0 leaves Python's
collector alone; stopping unfreezes."""

from __future__ import annotations

import gc
import time
import weakref

import pytest

from infra.http.collector import WorkerCollector
from infra.settings import Settings


@pytest.fixture(autouse=True)
def _unfrozen():
    """No automatic collection during a test: only the collector's own can free a cycle."""
    gc.unfreeze()
    gc.disable()
    yield
    gc.enable()
    gc.unfreeze()


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_heap_is_frozen_and_collected_whole_on_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(WorkerCollector, "FREEZE_EVERY", 0.02)
    c = WorkerCollector(full_every=2.0)
    c.start()
    try:
        before = gc.get_freeze_count()
        assert before > 0  # what the worker holds after its start
        cycle = weakref.ref(Cycle())  # garbage in a reference cycle, made after the freeze
        deadline = time.monotonic() + 5
        while gc.get_freeze_count() <= before and time.monotonic() < deadline:
            time.sleep(0.005)
        assert gc.get_freeze_count() > before and c.full == 0  # frozen by the next tick, before any full collection
        gc.collect(1)  # a young collection does not reach the frozen heap
        assert cycle() is not None
        while c.full == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.full >= 1  # unfrozen, collected whole, frozen again
        assert cycle() is None
    finally:
        c.stop()
    assert gc.get_freeze_count() == 0


def test_zero_leaves_the_collector_alone() -> None:
    c = WorkerCollector(full_every=0)
    c.start()
    assert gc.get_freeze_count() == 0 and c._thread is None
    c.stop()
    assert Settings(http_gc_full_seconds=0).http_gc_full_seconds == 0
    assert Settings().http_gc_full_seconds == 60 and Settings().http_threads == 4
