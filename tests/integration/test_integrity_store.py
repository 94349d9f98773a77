"""The tamper-evident chain on a real store (ADR 0016): SQLite and PostgreSQL.

Every event is linked in the transaction that stores it; an untouched store verifies; one
edited byte fails ``ledger verify`` at exactly that position; ``ledger chain --head`` gives the
signed head; stores chained by the earlier chainer (links after the save, unnumbered
checkpoints) keep verifying once opened; writers in several processes keep the chain whole.
"""

from __future__ import annotations

import json
import multiprocessing
import threading

import pytest
from typer.testing import CliRunner

from commands import models as m
from infra import integrity, privacy
from infra.cli import _register
from infra.cli import app as cli
from infra.settings import Settings
from infra.wiring import APP_NAME, build_app, ensure_policy
from integrity_story import RawStore, earlier_chainer, id_number, ok, tell, write_people

_register()
runner = CliRunner()
DATA_KEY = "integrity test data key"


@pytest.fixture(autouse=True)
def data_key(monkeypatch):
    monkeypatch.setenv("LEDGER_DATA_KEY", DATA_KEY)  # the CLI's settings read it too


def _verify(url: str, *extra: str):
    return runner.invoke(cli, ["verify", "--database-url", url, *extra])


def _settings(url: str) -> Settings:
    return Settings(database_url=url, data_key=DATA_KEY)


@pytest.fixture
def told(database_url: str):
    app = build_app(_settings(database_url))
    story = tell(app)
    yield app, story
    app.close()


