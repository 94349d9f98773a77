"""A district's ledger as the district and city tests open it: the ordinary wiring on a store, with
the policy published at the end of 2023 (before any of their service dates)."""

from __future__ import annotations

from datetime import datetime

from commands.app import LedgerApp
from infra.settings import Settings
from infra.wiring import build_app, ensure_policy
from ledger.values import CST


def district_app(url: str) -> LedgerApp:
    app = build_app(Settings(database_url=url), publish_policy=False)
    ensure_policy(app, published_at=datetime(2023, 12, 31, 8, tzinfo=CST))
    return app
