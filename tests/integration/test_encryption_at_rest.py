"""Personal data at rest on a real store (ADR 0015): SQLite and PostgreSQL.

The bar: no plaintext id number or name in a dump of the database; erasure keeps ``verify`` and
``replay --verify`` green, replay works with the personal fields shown as erased, and the money
figures do not change.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra import privacy
from infra.cli import _register
from infra.cli import app as cli
from infra.settings import Settings
from infra.wiring import build_app
from integrity_story import id_number, money_figures, ok, tell
from commands import models as m
from ledger.values import ERASED

_register()
runner = CliRunner()


def _forms(text: str) -> list[bytes]:
    """Every way a stored string could show in a dump: raw UTF-8, JSON \\u-escapes, and the hex
    of either (pg_dump writes bytea as hex)."""
    raw = text.encode("utf-8")
    escaped = json.dumps(text).strip('"').encode("ascii")
    return [raw, escaped, raw.hex().encode(), escaped.hex().encode()]


def _dump(url: str) -> bytes:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        with sqlite3.connect(path) as c:
            text = "\n".join(c.iterdump()).encode("utf-8")
        files = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))  # the file, its WAL
        return text + files
    pg_dump = shutil.which("pg_dump") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))), None)
    assert pg_dump, "pg_dump is needed for this test"
    return subprocess.run([str(pg_dump), "--no-owner", url], check=True, capture_output=True, timeout=60).stdout


@pytest.fixture
def told(database_url: str):
    app = build_app(Settings(database_url=database_url, data_key="test data key"))
    story = tell(app)
    # a snapshot too: snapshots hold the aggregate's attributes
    number, name = id_number("31010619850202301"), "李四"
    rid = ok(app.run(m.Enrol(id_number=number, name=name))).ids["recipient"]
    app.take_snapshot(uuid.UUID(rid))
    story.secrets_extra = [number, name]
    yield app, story
    app.close()


def test_a_dump_holds_no_plaintext_id_number_or_name(told, database_url):
    app, story = told
    dump = _dump(database_url)
    # the dump is readable where nothing is personal: the street office is there in clear
    assert any(form in dump for form in _forms(story.people[0].street))
    assert b"recipient_keys" in dump and b"event_chain" in dump
    for secret in story.secrets + story.secrets_extra:
        for form in _forms(secret):
            assert form not in dump, f"{secret!r} appears in the dump"
    # and the application still reads every one of them
    assert [app.recipient(p.rid).name for p in story.people] == [p.name for p in story.people]


def test_erase_keeps_the_chain_the_replay_and_the_money(told, database_url):
    app, story = told
    first, second = story.people
    before = money_figures(app, story)
    env = {"LEDGER_DATABASE_URL": database_url, "LEDGER_DATA_KEY": "test data key"}

    result = runner.invoke(cli, ["erase", first.id_number, "--reason", "request 17", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert f"erased: recipient {first.rid}" in result.output

    again = build_app(Settings(database_url=database_url, data_key="test data key"))  # no cached keys
    try:
        r = again.recipient(first.rid)
        assert (r.id_number, r.name) == (ERASED, ERASED)
        assert again.recipient(second.rid).name == second.name
        assert money_figures(again, story) == before
        status = privacy.key_store(again).status(first.rid)
        assert status["state"] == "erased" and status["reason"] == "request 17"
    finally:
        again.close()

    verify = runner.invoke(cli, ["verify", "--json"], env=env)
    assert verify.exit_code == 0, verify.output
    assert json.loads(verify.output)["ok"]
    replay = runner.invoke(cli, ["replay", "--all", "--verify", "--json"], env=env)
    assert replay.exit_code == 0, replay.output
    report = json.loads(replay.output)
    assert report["decisions"] >= 2 and not report.get("different")

    result = runner.invoke(cli, ["erase", first.rid, "--yes"], env=env)
    assert "already erased" in result.output


def test_another_data_key_cannot_read_the_store(told, database_url):
    app, story = told
    other = build_app(Settings(database_url=database_url, data_key="some other key"), publish_policy=False)
    try:
        with pytest.raises(privacy.PersonalDataError, match="LEDGER_DATA_KEY"):
            other.recipient(story.people[0].rid)
        # nor find anyone by id number: the search hash is keyed too
        assert other.recipient_id_for(story.people[0].id_number) != uuid.UUID(story.people[0].rid)
    finally:
        other.close()
