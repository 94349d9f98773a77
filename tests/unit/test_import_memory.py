"""The import process's memory bookkeeping (issue 16, ADR 0017): the engine's kept passes count
the expenses they hold as they come and go, and a group-committing import freezes the collector's
heap after each commit and collects it whole at growing intervals."""

from __future__ import annotations

import gc
from types import SimpleNamespace

from commands.core import _Memos
from commands.group import GC_ENV, _Collector, _collector_mode


def _pass(n: int) -> tuple[tuple, SimpleNamespace]:
    return ((), SimpleNamespace(entries=list(range(n))))


def test_kept_passes_count_what_they_hold_through_replace_pop_del_and_clear() -> None:
    memos = _Memos()
    memos["a"], memos["b"] = _pass(3), _pass(5)
    assert memos.held == 8
    memos["a"] = _pass(10)  # replaced, not added
    assert memos.held == 15 and len(memos) == 2
    memos.pop("b")
    assert memos.held == 10
    assert memos.pop("missing", None) is None and memos.held == 10
    del memos["a"]
    assert memos.held == 0 and not memos
    memos["c"] = _pass(4)
    memos.clear()
    assert memos.held == 0 and not memos.sizes


def test_a_replaced_pass_moves_to_the_end_of_the_eviction_order() -> None:
    memos = _Memos()
    memos["a"], memos["b"] = _pass(1), _pass(1)
    memos["a"] = _pass(2)
    assert next(iter(memos)) == "b"


def test_the_collector_freezes_after_each_commit_and_collects_whole_at_growing_intervals() -> None:
    collector = _Collector()
    collector.FIRST, collector.GROWTH = 100, 4.0
    collector.next_full = collector.FIRST
    try:
        collector.committed(60)
        assert gc.get_freeze_count() > 0 and collector.full == 0
        collector.committed(60)  # 120 >= 100: unfreeze, collect, freeze again
        assert collector.full == 1 and collector.next_full == 480
        collector.committed(300)  # 420 < 480
        assert collector.full == 1
        collector.committed(100)  # 520
        assert collector.full == 2 and collector.next_full == 2080
    finally:
        gc.unfreeze()


def test_only_an_application_that_asks_for_it_freezes() -> None:
    assert _collector_mode(SimpleNamespace(env={GC_ENV: "freeze"})) == "freeze"
    assert _collector_mode(SimpleNamespace(env={})) is None
    assert _collector_mode(object()) is None
