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
        # the full collection is due 2 s after the start; its own time is the heap's (the whole
        # suite's, on a loaded machine): waited for, not timed (a behaviour, not a speed)
        deadline = time.monotonic() + 60
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


def test_a_collector_that_never_started_leaves_a_frozen_heap_frozen() -> None:
    """Another part of the process (a rebuild, a group commit) froze its heap: a collector set to 0
    neither froze it nor unfreezes it when it stops."""
    cycle = weakref.ref(Cycle())
    gc.freeze()
    c = WorkerCollector(full_every=0)
    c.start()
    c.stop()
    gc.collect()
    assert cycle() is not None  # still frozen
    gc.unfreeze()
    gc.collect()
    assert cycle() is None


def test_only_a_worker_app_manages_the_collector(tmp_path) -> None:  # noqa: ANN001
    """``create_app`` served inside another process (here a test client) leaves that process's
    collector alone: nothing frozen while it serves, a heap the host froze still frozen after it
    stops. ``create_app(worker=True)`` (``ledger serve``, ``infra.http:worker_app``) freezes its
    process's heap while it serves and unfreezes it when it stops."""
    from fastapi.testclient import TestClient

    from infra.http import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'gc.db'}", token_secret="test-secret-for-http")
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_freeze_count() == 0
    cycle = weakref.ref(Cycle())  # garbage in a reference cycle, frozen by the host
    gc.freeze()
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
    gc.collect()
    assert cycle() is not None  # still frozen: the app did not unfreeze the host's heap
    gc.unfreeze()
    gc.collect()
    assert cycle() is None
    with TestClient(create_app(settings, worker=True)) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
