"""Trust under attack (ADR 0016): each attack performed with raw SQL on the real store, SQLite and
PostgreSQL, by someone with write access to the database but not the data key; ``ledger verify``
must exit non-zero and name the position.

- a forged event appended after the last one (no link), then ordinary writes on top of it;
- a forged event appended with a correctly computed link (the hash is public);
- an event edited, its links and those after it deleted, and the chain "re-sealed" the way the
  earlier chainer did (links computed again after the save, an unnumbered checkpoint);
- one numbered checkpoint deleted (in the middle, at the end), renumbered, or its signature
  altered; a save's seal altered;
- ``--expect-head`` with a head kept from another store, and after the end of the log was cut.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from commands import models as m
from infra import integrity, privacy
from infra.cli import _register
from infra.cli import app as cli
from infra.settings import Settings
from infra.wiring import build_app
from integrity_story import RawStore, earlier_chainer, id_number, ok, tell

_register()
runner = CliRunner()
DATA_KEY = "integrity attack test data key"


@pytest.fixture(autouse=True)
def data_key(monkeypatch):
    monkeypatch.setenv("LEDGER_DATA_KEY", DATA_KEY)


def _settings(url: str) -> Settings:
    return Settings(database_url=url, data_key=DATA_KEY)


def _verify(url: str, *extra: str) -> tuple[int, dict, str]:
    """Exit code, the JSON report, and the text report."""
    as_json = runner.invoke(cli, ["verify", "--database-url", url, "--json", *extra])
    text = runner.invoke(cli, ["verify", "--database-url", url, *extra])
    assert as_json.exit_code == text.exit_code, (as_json.output, text.output)
    return as_json.exit_code, json.loads(as_json.output), text.output


def _problems(report: dict) -> set[tuple[str, int]]:
    return {(p["kind"], p["position"]) for p in report["problems"]}


@pytest.fixture
def told(database_url: str):
    app = build_app(_settings(database_url))
    tell(app)
    yield app
    app.close()


def _enrol(app, first17: str) -> None:
    ok(app.run(m.Enrol(id_number=id_number(first17), name="后来者", street="江苏路街道")))


def test_a_forged_event_appended_at_the_end_is_named_and_never_sealed_as_genuine(told, database_url):
    raw = RawStore(database_url)
    assert _verify(database_url)[0] == 0
    forged = raw.append_copy_of(raw.positions()[5])
    code, report, text = _verify(database_url)
    assert code == 1
    assert _problems(report) == {("unchained", forged)}
    assert f"BROKEN at position {forged}: position {forged} holds an event that was never chained" in text
    # ordinary writes go on; they link their own events, never the forged one
    _enrol(told, "31010519850101301")
    _enrol(told, "31010519850101302")
    assert raw.positions()[-1] > forged
    code, report, _ = _verify(database_url)
    assert code == 1 and _problems(report) == {("unchained", forged)}
    assert forged not in {p for p, *_ in raw.links()}
    # nor does sealing a checkpoint on demand
    assert runner.invoke(cli, ["chain", "--database-url", database_url]).exit_code == 0
    assert _problems(_verify(database_url)[1]) == {("unchained", forged)}


def test_a_forged_event_appended_with_a_computed_link_is_named(told, database_url):
    """The link's formula is public: the intruder appends the event and its link. They cannot
    seal it, and every save seals its last link."""
    raw = RawStore(database_url)
    forged = raw.append_copy_of(raw.positions()[5])
    earlier_chainer(raw, seal=lambda text: "00" * 32, checkpoint=False)
    code, report, text = _verify(database_url)
    assert code == 1
    assert _problems(report) == {("unsealed", forged)}
    assert f"BROKEN at position {forged}: the links from position {forged} to the head ({forged}) carry no save's seal" in text


def _first_of_a_save(raw: RawStore) -> int:
    """A position in the middle of the log where a save began (the link before it is sealed)."""
    links = raw.links()
    middle = len(links) // 2
    return next(links[i + 1][0] for i in range(middle, len(links) - 1) if links[i][3])


@pytest.mark.parametrize("checkpoint_after", [False, True], ids=["no-checkpoint-after", "checkpoint-after"])
def test_an_edit_then_deleted_links_and_a_reseal_by_the_earlier_chainer_are_named(told, database_url, checkpoint_after):
    raw = RawStore(database_url)
    if checkpoint_after:  # `ledger chain` was run before the attack (checkpoint #1), then a save
        assert runner.invoke(cli, ["chain", "--database-url", database_url]).exit_code == 0
        _enrol(told, "31010519850101305")
    head = raw.positions()[-1]
    target = _first_of_a_save(raw)
    state = raw.events_after(target - 1, target)[0][4]
    raw.flip_byte(target, len(state) // 2)
    raw.run("DELETE FROM event_chain WHERE position >= %s", (target,))
    # re-sealed with the earlier chainer's path: links after the head, an unnumbered checkpoint,
    # even signed with the right key
    earlier_chainer(raw, privacy.MasterKey.from_setting(DATA_KEY).seal)
    assert [p for p, *_ in raw.links()] == raw.positions()  # every event has a link again
    code, report, text = _verify(database_url)
    assert code == 1
    assert report["first_broken"]["position"] == target and report["first_broken"]["kind"] == "unsealed"
    assert f"BROKEN at position {target}: the links from position {target} to the head ({head}) carry no save's seal" in text
    problems = _problems(report)
    if checkpoint_after:
        first = integrity.chain_for(told).store.chain_checkpoints()[0]
        assert first.number == 1 and target < first.position < head
        assert ("checkpoint", first.position) in problems  # #1 disagrees with the links computed again
        assert any("checkpoint #1 at position" in p["message"] and "rewritten" in p["message"] for p in report["problems"])
        assert any("unnumbered checkpoint" in p["message"] and "after numbered" in p["message"] for p in report["problems"])
    else:
        assert problems == {("unsealed", target)}


@pytest.fixture
def checkpointed(database_url: str):
    """A store whose saves sealed a checkpoint every 8 events (#1, #2, …)."""
    app = build_app(_settings(database_url))
    integrity.chain_for(app).checkpoint_every = 8
    tell(app)
    cps = integrity.chain_for(app).store.chain_checkpoints()
    assert [k.number for k in cps] == list(range(1, len(cps) + 1)) and len(cps) >= 4
    assert _verify(database_url)[0] == 0
    yield app, cps
    app.close()


def test_one_deleted_checkpoint_in_the_middle_is_named(checkpointed, database_url):
    _, cps = checkpointed
    gone, following = cps[1], cps[2]
    RawStore(database_url).run("DELETE FROM chain_checkpoints WHERE number = %s", (gone.number,))
    code, report, text = _verify(database_url)
    assert code == 1
    assert _problems(report) == {("checkpoint", gone.position), ("checkpoint", following.position)}
    assert f"BROKEN at position {gone.position}: checkpoint #{gone.number} is missing (deleted)" in text
    assert f"the sequence jumps after #1 at position {cps[0].position} to #3 at position {following.position}" in text


def test_the_deleted_last_checkpoint_is_named_by_the_seal_that_followed_it(checkpointed, database_url):
    _, cps = checkpointed
    last = cps[-1]
    RawStore(database_url).run("DELETE FROM chain_checkpoints WHERE number = %s", (last.number,))
    code, report, text = _verify(database_url)
    assert code == 1
    assert _problems(report) == {("checkpoint", last.position)}
    assert f"BROKEN at position {last.position}: checkpoint #{last.number} is missing (deleted)" in text


def test_the_next_save_after_a_deleted_checkpoint_leaves_the_gap_visible(checkpointed, database_url):
    app, cps = checkpointed
    last = cps[-1]
    RawStore(database_url).run("DELETE FROM chain_checkpoints WHERE number = %s", (last.number,))
    for n in range(4):  # enough events for the next periodic checkpoint
        _enrol(app, f"3101051986011{n}303")
    report = _verify(database_url)[1]
    numbers = [k.number for k in integrity.chain_for(app).store.chain_checkpoints()]
    assert last.number not in numbers and max(numbers) > last.number  # numbering went on past the gap
    assert ("checkpoint", last.position) in _problems(report)


def test_renumbered_checkpoints_and_altered_signatures_are_named(checkpointed, database_url):
    _, cps = checkpointed
    raw = RawStore(database_url)
    raw.run("DELETE FROM chain_checkpoints WHERE number = 2")
    raw.run("UPDATE chain_checkpoints SET number = number - 1 WHERE number > 2")  # close the gap
    code, report, _ = _verify(database_url)
    assert code == 1
    bad = {p["position"] for p in report["problems"] if "bad signature" in p["message"]}
    assert bad == {k.position for k in cps[2:]}
    raw2 = RawStore(database_url)
    raw2.run("UPDATE chain_checkpoints SET seal = %s WHERE number = 1", ("00" * 32,))
    report = _verify(database_url)[1]
    assert ("checkpoint", cps[0].position) in _problems(report)
    assert any(p["position"] == cps[0].position and "bad signature" in p["message"] for p in report["problems"])


def test_an_altered_seal_on_a_link_is_named(told, database_url):
    raw = RawStore(database_url)
    sealed = [p for p, _, _, seal in raw.links() if seal][3]
    raw.run("UPDATE event_chain SET seal = %s WHERE position = %s", ("ab" * 32, sealed))
    code, report, text = _verify(database_url)
    assert code == 1 and _problems(report) == {("seal", sealed)}
    assert f"BROKEN at position {sealed}: the link at position {sealed} carries a seal that does not match it" in text


def test_expect_head_from_another_store_fails_naming_the_position(told, database_url, tmp_path):
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    other = build_app(_settings(other_url))
    try:
        tell(other)
        _enrol(other, "31010519870101404")
    finally:
        other.close()
    foreign = runner.invoke(cli, ["chain", "--database-url", other_url, "--head"]).output
    theirs = json.loads(foreign)
    mine = json.loads(runner.invoke(cli, ["chain", "--database-url", database_url, "--head"]).output)
    assert _verify(database_url, "--expect-head", json.dumps(mine))[0] == 0
    (tmp_path / "head.json").write_text(foreign, encoding="utf-8")
    code, report, text = _verify(database_url, "--expect-head", str(tmp_path / "head.json"))
    assert code == 1
    assert report["first_broken"]["kind"] == "head" and report["first_broken"]["position"] == theirs["position"]
    if theirs["position"] > mine["position"]:
        assert f"BROKEN at position {theirs['position']}: the log is shorter than the expected head" in text
    else:
        assert f"BROKEN at position {theirs['position']}: the log does not extend the expected head" in text
    # a head at a position both stores hold, with the other store's hash
    p = mine["position"] - 3
    foreign_link = next(h for q, h, _, _ in RawStore(other_url).links() if q == p)
    code, report, text = _verify(database_url, "--expect-head", f"{p}:{foreign_link}")
    assert code == 1 and _problems(report) == {("head", p)}
    assert f"BROKEN at position {p}: the log does not extend the expected head" in text


def test_a_cut_end_of_the_log_passes_alone_and_fails_against_the_kept_head(told, database_url):
    """What the store alone cannot show (its end cut with its links and checkpoints), the head
    kept outside does."""
    kept = runner.invoke(cli, ["chain", "--database-url", database_url, "--head"]).output
    head = json.loads(kept)
    raw = RawStore(database_url)
    links = raw.links()
    cut = next(links[i + 1][0] for i in range(len(links) - 2, 0, -1) if links[i][3])  # the whole last save
    raw.run("DELETE FROM {events} WHERE {pos} >= %s", (cut,))
    raw.run("DELETE FROM event_chain WHERE position >= %s", (cut,))
    raw.run("DELETE FROM chain_checkpoints WHERE position >= %s", (cut,))
    assert _verify(database_url)[0] == 0  # not promised from inside the database (ADR 0016)
    code, report, text = _verify(database_url, "--expect-head", kept)
    assert code == 1 and _problems(report) == {("head", head["position"])}
    assert f"BROKEN at position {head['position']}: the log is shorter than the expected head" in text