def test_an_untouched_store_verifies_and_every_event_was_linked_by_its_save(told, database_url):
    app, _ = told
    raw = RawStore(database_url)
    positions = raw.positions()
    links = raw.links()
    assert [p for p, *_ in links] == positions  # nothing was run: the saves linked them
    assert [s for _, _, s, _ in links] == list(range(1, len(positions) + 1))
    assert links[-1][3]  # the last save sealed its last link
    result = _verify(database_url, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["unchained"] == 0 and report["problems"] == []
    assert report["checked"] == len(positions)
    assert report["head"]["position"] == app.recorder.max_notification_id()


def test_one_edited_byte_fails_verify_at_exactly_that_position(told, database_url):
    raw = RawStore(database_url)
    events = raw.events_after(0)
    position, _, _, topic, state = next(e for e in events if e[3].endswith("Recipient.AidPaid"))
    assert position not in (events[0][0], events[-1][0])  # neither end of the chain
    raw.flip_byte(position, state.index(b'"to_person"') + len(b'"to_person":') + 1)
    assert sum(a != b for a, b in zip(raw.events_after(position - 1, position)[0][4], state)) == 1

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
    raw = RawStore(database_url)
    positions = raw.positions()
    deleted, relinked = positions[3], positions[6]
    raw.run("DELETE FROM {events} WHERE {pos} = %s", (deleted,))
    raw.run("UPDATE event_chain SET hash = %s WHERE position = %s", ("ab" * 32, relinked))
    report = json.loads(_verify(database_url, "--json").output)
    kinds = {(p["position"], p["kind"]) for p in report["problems"]}
    assert (deleted, "deleted") in kinds and (relinked, "chain_row") in kinds
    assert {p for p, _ in kinds} == {deleted, relinked}
    assert report["first_broken"]["position"] == deleted


def test_ledger_chain_signs_the_head_for_keeping_outside(told, database_url):
    app, _ = told
    chain = integrity.chain_for(app)
    result = runner.invoke(cli, ["chain", "--database-url", database_url, "--head"])
    assert result.exit_code == 0, result.output
    head = json.loads(result.output)
    assert result.output.count("\n") == 1  # one line
    assert (head["position"], head["hash"]) == chain.head() and head["position"] == app.recorder.max_notification_id()
    last = chain.store.chain_last_checkpoint()
    assert (head["checkpoint"], head["signature"], last.kind) == (last.number, last.seal, integrity.ON_DEMAND)
    # the signature is the ledger's own: its key recomputes it
    seal = privacy.MasterKey.from_setting(DATA_KEY).seal
    assert seal(integrity.checkpoint_seal_text(last.number, last.position, last.hash, last.recorded_at, last.kind, last.previous)) == head["signature"]
    # again without new events: the same head, no new checkpoint
    assert json.loads(runner.invoke(cli, ["chain", "--database-url", database_url, "--head"]).output) == head
    assert _verify(database_url, "--expect-head", result.output).exit_code == 0
    assert _verify(database_url, "--expect-head", f"{head['position']}:{head['hash']}").exit_code == 0
    # the head at an earlier position is that position's link (snapshots carry it)
    links = {p: h for p, h, _, _ in RawStore(database_url).links()}
    middle = sorted(links)[len(links) // 2]
    assert integrity.chain_head(middle, app) == (middle, links[middle])
    # the human form prints the same head
    text = runner.invoke(cli, ["chain", "--database-url", database_url]).output
    assert f"position {head['position']} sha256 {head['hash']}" in text and f"checkpoint #{head['checkpoint']}" in text


@pytest.mark.parametrize("links_before", ["none", "some"])
def test_a_store_chained_by_the_earlier_chainer_is_taken_over_and_keeps_verifying(database_url, links_before):
    """A store written before the chain was linked in the save: its events stored by a ledger
    without the chain ("none"), or chained after the save with a lagging tail and an unnumbered
    checkpoint ("some"). The first opening links the rest once and seals the head (checkpoint
    #1, ``upgrade``); from then on the saves link their events and verify holds."""
    from commands.app import LedgerApp

    settings = _settings(database_url)
    plain = LedgerApp(settings.eventsourcing_env(APP_NAME))  # the library's own recorder: no links
    ensure_policy(plain)
    for n in range(3):
        ok(plain.run(m.Enrol(id_number=id_number(f"3101051980011{n}201"), name=f"旧{n}", street="华阳路街道")))
    plain.close()
    raw = RawStore(database_url)
    positions = raw.positions()
    seal = privacy.MasterKey.from_setting(DATA_KEY).seal
    if links_before == "some":
        big = "INTEGER" if raw.sqlite else "BIGINT"
        raw.run(f"CREATE TABLE event_chain (position {big} PRIMARY KEY, hash TEXT NOT NULL, seq {big} NOT NULL, digests TEXT)")
        raw.run(f"CREATE TABLE chain_checkpoints (position {big} PRIMARY KEY, hash TEXT NOT NULL, recorded_at TEXT NOT NULL, seal TEXT NOT NULL)")
        earlier_chainer(raw, seal, stop=positions[len(positions) // 2])
    app = build_app(settings, publish_policy=False)
    try:
        chain = integrity.chain_for(app)
        assert [p for p, *_ in raw.links()] == positions
        report = integrity.verify(chain)
        assert report.ok, report.as_dict()
        assert report.checked == len(positions)
        cps = chain.store.chain_checkpoints()
        upgrade = cps[-1]
        assert (upgrade.number, upgrade.kind, upgrade.position) == (1, integrity.UPGRADE, positions[-1])
        assert upgrade.previous == (cps[0].seal if links_before == "some" else "")
        assert [k.number for k in cps] == ([None, 1] if links_before == "some" else [1])
        # ordinary saves link their own events from here on
        ok(app.run(m.Enrol(id_number=id_number("31010519800109201"), name="新", street="华阳路街道")))
        assert [p for p, *_ in raw.links()] == raw.positions()
        assert integrity.verify(chain).ok
    finally:
        app.close()
    again = build_app(settings, publish_policy=False)  # opened again: nothing to take over
    try:
        assert len(integrity.chain_for(again).store.chain_checkpoints()) == len(cps)
        forged = raw.append_copy_of(positions[0])  # and the evidence rule holds for it now
        report = integrity.verify(integrity.chain_for(again))
        assert [(p.kind, p.position) for p in report.problems] == [("unchained", forged)]
    finally:
        again.close()


def test_writers_in_two_processes_and_a_thread_keep_the_chain_whole(database_url):
    """Ordinary saves from two processes and a thread of this one, at the same time, each its
    own app on the same store (checkpoints every 5 events): every event is linked once, in
    notification order, numbered without gaps; the checkpoints too; the store verifies."""
    settings = _settings(database_url)
    app = build_app(settings)  # publishes the policy
    try:
        spawn = multiprocessing.get_context("spawn")
        batches = [[f"310105199{w}01010{i:02d}" for i in range(6)] for w in range(3)]
        with spawn.Pool(2) as pool:
            pending = [pool.apply_async(write_people, (database_url, DATA_KEY, batch, 5)) for batch in batches[:2]]
            counts: list[int] = []
            local = threading.Thread(target=lambda: counts.append(write_people(database_url, DATA_KEY, batches[2], 5)))
            local.start()
            counts += [p.get(timeout=300) for p in pending]
            local.join(300)
        assert sorted(counts) == [18, 18, 18]
        raw = RawStore(database_url)
        links = raw.links()
        assert [p for p, *_ in links] == raw.positions()
        assert [s for _, _, s, _ in links] == list(range(1, len(links) + 1))
        cps = integrity.chain_for(app).store.chain_checkpoints()
        assert [k.number for k in cps] == list(range(1, len(cps) + 1)) and len(cps) >= 54 // 5
        report = integrity.verify(integrity.chain_for(app))
        assert report.ok, report.as_dict()
        assert report.checked == len(links)
    finally:
        app.close()
