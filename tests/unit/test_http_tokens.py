"""Bearer tokens (ADR 0013): HMAC-SHA256 over {officer, role, street, exp}."""

from __future__ import annotations

import base64
import json

import pytest
from typer.testing import CliRunner

from infra.http.auth import Role, TokenError, issue, verify

SECRET = "unit-test-secret"
NOW = 1_780_000_000.0


def test_a_token_names_its_officer_role_and_street():
    p = verify(SECRET, issue(SECRET, "li.handler", "street_handler", "华阳路街道", days=1, now=NOW), now=NOW + 60)
    assert (p.officer, p.role, p.street, p.exp) == ("li.handler", Role.STREET_HANDLER, "华阳路街道", int(NOW + 86400))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature changed
        lambda t: _payload(t, role="district_officer") + "." + t.split(".")[1],  # role raised, old signature
        lambda t: t.replace(".", ""),
        lambda t: "x" * 3000,
        lambda t: "",
    ],
)
def test_a_tampered_or_malformed_token_is_refused(tamper):
    token = issue(SECRET, "li.handler", "street_handler", "华阳路街道", now=NOW)
    with pytest.raises(TokenError):
        verify(SECRET, tamper(token), now=NOW)


def _payload(token: str, **changes: object) -> str:
    raw = token.split(".")[0]
    claims = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    claims.update(changes)
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()


def test_another_secret_or_an_expired_token_is_refused():
    token = issue(SECRET, "wang", "approver", days=1, now=NOW)
    with pytest.raises(TokenError, match="signature"):
        verify("another-secret", token, now=NOW)
    with pytest.raises(TokenError, match="expired"):
        verify(SECRET, token, now=NOW + 86400)


@pytest.mark.parametrize(
    "officer, role, street",
    [
        ("li", "street_handler", None),  # a street handler belongs to a street (R-PH-1)
        ("li", "superuser", None),
        ("", "auditor", None),
        ("has space", "auditor", None),
        ("x" * 65, "auditor", None),
    ],
)
def test_bad_claims_are_never_signed(officer, role, street):
    with pytest.raises(TokenError):
        issue(SECRET, officer, role, street, now=NOW)


def test_ledger_token_issue_prints_a_token_the_service_accepts(monkeypatch):
    from infra.cli import _register, app

    _register()
    monkeypatch.setenv("LEDGER_TOKEN_SECRET", SECRET)
    out = CliRunner().invoke(app, ["token", "issue", "--officer", "zhao", "--role", "reviewer", "--days", "2"])
    assert out.exit_code == 0, out.output
    p = verify(SECRET, out.output.strip())
    assert (p.officer, p.role, p.street) == ("zhao", Role.REVIEWER, None)
    refused = CliRunner().invoke(app, ["token", "issue", "--officer", "li", "--role", "street_handler"])
    assert refused.exit_code == 2


def test_ledger_serve_refuses_the_development_secret_beyond_this_machine(monkeypatch):
    from infra.cli import _register, app

    _register()
    monkeypatch.delenv("LEDGER_TOKEN_SECRET", raising=False)
    out = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "8999"])
    assert out.exit_code == 2 and "LEDGER_TOKEN_SECRET" in out.output
