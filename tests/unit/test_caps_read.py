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
