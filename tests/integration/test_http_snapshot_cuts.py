"""GET /snapshots and the console's snapshot page answer from the persisted cuts (R-TIME-3,
ADR 0010), not from a replay of the log per request: the bytes are those of the full-replay
``take_snapshot`` render for the same (V, T) on SQLite and PostgreSQL, for T before and after the
late insurance settlement that opened a clearing case; the full replay is never called; each
download is in the access log; the temporary files are gone once the response has been sent."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import pytest
from clearing_story import CHC, Story, app_on
from console_story import tell
from fastapi.testclient import TestClient

import commands.snapshot as snapshot
from infra.http import create_app, snapshot_files
from infra.http.auth import issue
from infra.settings import Settings
from ledger.values import CST

SECRET = "snapshot-cuts-secret"
V = (date(2026, 3, 31), date(2026, 1, 15))
# Everything recorded; before the late settlement of 2026-03 (no clearing case yet); before anything.
T = (None, datetime(2026, 3, 1, 12, 0, tzinfo=CST), datetime(2025, 6, 1, tzinfo=CST))
MEDIA = {"csv": "text/csv", "json": "application/json", "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


@contextmanager
def service_on(database_url: str) -> Iterator[tuple[TestClient, Story]]:
    settings = Settings(database_url=database_url, token_secret=SECRET)
    ledger = app_on(settings)
    story = tell(Story(ledger))
    try:
        with TestClient(create_app(settings, ledger=ledger)) as client:
            yield client, story
    finally:
        ledger.close()


def _bearer(officer: str, role: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + issue(SECRET, officer, role, None)}


@pytest.fixture
def directories(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every temporary directory the service makes for a snapshot."""
    made: list[Path] = []
    real = snapshot_files.temporary_directory

    def recording() -> Path:
        made.append(real())
        return made[-1]

    monkeypatch.setattr(snapshot_files, "temporary_directory", recording)
    return made


