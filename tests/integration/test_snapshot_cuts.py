"""(V, T) snapshots from the persisted cuts (``projections.cuts``, ADR 0010) give the rows and the
bytes of the full-replay snapshot (``commands.snapshot.take_snapshot``, kept as the reference),
on SQLite and PostgreSQL, for T before and after retroactive changes and V before and after
effective dates; with T = everything, no recipient is rebuilt from its stream."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from openpyxl import load_workbook

import commands.snapshot as snapshot
from commands.snapshot import COLUMNS, FORMATS, snapshot_from_cuts, take_snapshot, write_export
from infra.settings import Settings
from projections.common import make_engine, projection_url
from timetravel_history import GRID_T, GRID_V, Ledger, end_of, generated, grid_story, ledger_app, moment


def _engine(database_url: str):
    return make_engine(projection_url(Settings(database_url=database_url).sqlalchemy_url()))


def _same(app, engine, v, t, tmp: Path) -> int:
    """Compare the two ways at (V, T); returns the number of rows."""
    ref = take_snapshot(app, v, t)
    head, rows = snapshot_from_cuts(app, engine, v, t)
    streamed = list(rows)
    assert streamed == ref.rows, (v, t)
    assert (head.position, head.resolved_known_at, head.recipients, head.policy) == (ref.position, ref.resolved_known_at, ref.recipients, ref.policy)
    out = tmp / f"{v}_{t.isoformat() if t else 'all'}".replace(":", "")
    manifest = write_export(head, iter(streamed), FORMATS, out)
    expected = ref.export(FORMATS)
    for name, data in expected.items():
        if name.endswith(".manifest.json"):
            assert manifest == json.loads(data)
        else:
            assert (out / name).read_bytes() == data, name
    return len(streamed)


@pytest.fixture
def history(database_url: str) -> Ledger:
    return generated(Ledger(ledger_app(database_url)), recipients=6, seed=4)


def test_cut_snapshots_equal_the_full_replay_on_a_generated_history(history: Ledger, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(database_url)
    try:
        rebuilt: list[str] = []
        real = snapshot._recipient_rows
        monkeypatch.setattr(snapshot, "_recipient_rows", lambda r, *a: rebuilt.append(str(r.id)) or real(r, *a))
        # T = everything: every recipient comes from its latest cut, none from its stream.
        assert _same(history.app, engine, date(2026, 12, 31), None, tmp_path) > 0
        rebuilt.clear()
        _, rows = snapshot_from_cuts(history.app, engine, date(2026, 12, 31), None)
        assert list(rows) and rebuilt == []
        # T at month ends (the 2026-03 retroactive cap cut comes after the end of February), in
        # the middle of a month, before anything; V before and after effective dates.
        total = 0
        for t in (end_of("2026-01-31"), end_of("2026-02-28"), moment("2026-03-20", "12:00:00"), end_of("2026-04-30"), moment("2025-12-31")):
            for v in (date(2026, 1, 31), date(2026, 3, 15), date(2026, 12, 31), date(2025, 12, 31), date(2027, 6, 30)):
                total += _same(history.app, engine, v, t, tmp_path)
        assert total > 0
    finally:
        engine.dispose()


def test_cut_snapshots_on_the_grid_and_as_the_log_grows(database_url: str, tmp_path: Path) -> None:
    """The grid's back-dated grant, revocation and amendment, T before and after each; the cuts
    taken before the back-dated facts are followed by those after (incremental catch-up)."""
    from timetravel_history import grid_back_dated, grid_decided

    ledger = grid_decided(Ledger(ledger_app(database_url)))
    engine = _engine(database_url)
    try:
        assert _same(ledger.app, engine, GRID_V, None, tmp_path) > 0
        grid_back_dated(ledger)
        for name, t in GRID_T.items():
            for v in (GRID_V, GRID_V.replace(month=1, day=31), date(2026, 2, 1)):
                _same(ledger.app, engine, v, t, tmp_path / name)
        _same(ledger.app, engine, GRID_V, None, tmp_path / "now")
        _same(ledger.app, engine, GRID_V, GRID_T["amended"] - timedelta(days=40), tmp_path / "before")
    finally:
        engine.dispose()


def test_xlsx_has_numbers_a_totals_row_widths_and_filters(tmp_path: Path) -> None:
    grid = grid_story(Ledger(ledger_app(None)))
    data = take_snapshot(grid.app, GRID_V, GRID_T["amended"]).render("xlsx")
    doc = json.loads(take_snapshot(grid.app, GRID_V, GRID_T["amended"]).render("json"))
    book = load_workbook(io.BytesIO(data))
    sheet, about = book.worksheets
    n = len(doc["rows"])
    assert sheet.max_row == n + 2 and sheet.cell(n + 2, 1).value == "合计 total"
    for col in range(7, len(COLUMNS) + 1):
        values = [sheet.cell(r, col).value for r in range(2, n + 2)]
        assert all(isinstance(x, (int, float)) for x in values)
        key = sheet.cell(1, col).value.split(" ")[0]
        assert Decimal(str(sheet.cell(n + 2, col).value)).quantize(Decimal("0.01")) == Decimal(doc["totals"][key])
    assert sheet.auto_filter.ref == f"A1:{chr(ord('A') + len(COLUMNS) - 1)}{n + 1}" and about.auto_filter.ref
    assert sheet.column_dimensions["A"].width >= 30
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(take_snapshot(grid.app, GRID_V, GRID_T["amended"]).render("xlsx")).hexdigest()
