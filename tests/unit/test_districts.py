"""District configuration and ``ledger --district X`` (ADR 0020): one configuration names the
districts, each has its own store (a SQLite file or a PostgreSQL database named by its code) and
its own stream; without ``--district`` nothing changes."""

from __future__ import annotations

import json
import os
import secrets

import psycopg
import pytest
from typer.testing import CliRunner

from infra import districts as dz
from infra.cli import _register, app
from infra.pg import DEFAULT_ADMIN_URL, database_exists, drop_database

KEYS = ("LEDGER_DISTRICTS", "LEDGER_DATABASE_URL", "LEDGER_DISTRICT", "LEDGER_RELAY_EXCHANGE", "LEDGER_RELAY_STREAM", "LEDGER_CITY_BASE_URL", "LEDGER_DISTRICT_XUHUI_DATABASE_URL")


@pytest.fixture
def clean_env(monkeypatch):
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)  # restored after the test, whatever --district set
    monkeypatch.setenv("LEDGER_DATA_KEY", "district-test-key")
    return monkeypatch


def test_a_list_names_the_districts_each_with_its_own_store_and_stream():
    got = dz.configured({"LEDGER_DISTRICTS": "changning, xuhui", "LEDGER_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/ledger"})
    assert list(got) == ["changning", "xuhui"]
    assert got["xuhui"].database_url == "postgresql://postgres@127.0.0.1:5432/ledger_xuhui"
    assert got["xuhui"].stream == "LEDGER_XUHUI" and got["xuhui"].subject_prefix == "ledger.xuhui.events"
    t = got["xuhui"].topology("nats")
    assert t.subject("aid.paid") == "ledger.xuhui.events.aid.paid" and t.stream == "LEDGER_XUHUI"
    assert t.replay_subject("reports") != got["changning"].topology("nats").replay_subject("reports")
    sqlite = dz.configured({"LEDGER_DISTRICTS": "changning,xuhui"})
    assert sqlite["changning"].database_url == "sqlite:///var/ledger.changning.db"
    assert sqlite["changning"].database_url != sqlite["xuhui"].database_url
    assert dz.configured({}) == {}


def test_a_file_names_districts_and_may_give_their_urls(tmp_path):
    f = tmp_path / "districts.txt"
    f.write_text("# the city\nchangning\nxuhui  postgresql://postgres@db2:5432/xh   # another server\n\n", encoding="utf-8")
    got = dz.configured({"LEDGER_DISTRICTS": f"@{f}", "LEDGER_DATABASE_URL": "sqlite:////srv/ledger.db"})
    assert got["changning"].database_url == "sqlite:////srv/ledger.changning.db"
    assert got["xuhui"].database_url == "postgresql://postgres@db2:5432/xh"
    over = dz.configured({"LEDGER_DISTRICTS": "xuhui", "LEDGER_DISTRICT_XUHUI_DATABASE_URL": "sqlite:////x.db"})
    assert over["xuhui"].database_url == "sqlite:////x.db"


@pytest.mark.parametrize(
    "spec, words",
    [("Changning", "not a district code"), ("xuhui,xuhui", "twice"), (" , ", "names no district"), ("@/nonexistent/d.txt", "cannot read")],
)
def test_a_bad_configuration_is_named(spec, words):
    with pytest.raises(dz.DistrictError, match=words):
        dz.configured({"LEDGER_DISTRICTS": spec})


def test_unknown_or_unconfigured_district_is_refused():
    with pytest.raises(dz.DistrictError, match="no districts are configured"):
        dz.district("xuhui", {})
    with pytest.raises(dz.DistrictError, match="LEDGER_DISTRICTS: changning"):
        dz.district("xuhui", {"LEDGER_DISTRICTS": "changning"})


def _ledger(*args: str):
    _register()
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_cli_district_picks_the_district_store_and_leaves_the_others_alone(clean_env, tmp_path):
    clean_env.setenv("LEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    clean_env.setenv("LEDGER_DISTRICTS", "changning,xuhui")
    res = _ledger("--district", "xuhui", "do", "enrol", "id_number=11010519491231002X", "name=李建国", "street=徐家汇街道", "--get", "ids.recipient")
    assert res.exit_code == 0, res.output
    assert os.environ["LEDGER_RELAY_STREAM"] == "LEDGER_XUHUI"
    assert (tmp_path / "ledger.xuhui.db").exists()
    assert not (tmp_path / "ledger.changning.db").exists() and not (tmp_path / "ledger.db").exists()
    # a reading command on a district with no store names its file (exit 5), creates nothing
    clean_env.setenv("LEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    res = _ledger("--district", "changning", "explain", "E000001")
    assert res.exit_code == 5 and "ledger.changning.db" in res.output
    assert not (tmp_path / "ledger.changning.db").exists()
    res = _ledger("--district", "pudong", "status")
    assert res.exit_code == 2 and "not a configured district" in res.output


def test_each_postgres_district_gets_its_own_database(clean_env):
    base = f"ledger_test_{os.getpid()}_{secrets.token_hex(4)}"
    url = DEFAULT_ADMIN_URL.rsplit("/", 1)[0] + "/" + base
    got = dz.configured({"LEDGER_DISTRICTS": "changning,xuhui", "LEDGER_DATABASE_URL": url})
    try:
        for d in got.values():
            dz.ensure_store(d)
            dz.ensure_store(d)  # a second time finds it
        assert all(database_exists(DEFAULT_ADMIN_URL, f"{base}_{code}") for code in got)
        with psycopg.connect(got["xuhui"].database_url) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == f"{base}_xuhui"
    finally:
        for code in got:
            drop_database(DEFAULT_ADMIN_URL, f"{base}_{code}")


def test_without_district_nothing_changes(clean_env, tmp_path):
    clean_env.setenv("LEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    res = _ledger("do", "enrol", "id_number=11010519491231002X", "name=李建国", "street=华阳路街道")
    assert res.exit_code == 0 and json.loads(res.output)["status"] == "accepted"
    assert (tmp_path / "ledger.db").exists() and "LEDGER_RELAY_STREAM" not in os.environ
