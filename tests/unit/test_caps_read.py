"""The caps a reader is shown (``LedgerCore.annual_caps``, ``GET /recipients/{id}/caps``: R-CAP-2)
come from the pass resumed from the process's last pass over the recipient; they equal the caps
of a full pass, for every recipient of every public scenario."""

from __future__ import annotations

from aggregate_support import scenario_recipients
from commands import queries


def test_the_caps_read_from_the_kept_pass_are_those_of_a_full_pass() -> None:
    resumed = compared = 0
    for name, app, _n, rid in scenario_recipients():
        r = app.recipient(rid)
        if not r.decided_refs():
            continue
        resumed += app._kept_pass(r) is not None  # noqa: SLF001 - the path under test resumes from it
        full = queries.annual_rows(r, app.policy().book, app.schemes)
        assert app.annual_caps(r) == full, (name, rid)
        compared += 1
    assert compared > 10 and resumed > 10


def test_a_readers_pass_is_kept_for_the_next_pass(monkeypatch) -> None:
    """A process that never decided for a recipient (another worker of the service did) keeps the
    pass its first read made, as a pass only: the next read resumes from it and assesses nothing
    again; a pass kept by a decision, still standing, is not replaced by a reader's."""
    from ledger import engine

    assessed: list[str] = []
    real = engine._assess_one  # noqa: SLF001 - what a pass costs: one call per expense assessed

    def counted(*a, **k):
        assessed.append("x")
        return real(*a, **k)

    monkeypatch.setattr(engine, "_assess_one", counted)
    checked = kept_settled = 0
    for name, app, _n, rid in scenario_recipients():
        r = app.recipient(rid)
        if len(r.decided_refs()) < 2:
            continue
        settled = app._kept_pass(r)  # noqa: SLF001
        if settled is not None and settled[0] == app._standing(r):  # noqa: SLF001
            app.annual_caps(r)
            assert app._kept_pass(r) is settled, name  # noqa: SLF001
            kept_settled += 1
        app._memos.pop(r.id, None)  # noqa: SLF001 - as in a process that never decided for r
        assessed.clear()
        first = app.annual_caps(r)
        assert len(assessed) >= len(r.decided_refs()), name  # a full pass
        kept = app._kept_pass(r)  # noqa: SLF001
        assert kept is not None and kept[0] is None, name  # a pass only: a decision still compares every due
        assessed.clear()
        again = app.annual_caps(r)
        assert assessed == [], (name, len(assessed))  # resumed at the end of the kept pass
        assert again == first == queries.annual_rows(r, app.policy().book, app.schemes), name
        checked += 1
    assert checked > 5 and kept_settled > 5
