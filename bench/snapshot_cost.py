"""What a (V, T) snapshot costs with one year of history before it and with four (ADR 0010).

Builds two stores on PostgreSQL through the command handlers: the same recipients, one receipt
each a month decided and paid, over the last year only and over the last four years. Keeps the
cuts view current (as a running ``ledger projections run`` does; the time is printed apart), then
times (best of five, after one warm-up run) the snapshot of the last year's end (V = 31 December, T = the end of that day) from the
persisted cuts, JSON+CSV+XLSX written, with its peak Python memory (tracemalloc) and, for
comparison, the full-replay snapshot. Prints both, and the ratio four years / one year (target
< 1.5). A script, not a test: no assertion on time.

    .venv/bin/python -m bench.snapshot_cost [--recipients 40] [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
import tracemalloc
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LAST_YEAR = 2026
CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "CHC-1"}
HOSPITAL = {"kind": "hospital", "level": 2, "district_designated": True, "code": "H-2"}


def id_number(seq: int) -> str:
    body = f"310105{1940 + seq % 50}0312{seq % 1000:03d}"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return body + "10X98765432"[sum(int(c) * w for c, w in zip(body, weights)) % 11]


def build(url: str, recipients: int, years: int) -> Any:
    from commands import models as m
    from commands.app import LedgerApp
    from infra.settings import Settings
    from infra.wiring import APP_NAME, ensure_policy
    from ledger.values import CST

    first = LAST_YEAR - years + 1
    clock = [datetime(first, 1, 1, 8, 0, tzinfo=CST)]

    def tick(at: datetime | None = None) -> datetime:
        clock[0] = max(clock[0] + timedelta(seconds=1), at or clock[0])
        return clock[0]

    app = LedgerApp(Settings(database_url=url).eventsourcing_env(APP_NAME), jurisdiction="shanghai.changning")
    ensure_policy(app, tick())
    people = []
    categories = ("dibao", "low_income", "special_relief")
    for i in range(recipients):
        res = app.run(m.Enrol(id_number=id_number(i), name=f"bench {i}", street=("华阳路街道", "江苏路街道")[i % 2], at=tick()))
        rid = res.ids["recipient"]
        app.run(m.GrantCategory.model_validate({"recipient": rid, "category": categories[i % 3], "from": f"{first - 1}-01-01", "at": tick()}))
        app.run(m.Insure.model_validate({"recipient": rid, "scheme": "resident", "from": "2015-01-01", "at": tick()}))
        people.append(rid)
    n = 0
    for year in range(first, LAST_YEAR + 1):
        for month in range(1, 13):
            for i, rid in enumerate(people):
                n += 1
                day = date(year, month, 1 + i % 27)
                inpatient = n % 7 == 0
                amount = "12000.00" if inpatient else f"{80 + n % 400}.00"
                res = app.run(m.RecordExpense(
                    recipient=rid, visit_type="inpatient" if inpatient else "outpatient", facility=HOSPITAL if inpatient else CHC,
                    service_date=day, invoice_date=day, invoice_no=f"B{years}-{n}", total=amount, in_scope=amount,
                    basic_insurance_paid="0.00", at=tick(datetime(year, month, day.day, 18, 0, tzinfo=CST)),
                ))
                app.aid(rid, [res.ids["expense"]], tick())
    return app


def measure(app: Any, url: str, out: Path) -> dict[str, Any]:
    from commands.snapshot import FORMATS, snapshot_from_cuts, take_snapshot, write_export
    from infra.settings import Settings
    from ledger.values import CST
    from projections import cuts
    from projections.common import make_engine, projection_url

    engine = make_engine(projection_url(Settings(database_url=url).sqlalchemy_url()))
    started = time.perf_counter()
    cuts.catch_up(engine, app.recorder, app.mapper)
    follow = time.perf_counter() - started
    v = date(LAST_YEAR, 12, 31)
    t = datetime(LAST_YEAR, 12, 31, 23, 59, 59, tzinfo=CST)

    def once() -> tuple[dict[str, Any], float]:
        began = time.perf_counter()
        head, rows = snapshot_from_cuts(app, engine, v, t)
        return write_export(head, rows, FORMATS, out), time.perf_counter() - began

    once()  # warm: imports (openpyxl) and connections, not the snapshot's own cost
    manifest, seconds = min((once() for _ in range(5)), key=lambda r: r[1])
    tracemalloc.start()
    once()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    started = time.perf_counter()
    reference = take_snapshot(app, v, t)
    replay = time.perf_counter() - started
    engine.dispose()
    assert reference.totals() == manifest["totals"], "the cut snapshot differs from the full replay"
    return {
        "events": manifest["store_position"], "rows": manifest["rows"], "snapshot_s": round(seconds, 3), "peak_mb": round(peak / 2**20, 2),
        "full_replay_s": round(replay, 3), "cuts_follow_s": round(follow, 2),
    }


def main(argv: list[str] | None = None) -> int:
    from infra.pg import create_database, drop_database

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipients", type=int, default=40)
    ap.add_argument("--admin-url", default=os.environ.get("LEDGER_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = ap.parse_args(argv)
    figures: dict[str, Any] = {}
    for years in (1, 4):
        name = f"ledger_snapcost_{os.getpid()}_{secrets.token_hex(3)}"
        url = create_database(args.admin_url, name)
        try:
            started = time.perf_counter()
            app = build(url, args.recipients, years)
            built = time.perf_counter() - started
            with tempfile.TemporaryDirectory() as tmp:
                figures[f"{years}y"] = {**measure(app, url, Path(tmp)), "build_s": round(built, 1)}
            app.close()
        finally:
            drop_database(args.admin_url, name)
        print(f"{years} year(s): {json.dumps(figures[f'{years}y'])}", flush=True)
    ratio = figures["4y"]["snapshot_s"] / figures["1y"]["snapshot_s"]
    print(json.dumps({"recipients": args.recipients, **figures, "ratio_4y_over_1y": round(ratio, 2), "target": "< 1.5"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
