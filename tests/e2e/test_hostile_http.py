"""Hostile input through the HTTP API (FastAPI TestClient), the same commands as
``tests/unit/test_hostile_commands.py``: every request gets a coded answer (2xx, or 4xx with a
``code``), never a 500; a refusal changes nothing (a rule's 409 records only what SCENARIOS.md
says it records); the fund books still balance afterwards. Fixed seed (``ledger-hostile``
profile), 120 examples.
"""

from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from commands import models as m
from hostile_commands import PROFILE, RECORDED_REFUSALS, Ref, World, _resolve_expense, build_world, check_books, commands
from infra.http import create_app
from infra.http.auth import issue
from infra.settings import Settings

SECRET = "hostile-http-secret"
_nonce = itertools.count()

# command → (role, officer, method path template, path fields, fields the server supplies)
ROUTES: dict[type[m.Command], tuple[str, str, str, tuple[str, ...]]] = {
    m.Enrol: ("district_officer", "district-1", "/recipients", ()),
    m.GrantCategory: ("district_officer", "district-1", "/recipients/{recipient}/categories", ("recipient",)),
    m.RevokeCategory: ("district_officer", "district-1", "/recipients/{recipient}/categories/revocations", ("recipient",)),
    m.Insure: ("district_officer", "district-1", "/recipients/{recipient}/insurance", ("recipient",)),
    m.EndInsurance: ("district_officer", "district-1", "/recipients/{recipient}/insurance/end", ("recipient",)),
    m.JoinMutualAid: ("district_officer", "district-1", "/recipients/{recipient}/mutual-aid", ("recipient",)),
    m.ConsentAutoClaim: ("district_officer", "district-1", "/recipients/{recipient}/consent", ("recipient",)),
    m.RecordExpense: ("system", "push", "/recipients/{recipient}/expenses", ("recipient",)),
    m.SettleInsurance: ("system", "push", "/expenses/{expense}/insurance-settlements", ("expense",)),
    m.OneStop: ("system", "push", "/expenses/{expense}/one-stop", ("expense",)),
    m.LodgeClaim: ("district_officer", "handler-9", "/recipients/{recipient}/claims", ("recipient", "handler")),
    m.Review: ("reviewer", "reviewer-1", "/claims/{claim}/review", ("claim", "reviewer")),
    m.Approve: ("approver", "approver-1", "/claims/{claim}/approve", ("claim", "approver")),
    m.Pay: ("district_officer", "district-1", "/claims/{claim}/pay", ("claim",)),
    m.AutoClaims: ("system", "push", "/auto-claims", ()),
    m.SetParameter: ("district_officer", "district-1", "/policy/parameters", ()),
    m.LiftSuspension: ("district_officer", "district-1", "/recipients/{recipient}/suspension/lift", ("recipient", "reviewer")),
    m.SocialHelp: ("district_officer", "district-1", "/recipients/{recipient}/social-help", ("recipient",)),
    m.PaySupplementary: ("district_officer", "district-1", "/recipients/{recipient}/supplementary/pay", ("recipient",)),
    m.Repay: ("clearing_officer", "clearing-1", "/recipients/{recipient}/repayments", ("recipient",)),
    m.WriteOff: ("clearing_officer", "clearing-1", "/recipients/{recipient}/write-offs", ("recipient", "officer", "approver")),
    m.ClearingRun: ("clearing_officer", "clearing-1", "/clearing/run", ()),
}
NO_BODY = {m.OneStop, m.Review, m.Approve, m.Pay, m.PaySupplementary}
CODED = {200, 201, 400, 401, 403, 404, 405, 409, 413, 422}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(database_url=f"sqlite:///{tmp_path_factory.mktemp('http') / 'http.db'}", token_secret=SECRET)
    world = build_world()
    with TestClient(create_app(settings, ledger=world.app), raise_server_exceptions=False) as c:
        yield c


def _segment(value: Any) -> str:
    """A path segment as a client would send it (URLs longer than a client allows are cut: no
    client can send them, and servers answer 414 before the application sees them)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return quote(text, safe="", errors="surrogatepass")[:8000] or "%20"


def _send(client: TestClient, world: World, model: type[m.Command], data: dict[str, Any], extra_header: str | None):
    role, officer, template, path_fields = ROUTES[model]
    resolved = {k: _resolve_expense(world, v) for k, v in data.items()}
    path = template.format(**{f: _segment(resolved.get(f)) for f in path_fields if "{" + f + "}" in template})
    body = {k: v for k, v in resolved.items() if k not in path_fields and k not in ("at", "command_id")}
    if "unexpected_field" in data and "at" in data:
        body["at"] = data["at"]  # the recorded time is the server's: a client's is refused
    headers = {"Authorization": "Bearer " + issue(SECRET, officer, role)}
    if extra_header is not None:
        headers["Idempotency-Key"] = f"{next(_nonce)}-{extra_header}".encode()  # raw bytes: any header a client can send
    content = None if model in NO_BODY else json.dumps(body, default=str, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return client.post(path, content=content, headers={**headers, "Content-Type": "application/json"})


@settings(settings.get_profile(PROFILE), max_examples=120)
@given(st.lists(commands(), min_size=1, max_size=3), st.one_of(st.none(), st.sampled_from(["k", "k~1", "bad key", "ключ", "x" * 120])))
def test_hostile_requests_get_coded_answers(client, steps, key):
    world = build_world()
    client.app.state.service.ledger = world.app  # a fresh world for every example
    for model, data in steps:
        before = world.app.recorder.max_notification_id() or 0
        response = _send(client, world, model, data, key)
        assert response.status_code in CODED, (response.status_code, response.text[:500], model.__name__, data)
        after = world.app.recorder.max_notification_id() or 0
        if response.status_code >= 400:
            problem = response.json()
            assert problem.get("code"), problem
            new = world.app.recorder.select_notifications(start=before + 1, limit=1000)
            if response.status_code == 409:
                assert all(n.topic in RECORDED_REFUSALS for n in new), [n.topic for n in new]
            else:
                assert after == before, (response.status_code, problem)
        else:
            ids = response.json().get("ids", {})
            for kind in ("recipient", "expense", "claim"):
                if isinstance(ids.get(kind), str) and ids[kind] not in world.refs[kind]:
                    world.refs[kind].append(ids[kind])
        check_books(world)
