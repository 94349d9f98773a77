"""Decision cost against history (issue 16): a one-stop decision for a recipient with 500 prior
decided expenses against one with 5.

Two figures per size, medians over the trials:
- ``decide_ms``: the deciding machinery of the command (``_first_rejection`` and
  ``_record_decision``: assess, record the decision, reconcile what it changed), the recipient
  loaded: what issue 16 measured growing with a recipient's history (a full pass over every
  decided expense);
- ``command_ms``: the whole ``OneStop`` command (load, decide, pay, save) on the in-memory store,
  with the aggregate cache on.
And ``full_pass_decide_ms``: the same decision with resumed passes turned off (every pass full),
to show what the checkpoints save. Printed as JSON; nothing is asserted (timings are not tests).

    .venv/bin/python -m bench.decision_cost [--trials 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import date, datetime, timedelta
from typing import Any

os.environ.setdefault("AGGREGATE_CACHE_MAXSIZE", "1000")
os.environ.setdefault("DEEPCOPY_FROM_AGGREGATE_CACHE", "n")

from commands import models as m  # noqa: E402
from commands.core import LedgerCore  # noqa: E402
from infra.demo import resident_id  # noqa: E402
from infra.wiring import memory_app  # noqa: E402
from ledger.values import CST  # noqa: E402

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


def measure(prior: int, trials: int, *, memos: bool = True) -> dict[str, float]:
    saved = LedgerCore.MEMOS_MAX
    LedgerCore.MEMOS_MAX = saved if memos else 0
    try:
        app = memory_app("shanghai.changning", published_at=START - timedelta(days=1))
        r = Recipient(app, prior, prior)
        spent = _timed(app)
        decide, command = [], []
        for _ in range(trials):
            eid = r.record()
            spent[0] = 0.0
            t = time.perf_counter()
            r.decide(eid)
            command.append(time.perf_counter() - t)
            decide.append(spent[0])
        return {"decide_ms": statistics.median(decide) * 1000, "command_ms": statistics.median(command) * 1000}
    finally:
        LedgerCore.MEMOS_MAX = saved


def main(trials: int = 30) -> dict[str, Any]:
    measure(5, 5)  # warm-up: imports, caches
    small = measure(5, trials)
    large = measure(500, trials)
    full = measure(500, trials, memos=False)
    return {
        "prior_5": {k: round(v, 3) for k, v in small.items()},
        "prior_500": {k: round(v, 3) for k, v in large.items()},
        "prior_500_full_pass": {k: round(v, 3) for k, v in full.items()},
        "decide_ratio_500_vs_5": round(large["decide_ms"] / small["decide_ms"], 3),
        "command_ratio_500_vs_5": round(large["command_ms"] / small["command_ms"], 3),
        "target_decide_ratio": 1.5,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    json.dump(main(parser.parse_args().trials), sys.stdout, indent=2)
    print()
