"""``ledger serve`` refuses to listen beyond loopback with development or weak secrets, and warns
once on loopback (ADR 0013). uvicorn is replaced by a recorder: no server is started here."""

from __future__ import annotations

import logging
import os

import pytest
import uvicorn
from typer.testing import CliRunner

from infra import privacy
from infra.cli import _register
from infra.cli import app as cli
from infra.settings import DEV_TOKEN_SECRET, MIN_TOKEN_SECRET_BYTES

_register()
STRONG = "s" * MIN_TOKEN_SECRET_BYTES
DATA_KEY = "a data key from the vault"


@pytest.fixture
def serve(monkeypatch, tmp_path):
    """Run ``ledger serve`` with exactly these LEDGER_ settings; returns (result, uvicorn calls)."""
    for name in [k for k in os.environ if k.startswith("LEDGER_")]:
        monkeypatch.delenv(name)
    calls: list[dict] = []

    def fake_run(app, **kw):
        calls.append(kw)
        app.state.service.close()

    monkeypatch.setattr(uvicorn, "run", fake_run)

    def run(host: str, **env: str):
        full = {"LEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}", **{f"LEDGER_{k.upper()}": v for k, v in env.items()}}
        result = CliRunner().invoke(cli, ["serve", "--host", host, "--port", "8123"], env=full)
        return result, calls

    return run


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.10.4", "ledger.example.org", ""])
@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"token_secret": STRONG}, ["LEDGER_DATA_KEY"]),
        ({"data_key": DATA_KEY}, ["LEDGER_TOKEN_SECRET", "development secret"]),
        ({"data_key": DATA_KEY, "token_secret": DEV_TOKEN_SECRET}, ["LEDGER_TOKEN_SECRET", "development secret"]),
        ({"data_key": DATA_KEY, "token_secret": STRONG[:-1]}, ["LEDGER_TOKEN_SECRET", f"shorter than {MIN_TOKEN_SECRET_BYTES} bytes"]),
        ({}, ["LEDGER_DATA_KEY", "LEDGER_TOKEN_SECRET"]),
    ],
)
def test_beyond_loopback_weak_settings_are_refused(serve, host, env, named):
    result, calls = serve(host, **env)
    assert result.exit_code == 2, result.output
    assert not calls, "uvicorn must not be started"
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refusing to listen"), result.output
    for word in named:
        assert word in lines[0]


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.7"])
def test_beyond_loopback_strong_settings_serve(serve, host):
    result, calls = serve(host, data_key=DATA_KEY, token_secret=STRONG)
    assert result.exit_code == 0, result.output
    assert [{k: c[k] for k in ("host", "port", "log_level")} for c in calls] == [{"host": host, "port": 8123, "log_level": "info"}]
    assert calls[0]["access_log"] is True  # text logs: uvicorn's access lines (LEDGER_LOG_FORMAT=json: the service's own)
    assert "warning" not in result.output


def test_the_secret_is_measured_in_bytes(serve):
    secret = "令" * 11  # 11 characters, 33 bytes in UTF-8
    result, calls = serve("0.0.0.0", data_key=DATA_KEY, token_secret=secret)
    assert result.exit_code == 0 and calls, result.output
    result, _ = serve("0.0.0.0", data_key=DATA_KEY, token_secret="令" * 10)  # 30 bytes
    assert result.exit_code == 2 and "shorter than 32 bytes" in result.output


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_on_loopback_weak_settings_warn_once(serve, host, caplog, monkeypatch):
    monkeypatch.setattr(privacy, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="ledger.privacy"):
        result, calls = serve(host)
    assert result.exit_code == 0, result.output
    assert calls and calls[0]["host"] == host
    warnings = [line for line in result.output.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, result.output
    assert "LEDGER_DATA_KEY" in warnings[0] and "LEDGER_TOKEN_SECRET" in warnings[0]
    assert not [r for r in caplog.records if r.name == "ledger.privacy"], "the key loader warned a second time"


def test_on_loopback_strong_settings_say_nothing(serve):
    result, calls = serve("127.0.0.1", data_key=DATA_KEY, token_secret=STRONG)
    assert result.exit_code == 0 and calls
    assert result.output.strip() == ""
