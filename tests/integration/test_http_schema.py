"""Schemathesis against the served OpenAPI document: no server errors (5xx) and no response that
breaks the documented schema, on a fresh store per backend. Seeded and bounded for CI.

Every operation is driven by its own small Hypothesis run (``MAX_EXAMPLES`` each), called with a
token of a role the operation admits, half of the time aimed at entities that exist so that
generated bodies reach the command handlers.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, seed, settings

from http_helpers import STREET, api_on
from infra.http import PERMISSIONS

# Business validation (an id number's check digit, in_scope ≤ total, dates in order) cannot be said
# in JSON Schema, so a schema-valid body may still be a 422: that check does not apply here.
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

MAX_EXAMPLES = 6


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "\n".join(_describe(e) for e in exc.exceptions)[:4000]
    return f"{type(exc).__name__}: {exc}"[:2000]


def _fuzz(operation, headers: dict[str, str], ids: dict[str, str]):
    @seed(20260401)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case):
        if case.path_parameters and len(repr(case.body)) % 2 == 0:
            for name, value in ids.items():
                if name in case.path_parameters:
                    case.path_parameters[name] = value
        case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

    return check


def test_no_server_errors_and_no_schema_violations(database_url):
    with api_on(database_url) as api:
        rid = api.recipient(51, STREET)
        eid = api.expense(rid, "F-1")
        claim = api.post(f"/recipients/{rid}/claims", api.auth("h-f", "street_handler", STREET), {"expenses": [eid]}).json()["ids"]["claim"]
        ids = {"recipient_id": rid, "expense_id": eid, "claim_id": claim}
        schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
        failures: dict[str, str] = {}
        ran = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            op_id = operation.definition.raw.get("operationId")
            headers: dict[str, str] = {}
            if op_id in PERMISSIONS:
                role = sorted(r.value for r in PERMISSIONS[op_id])[0]
                headers = api.auth("fuzz-1", role, STREET if role == "street_handler" else None)

            check = _fuzz(operation, headers, ids)
            try:
                check()
                ran += 1
            except BaseException as exc:  # noqa: BLE001 - collect every operation's failure (FailureGroup is a BaseExceptionGroup)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures[op_id] = _describe(exc)
        assert ran + len(failures) == len(PERMISSIONS) + 2  # every operation, health and ready included
        assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
