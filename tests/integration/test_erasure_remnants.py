"""Erasure leaves nothing to recover and is obeyed at once (ADR 0015), on SQLite and PostgreSQL.

The attacks: read the database's raw pages after ``ledger erase`` looking for the deleted wrapped
key (PostgreSQL kept it in a dead row version until VACUUM; SQLite can keep it in the write-ahead
log or in a freed cell); read the person through a running service that had cached their key;
record new personal data for them from a process that had cached it.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from commands import models as m
from infra import privacy
from infra.cli import _register
from infra.cli import app as cli
from infra.http import create_app
from infra.http.auth import issue
from infra.settings import Settings
from infra.wiring import build_app
from integrity_story import id_number, tell
from ledger.values import ERASED

_register()
runner = CliRunner()
DATA_KEY = "erasure test data key, not a real one"
SECRET = "erasure-test-token-secret-of-enough-bytes"


def _settings(url: str) -> Settings:
    return Settings(database_url=url, data_key=DATA_KEY, token_secret=SECRET)


def _sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None


def _wrapped_key(url: str, rid: str) -> bytes:
    path = _sqlite_path(url)
    if path is not None:
        with sqlite3.connect(path) as c:
            (value,) = c.execute("SELECT wrapped_key FROM recipient_keys WHERE recipient_id = ?", (rid,)).fetchone()
    else:
        with psycopg.connect(url, autocommit=True) as c:
            (value,) = c.execute("SELECT wrapped_key FROM recipient_keys WHERE recipient_id = %s", (rid,)).fetchone()
    assert value is not None and len(value) == 60  # nonce, wrapped 256-bit key, tag
    return bytes(value)


def _raw_store(url: str) -> bytes:
    """Every byte the live database holds. SQLite: the file, its WAL and shared-memory index.
    PostgreSQL: every page of every table, TOAST table and index of the database, read with
    ``pageinspect`` (``get_raw_page``: free space and dead row versions included), plus the
    ``t_data`` of every heap tuple ``heap_page_items`` lists in ``recipient_keys``."""
    path = _sqlite_path(url)
    if path is not None:
        return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))
    chunks: list[bytes] = []
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        rels = c.execute(
            "SELECT c.oid::regclass::text, pg_relation_size(c.oid) / current_setting('block_size')::int "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 't', 'i', 'm') AND c.relpersistence = 'p' "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        assert any(name == "recipient_keys" for name, _ in rels)
        for name, blocks in rels:
            for block in range(blocks):
                chunks.append(bytes(c.execute("SELECT get_raw_page(%s, %s)", (name, block)).fetchone()[0]))
        blocks = c.execute("SELECT pg_relation_size('recipient_keys') / current_setting('block_size')::int").fetchone()[0]
        for block in range(blocks):
            for (data,) in c.execute("SELECT t_data FROM heap_page_items(get_raw_page('recipient_keys', %s)) WHERE t_data IS NOT NULL", (block,)):
                chunks.append(bytes(data))
    return b"\n".join(chunks)


def _holds(raw: bytes, key: bytes) -> bool:
    """Any 16-byte stretch of the wrapped key (random bytes: no false match)."""
    return any(key[i : i + 16] in raw for i in range(len(key) - 15))


@pytest.fixture
def story(database_url):
    app = build_app(_settings(database_url))
    told = tell(app)
    yield app, told
    app.close()


def test_erase_leaves_no_key_bytes_in_the_live_database(story, database_url):
    app, told = story
    first, second = told.people
    key, kept = _wrapped_key(database_url, first.rid), _wrapped_key(database_url, second.rid)
    raw = _raw_store(database_url)
    assert _holds(raw, key) and _holds(raw, kept), "the scan must see keys where they are"

    env = {"LEDGER_DATABASE_URL": database_url, "LEDGER_DATA_KEY": DATA_KEY}
    result = runner.invoke(cli, ["erase", first.rid, "--reason", "request 41", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert f"erased: recipient {first.rid}" in result.output and "warning" not in result.output

    raw = _raw_store(database_url)
    assert not _holds(raw, key), "the erased recipient's wrapped key is still in the database's pages"
    assert _holds(raw, kept), "the other recipient's key must stay"
    with privacy.fresh_keys():  # what every request of the service opens: the erasure is seen
        assert app.recipient(first.rid).name == ERASED  # by the app that had the key cached, too
        assert app.recipient(second.rid).name == second.name


def test_a_transaction_older_than_the_erasure_delays_the_purge_and_says_so(story, database_url, monkeypatch):
    app, told = story
    first = told.people[0]
    key = _wrapped_key(database_url, first.rid)
    monkeypatch.setattr(privacy, "PURGE_WAIT_SECONDS", 0.3)
    path = _sqlite_path(database_url)
    # a reader that began before the erasure and still holds its snapshot
    if path is not None:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN")
        holder.execute("SELECT count(*) FROM recipient_keys").fetchall()
        release = lambda: holder.execute("COMMIT")  # noqa: E731
    else:
        holder = psycopg.connect(database_url)
        holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM recipient_keys").fetchall()
        release = holder.rollback
    try:
        outcome = privacy.erase(app, first.rid, "request 42")
        assert outcome["erased"] and outcome["purged"] is False
        assert _holds(_raw_store(database_url), key)  # what the warning is about
        release()
        again = privacy.erase(app, first.rid)  # running it again finishes the purge
        assert again["already_erased"] and again["purged"] is True
        assert not _holds(_raw_store(database_url), key)
    finally:
        holder.close()


def test_a_running_service_stops_serving_an_erased_person_at_once(story, database_url):
    """Two processes on one store: the service has the person's key cached; the erasure is made
    by another application (``ledger erase``); the very next request reads them as erased."""
    app, told = story
    first, second = told.people
    auditor = {"Authorization": "Bearer " + issue(SECRET, "aud-1", "auditor")}
    with TestClient(create_app(_settings(database_url))) as client:
        before = client.get(f"/recipients/{first.rid}", headers=auditor)
        assert before.status_code == 200 and before.json()["name"] == first.name  # key now cached

        other = build_app(_settings(database_url))  # another process's application
        try:
            assert privacy.erase(other, first.rid, "request 43")["erased"]
        finally:
            other.close()

        after = client.get(f"/recipients/{first.rid}", headers=auditor)
        assert after.status_code == 200
        assert (after.json()["name"], after.json()["id_number"]) == (ERASED, ERASED)
        assert client.get(f"/recipients/{second.rid}", headers=auditor).json()["name"] == second.name


def test_no_new_personal_data_is_sealed_under_a_key_erased_elsewhere(story, database_url):
    app, told = story
    person = told.people[1]
    assert app.recipient(person.rid).name == person.name  # this process has the key cached
    other = build_app(_settings(database_url))
    try:
        privacy.erase(other, person.rid)
    finally:
        other.close()
    served = (date.today() - timedelta(days=10)).isoformat()
    expense = app.run(m.RecordExpense.model_validate({  # nothing personal in an expense: accepted
        "recipient": person.rid, "visit_type": "outpatient", "facility": {"kind": "community_health_centre", "level": 1},
        "service_date": served, "invoice_date": served, "invoice_no": "AFTER-1",
        "total": "10.00", "in_scope": "10.00", "basic_insurance_paid": "0.00",
    }))
    assert expense.status == "accepted", expense
    count = app.recorder.max_notification_id()
    # a proxy's id number would be sealed under the recipient's key, which another process shredded
    refused = app.run(m.LodgeClaim(recipient=person.rid, expenses=[expense.ids["expense"]], handler="h-1",
                                   proxy_id_number=id_number("31010419700101123")))
    assert (refused.status, refused.code) == ("rejected", "PERSONAL_DATA_ERASED")
    assert app.recorder.max_notification_id() == count


def test_a_key_read_before_an_erasure_is_never_cached_after_it():
    cache = privacy._CachedKeys(ttl=60)  # noqa: SLF001 - the cache's own contract
    cache.observe(3)
    rid = str(uuid.uuid4())
    cache.put(rid, b"k" * 32, 3)
    assert cache.get(rid) == (True, b"k" * 32)
    cache.observe(4)  # another process erased someone
    assert cache.get(rid) == (False, None)
    cache.put(rid, b"k" * 32, 3)  # a slow reader that read the key under generation 3
    assert cache.get(rid) == (False, None)
    cache.observe(3)  # an older reading never moves the cache back
    assert cache.generation == 4
