"""Slim decision events (issue 16, ADR 0017): ``AidDecided``/``AidReassessed`` v2 store parameter
keys with the value applied, not copies of every parameter version; v1 events written by the
previous code are upcast on read.

A store is written "by the previous code" here by running the project's own scenarios with the v1
shapes put back for the duration: events saved as class version 1 (no version in the stored
state), each trace carrying full parameter versions, and each decision's knowledge copying them.
Then, with the current code:
- ``replay --all --verify`` (``commands.replay.audit``) finds no difference;
- ``ledger explain`` shows exactly what it showed while the events were in the old shape;
- the same history written by the current code explains the same (its parameter list is the
  expense's own) and its stored decisions are smaller.
On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import pytest

from commands import explain, replay
from commands.core import LedgerCore
from infra import scenario as sc
from infra.settings import Settings
from infra.wiring import build_app
from ledger import engine, traces
from ledger.aggregates import Recipient
from scenario_store import play, runner_on, text_of

NAMES = (
    "city-retroactive-parameter-change",
    "four-linkage-retroactive-suspension",
    "mutual-aid-levels-and-inpatient",
    "lianyungang-key",
    "clearing-late-insurance-cap-room",
)
DECISION_TOPICS = [f"{Recipient.AidDecided.__module__}:{Recipient.AidDecided.__qualname__}"]


def _previous_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """The v1 event shapes, as the code before issue 16 wrote them."""
    monkeypatch.setattr(engine, "_pv", lambda v: None if v is None else v.as_trace())
    monkeypatch.setattr(LedgerCore, "env", {})  # no compressor either
    monkeypatch.setattr(Recipient.AidDecided, "class_version", 1)
    monkeypatch.setattr(Recipient.AidReassessed, "class_version", 1)
    real = Recipient.trigger_event

    def trigger_event(self: Any, event_class: Any, **kwargs: Any) -> Any:
        if event_class is Recipient.AidDecided:
            found: dict[str, dict[str, Any]] = {}
            traces.full_parameters(kwargs["decisions"], found)
            kwargs["knowledge"] = {**kwargs["knowledge"], "parameters": [found[k] for k in sorted(found)]}
        return real(self, event_class, **kwargs)

    monkeypatch.setattr(Recipient, "trigger_event", trigger_event)


def _explanations(app: Any, expenses: dict[str, str]) -> dict[str, Any]:
    out = {}
    for handle, eid in expenses.items():
        view = explain.explain_expense(app, eid)
        if view["decision"] is not None:
            out[handle] = json.loads(json.dumps(view, sort_keys=True, default=str))
    return out


def _decision_bytes(app: Any) -> list[int]:
    return [len(n.state) for n in app.notifications(DECISION_TOPICS)]


@pytest.mark.parametrize("name", NAMES)
def test_a_store_written_by_the_previous_code_replays_and_explains_the_same(database_url: str, name: str) -> None:
    text = text_of(name)
    mp = pytest.MonkeyPatch()
    _previous_code(mp)
    try:
        old = play(runner_on(database_url, text), text)
        before = _explanations(old.app, old.expenses)
        old_bytes = _decision_bytes(old.app)
        stored = [json.loads(n.state) for n in old.app.notifications(DECISION_TOPICS)]
    finally:
        mp.undo()
    assert before and old_bytes
    # Really the old shape: plain JSON, no class version, full parameter versions in the knowledge.
    assert all("class_version" not in s for s in stored)
    assert any(traces.is_full(p) for s in stored for p in s["knowledge"]["parameters"])
    old.app.close()

    app = build_app(Settings(database_url=database_url), jurisdiction=old.app.jurisdiction)
    try:
        decided = [e for rid in app.recipient_ids() for e in app.events.get(rid) if isinstance(e, Recipient.AidDecided)]
        assert decided and not any(traces.is_full(v) for e in decided for v in _walk(e.decisions))
        report = replay.audit(app)
        assert report.decisions == len(decided)
        assert report.ok, [d.as_dict() for d in report.different][:2]
        assert _explanations(app, old.expenses) == before
    finally:
        app.close()

    # The same history written by the current code: the same explanations (the parameter list
    # is the expense's own, a part of the pass's) and smaller stored decisions.
    _, new = sc.replay(text)
    now = _explanations(new.app, new.expenses)
    assert now.keys() == before.keys()
    for handle, view in now.items():
        was = before[handle]
        params_now = view["decision"].pop("parameters")
        params_was = was["decision"].pop("parameters")
        assert {json.dumps(p, sort_keys=True) for p in params_now} <= {json.dumps(p, sort_keys=True) for p in params_was}
        assert params_now
        for key in ("recipient", "expense"):
            view.pop(key), was.pop(key)
        for view_ in (view, was):
            view_["decision"]["policy"].pop("known_at"), view_["decision"].pop("recorded_at")
            for r in view_["reassessments"]:
                r["policy"].pop("known_at"), r.pop("recorded_at")
        assert _scrub(view) == _scrub(was)
    assert replay.audit(new.app).ok
    new_bytes = _decision_bytes(new.app)
    assert len(new_bytes) == len(old_bytes) and sum(new_bytes) < sum(old_bytes)


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def _scrub(view: Any) -> Any:
    """Ids and recorded times differ between two stores of the same history: drop them."""
    text = json.dumps(view, sort_keys=True)
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>", text)
    text = re.sub(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?[+-]\d{2}:\d{2}", "<at>", text)
    return json.loads(text)
