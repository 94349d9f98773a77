"""The tamper-evident chain on a real store (ADR 0016): SQLite and PostgreSQL.

The bar: editing one byte of one stored event (a raw UPDATE on the events table) makes
``ledger verify`` fail at exactly that position; an untouched store verifies.
"""

from __future__ import annotations

import json
import sqlite3

import psycopg
import pytest
from typer.testing import CliRunner

from infra import integrity
from infra.cli import _register
from infra.cli import app as cli
from infra.settings import Settings
from infra.wiring import build_app
from integrity_story import tell

_register()
runner = CliRunner()


def _verify(url: str, *extra: str):
    return runner.invoke(cli, ["verify", "--database-url", url, *extra])


def _events(url: str) -> list[tuple[int, str, bytes]]:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url[len("sqlite:///") :]) as c:
            return [(r[0], r[1], bytes(r[2])) for r in c.execute("SELECT rowid, topic, state FROM stored_events ORDER BY rowid")]
    with psycopg.connect(url) as c:
        return [(r[0], r[1], bytes(r[2])) for r in c.execute("SELECT notification_id, topic, state FROM ledger_events ORDER BY notification_id")]


def _sql(url: str, statement: str, params: tuple = ()) -> None:
    """A raw edit behind the application's back."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url[len("sqlite:///") :]) as c:
            c.execute(statement.replace("%s", "?").replace("ledger_events", "stored_events").replace("notification_id", "rowid"), params)
    else:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(statement, params)


@pytest.fixture
def told(database_url: str):
    app = build_app(Settings(database_url=database_url))
    story = tell(app)
    yield app, story
    app.close()


def test_an_untouched_store_verifies(told, database_url):
    app, _ = told
    result = _verify(database_url, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["unchained"] == 0
    assert report["checked"] == len(_events(database_url))
    assert report["head"]["position"] == app.recorder.max_notification_id()  # chained on every save


def test_one_edited_byte_fails_verify_at_exactly_that_position(told, database_url):
    app, story = told
    rows = _events(database_url)
    position, topic, state = next(r for r in rows if r[1].endswith("Recipient.AidPaid"))
    assert position not in (rows[0][0], rows[-1][0])  # neither end of the chain
    offset = state.index(b'"to_person"') + len(b'"to_person":') + 1
    if database_url.startswith("sqlite"):
        edited = bytearray(state)
        edited[offset] ^= 0x01
        _sql(database_url, "UPDATE ledger_events SET state = %s WHERE notification_id = %s", (bytes(edited), position))
    else:
        # one byte, in place, by PostgreSQL itself
        _sql(
            database_url,
            "UPDATE ledger_events SET state = set_byte(state, %s, get_byte(state, %s) # 1) WHERE notification_id = %s",
            (offset, offset, position),
        )
    assert sum(a != b for a, b in zip(_events(database_url)[rows.index((position, topic, state))][2], state)) == 1

    result = _verify(database_url)
    assert result.exit_code == 1, result.output
    assert f"BROKEN at position {position}:" in result.output
    assert "Recipient.AidPaid" in result.output
    assert "state field 'to_person'" in result.output

    report = json.loads(_verify(database_url, "--json").output)
    assert report["first_broken"]["position"] == position
    assert report["first_broken"]["kind"] == "altered"
    assert [p["position"] for p in report["problems"]] == [position]  # every other link still holds


def test_a_deleted_event_and_an_edited_link_are_reported(told, database_url):
    app, _ = told
    rows = _events(database_url)
    deleted, relinked = rows[3][0], rows[6][0]
    _sql(database_url, "DELETE FROM ledger_events WHERE notification_id = %s", (deleted,))
    _sql(database_url, "UPDATE event_chain SET hash = %s WHERE position = %s", ("ab" * 32, relinked))
    report = json.loads(_verify(database_url, "--json").output)
    kinds = {p["position"]: p["kind"] for p in report["problems"]}
    assert kinds == {deleted: "deleted", relinked: "chain_row"}
    assert report["first_broken"]["position"] == deleted


def test_the_chain_catches_up_and_seals_a_checkpoint(database_url):
    settings = Settings(database_url=database_url, chain_on_save=False)
    app = build_app(settings)
    tell(app)
    chain = integrity.chain_for(app)
    assert chain.head() is None
    result = runner.invoke(cli, ["chain", "--database-url", database_url])
    assert result.exit_code == 0, result.output
    head = chain.head()
    assert head is not None and head.position == app.recorder.max_notification_id()
    assert f"position {head.position} sha256 {head.hash}" in result.output
    [cp] = chain.store.checkpoints()
    assert (cp.position, cp.hash) == head
    # the snapshot hook: the head at an earlier position is that position's link
    rows = _events(database_url)
    middle = rows[len(rows) // 2][0]
    assert integrity.chain_head(middle, app) == (middle, next(r.hash for r in chain.store.rows(middle - 1, 1)))
    assert _verify(database_url).exit_code == 0
    app.close()