def _no_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, a full replay of the log fails the request."""

    def refuse(*_a, **_k):
        raise AssertionError("the full replay (take_snapshot / timeline.cut) was called")

    monkeypatch.setattr(snapshot, "take_snapshot", refuse)
    monkeypatch.setattr(snapshot, "cut", refuse)


def test_http_snapshot_bytes_equal_the_full_replay(database_url: str, monkeypatch: pytest.MonkeyPatch, directories: list[Path]) -> None:
    with service_on(database_url) as (client, story):
        references = {(v, t): snapshot.take_snapshot(story.app, v, t) for v in V for t in T}
        # the cases differ: the settlement after the first T opened a clearing balance; the last T saw nothing
        assert references[(V[0], T[0])].rows and references[(V[0], T[0])].totals()["clearing_open"] != "0.00"
        assert references[(V[0], T[1])].totals()["clearing_open"] == "0.00" and references[(V[0], T[2])].rows == []
        _no_replay(monkeypatch)
        regulator = _bearer("reg-1", "regulator")
        asked = []
        for (v, t), ref in references.items():
            for fmt in ("csv", "json", "xlsx"):
                params = {"valid_on": v.isoformat(), "format": fmt, **({"known_at": t.isoformat()} if t else {})}
                got = client.get("/snapshots", headers=regulator, params=params)
                assert got.status_code == 200, got.text
                expected = ref.render(fmt)
                assert got.content == expected, (v, t, fmt)
                assert got.headers["content-type"].startswith(MEDIA[fmt])
                assert got.headers["content-disposition"] == f'attachment; filename="{ref.stem}.{fmt}"'
                assert got.headers["content-length"] == str(len(expected))
                asked.append(f"snapshot?valid_on={v}&known_at={t.isoformat() if t else ''}&format={fmt}")
        # every download is in the access log as a population-wide read
        logged = [a for a in client.app.state.service.store.accesses("-", include_population=True) if a["operation"] == "snapshot"]
        assert [a["target"] for a in logged] == asked and {(a["officer"], a["scope"]) for a in logged} == {("reg-1", "population")}
        # the files were streamed from disk and removed afterwards
        assert len(directories) == len(asked) and not any(d.exists() for d in directories)
        # a role without the snapshot permission is refused before anything is written
        assert client.get("/snapshots", headers=_bearer("h-1", "reviewer"), params={"valid_on": "2026-03-31"}).status_code == 403
        assert len(directories) == len(asked)


def test_console_snapshot_page_and_download_from_the_cuts(database_url: str, monkeypatch: pytest.MonkeyPatch, directories: list[Path]) -> None:
    with service_on(database_url) as (client, story):
        v, t = V[0], T[1]
        ref = snapshot.take_snapshot(story.app, v, t)
        ref_files = ref.export(("csv", "xlsx"))
        ref_manifest = json.loads(ref_files[f"{ref.stem}.manifest.json"])
        ref_csv = snapshot.take_snapshot(story.app, v, None).export(("csv",))
        _no_replay(monkeypatch)
        r = client.post("/console/login", data={"token": issue(SECRET, "reg-1", "regulator", None)}, follow_redirects=False)
        assert r.status_code == 303
        page = client.get("/console/snapshots", params={"valid_on": v.isoformat(), "known_at": "2026-03-01T12:00"})
        assert page.status_code == 200
        # the page's manifest names the files of the full replay, with their SHA-256
        for name, meta in ref_manifest["files"].items():
            assert name in page.text and meta["sha256"] in page.text
        assert f'data-check="manifest-rows">{ref_manifest["rows"]}<' in page.text
        assert f'data-check="manifest-position">{ref_manifest["store_position"]}<' in page.text
        # the download: the CSV and its manifest, byte for byte those of the full replay
        r = client.get("/console/snapshots/download", params={"valid_on": v.isoformat(), "known_at": "", "format": "csv"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        assert r.headers["content-length"] == str(len(r.content))
        files = zipfile.ZipFile(io.BytesIO(r.content))
        assert {name: files.read(name) for name in files.namelist()} == ref_csv
        assert len(directories) == 2 and not any(d.exists() for d in directories)


def test_a_failed_export_leaves_no_files(database_url: str, monkeypatch: pytest.MonkeyPatch, directories: list[Path]) -> None:
    with service_on(database_url) as (client, _story):
        real = snapshot.write_export

        def broken(head, rows, formats, out, chain_head=None):
            real(head, rows, formats, out, chain_head)
            raise RuntimeError("disk full")

        monkeypatch.setattr(snapshot, "write_export", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            client.get("/snapshots", headers=_bearer("reg-1", "regulator"), params={"valid_on": "2026-03-31", "format": "xlsx"})
        assert len(directories) == 1 and not directories[0].exists()
        logged = [a for a in client.app.state.service.store.accesses("-", include_population=True) if a["operation"] == "snapshot"]
        assert logged == []  # nothing left the service, so nothing is logged as read


def test_repeated_snapshots_reuse_unchanged_recipients_and_follow_every_change(database_url: str, monkeypatch: pytest.MonkeyPatch,
                                                                               directories: list[Path]) -> None:
    """A service answers many snapshots (issue 16's mixed load): a recipient whose cut has not moved
    since the last snapshot is neither read nor summed again (``snapshot_from_cuts(kept=…)``), and one that changed
    is: each answer is still the full replay's, before and after a new expense and a repayment."""
    from projections import cuts

    with service_on(database_url) as (client, story):
        regulator = _bearer("reg-1", "regulator")
        read: list[list[str]] = []
        real_states = cuts.states

        def states(conn, keys):
            read.append(sorted(rid for rid, _ in keys))
            return real_states(conn, keys)

        monkeypatch.setattr(cuts, "states", states)

        def asked(v: date) -> bytes:
            got = client.get("/snapshots", headers=regulator, params={"valid_on": v.isoformat(), "format": "json"})
            assert got.status_code == 200, got.text
            return got.content

        r1, r2 = (str(story.runner.recipients[h]) for h in ("R1", "R2"))
        v = V[0]
        assert asked(v) == snapshot.take_snapshot(story.app, v, None).render("json")
        assert read[-1] == sorted([r1, r2])  # both read from their cuts once
        assert asked(v) == snapshot.take_snapshot(story.app, v, None).render("json")
        assert read[-1] == []  # nothing changed: nothing read again
        # another valid date is another answer: read again
        assert asked(V[1]) == snapshot.take_snapshot(story.app, V[1], None).render("json")
        assert read[-1] == sorted([r1, r2])

        # the same day as R2's last cut (the revocation): the day's cut is taken again, at a later version
        story.expense("E4", "R2", "2026-03-05T11:00:00+08:00", facility={**CHC, "code": "CN-CHC-TS"}, service="2026-03-04", in_scope="80.00")
        assert asked(v) == snapshot.take_snapshot(story.app, v, None).render("json")
        assert read[-1] == [r2]  # only the recipient whose cut moved
        story("repay", "2026-03-25T10:00:00+08:00", recipient="R1", amount="100.00")
        assert asked(v) == snapshot.take_snapshot(story.app, v, None).render("json")
        assert read[-1] == [r1]
        assert asked(v) == snapshot.take_snapshot(story.app, v, None).render("json") and read[-1] == []
