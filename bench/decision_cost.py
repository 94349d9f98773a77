"""Decision cost against history (issue 16): "a decision for a recipient with 500 prior expenses
costs no more than 1.5x one with 5".

What is measured is **the whole one-stop decision as an officer's request runs it**: one
``OneStop`` command through ``LedgerApp.run`` on a ledger built by the ordinary wiring
(``infra.wiring.build_app`` on a store: the personal-data mapper, the integrity chain,
compression, and the ordinary wiring's caching, nothing set here), from loading the recipient to
saving what it decided and paid (snapshots included when one falls due). The expense is recorded
just before, untimed, as at the point of care. The store is an in-memory SQLite database unless
``database_url`` names another (``bench.run`` passes its PostgreSQL database); not the library's
in-memory store, whose read of "the events after version v" walks every event of the aggregate,
which no database does.

- Each trial decides one expense for a recipient with 5 prior one-stop decisions (a new recipient
  each trial, so that it stays at 5) and one for the recipient with 500 (who has 500 + the trials
  before), in alternating order, so that both sizes see the same moments of a shared machine.
- The figure (``ratio_500_vs_5``) is the median over the trials of the two decisions' ratio, each
  pair measured back to back, so that a load on the machine that comes and goes weighs on both;
  the ratio of the medians, the means (which carry the occasional snapshot of the larger
  recipient, one command in ~33) and the deciding machinery alone (``decide_ms``:
  ``_first_rejection`` and ``_record_decision``, the recipient loaded) are reported beside it.
- ``full_pass``: the deciding machinery at 500 with the kept passes turned off (every pass over
  every decided expense), to show what they save.

Printed as JSON; nothing is asserted (timings are not tests).

    .venv/bin/python -m bench.decision_cost [--trials 31]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from datetime import date, datetime, timedelta
from typing import Any

from commands import models as m
from commands.core import LedgerCore
from infra.demo import resident_id
from infra.settings import Settings
from infra.wiring import build_app, ensure_policy
from ledger.values import CST

START = datetime(2024, 1, 2, 9, tzinfo=CST)
FACILITIES = (
    {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "CHC-1"},
    {"kind": "hospital", "level": 2, "district_designated": True, "code": "H-2"},
    {"kind": "hospital", "level": 3, "code": "H-3"},
)


class Recipient:
    """One recipient with ``prior`` expenses decided one-stop, one a day."""

    def __init__(self, app: Any, n: int, prior: int):
        self.app, self.n, self.day = app, 0, 0
        at = START + timedelta(seconds=n)
        self.rid = app.run(m.Enrol(id_number=resident_id("310105", date(1950, 1, 1) + timedelta(days=n), 100 + n, True), name=f"测试{n}", street="华阳路街道", at=at)).ids["recipient"]
        app.run(m.GrantCategory(recipient=self.rid, category="dibao", valid_from=date(2020, 1, 1), at=at + timedelta(seconds=1)))
        app.run(m.Insure(recipient=self.rid, scheme="resident", valid_from=date(2015, 1, 1), at=at + timedelta(seconds=2)))
        for _ in range(prior):
            self.decide(self.record())

    def record(self) -> str:
        self.n += 1
        self.day += 1
        on = START.date() + timedelta(days=self.day)
        at = datetime(on.year, on.month, on.day, 10, tzinfo=CST)
        res = self.app.run(
            m.RecordExpense(
                recipient=self.rid, visit_type="outpatient", facility=FACILITIES[self.n % 3], service_date=on,
                invoice_date=on, invoice_no=f"{self.rid[:8]}-{self.n}", total="260.00", in_scope="240.00",
                basic_insurance_paid="60.00", referred=True, at=at,
            )
        )
        return res.ids["expense"]

    def decide(self, eid: str) -> None:
        on = START.date() + timedelta(days=self.day)
        res = self.app.run(m.OneStop(expense=eid, at=datetime(on.year, on.month, on.day, 11, tzinfo=CST)))
        assert res.status == "accepted", res.as_dict()


def ledger(database_url: str = "sqlite:///:memory:") -> Any:
    """The ledger as the ordinary wiring builds it on ``database_url``, its policy published the
    day before the first decision."""
    app = build_app(Settings(database_url=database_url), jurisdiction="shanghai.changning", publish_policy=False)
    ensure_policy(app, START - timedelta(days=1))
    return app


def _timed(app: Any) -> list[float]:
    """Wrap the deciding machinery of ``app`` to sum the time spent inside it per command."""
    spent = [0.0]
    for name in ("_first_rejection", "_record_decision"):
        real = getattr(app, name)

        def timed(*a: Any, _real: Any = real, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return _real(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t

        setattr(app, name, timed)
    return spent


def _one(r: Recipient, spent: list[float]) -> tuple[float, float]:
    """One decision for ``r``: (the whole command, its deciding machinery), seconds."""
    eid = r.record()
    spent[0] = 0.0
    t = time.perf_counter()
    r.decide(eid)
    return time.perf_counter() - t, spent[0]


def _summary(command: list[float], decide: list[float]) -> dict[str, float]:
    return {
        "command_ms": statistics.median(command) * 1000,
        "command_mean_ms": statistics.fmean(command) * 1000,
        "decide_ms": statistics.median(decide) * 1000,
    }


def measure(trials: int, small: int = 5, large: int = 500, database_url: str = "sqlite:///:memory:") -> dict[str, Any]:
    """``trials`` decisions at each size, interleaved (see the module's docstring)."""
    app = ledger(database_url)
    big = Recipient(app, large, large)
    fresh = [Recipient(app, 1000 + i, small) for i in range(trials + 1)]
    spent = _timed(app)
    _one(fresh.pop(), spent)  # warm-up: first calls, caches
    _one(big, spent)
    out: dict[int, tuple[list[float], list[float]]] = {small: ([], []), large: ([], [])}
    gc.collect()
    for i in range(trials):
        pair = ((small, fresh[i]), (large, big)) if i % 2 == 0 else ((large, big), (small, fresh[i]))
        for size, r in pair:
            command, decide = _one(r, spent)
            out[size][0].append(command)
            out[size][1].append(decide)
    a, b = _summary(*out[small]), _summary(*out[large])
    return {
        f"prior_{small}": a,
        f"prior_{large}": b,
        f"ratio_{large}_vs_{small}": statistics.median(y / x for x, y in zip(out[small][0], out[large][0])),
        f"median_ratio_{large}_vs_{small}": b["command_ms"] / a["command_ms"],
        f"decide_ratio_{large}_vs_{small}": b["decide_ms"] / a["decide_ms"],
        f"mean_ratio_{large}_vs_{small}": b["command_mean_ms"] / a["command_mean_ms"],
    }


def full_pass(trials: int, prior: int = 500, database_url: str = "sqlite:///:memory:") -> dict[str, float]:
    """The deciding machinery at ``prior`` with no kept pass: every pass over every decided expense."""
    saved = LedgerCore.MEMOS_MAX
    LedgerCore.MEMOS_MAX = 0
    try:
        app = ledger(database_url)
        r = Recipient(app, prior, prior)
        spent = _timed(app)
        command, decide = zip(*(_one(r, spent) for _ in range(trials)))
        return _summary(list(command), list(decide))
    finally:
        LedgerCore.MEMOS_MAX = saved


def main(trials: int = 31, *, with_full_pass: bool = True, database_url: str = "sqlite:///:memory:") -> dict[str, Any]:
    out = measure(trials, database_url=database_url)
    if with_full_pass:
        out["prior_500_full_pass"] = full_pass(max(3, trials // 5), database_url=database_url)
    out["trials"] = trials
    out["target_ratio"] = 1.5
    return json.loads(json.dumps(out), parse_float=lambda x: round(float(x), 3))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=31)
    parser.add_argument("--no-full-pass", action="store_true")
    args = parser.parse_args()
    json.dump(main(args.trials, with_full_pass=not args.no_full_pass), sys.stdout, indent=2)
    print()
