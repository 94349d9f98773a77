"""Wiring: settings → the ledger application with its store and its policy published."""

from __future__ import annotations

from datetime import datetime, timezone

from commands.app import LedgerApp
from infra import integrity, privacy
from infra.policy_files import load_packs
from infra.schema_lock import schema_lock
from infra.settings import Settings, get_settings
from ledger.aggregates import PolicyLedger

APP_NAME = "ledger"


def build_app(settings: Settings | None = None, *, jurisdiction: str | None = None, env: dict[str, str] | None = None, publish_policy: bool = True) -> LedgerApp:
    """The application on the configured store; publishes the policy packs on first use."""
    settings = settings or get_settings()
    # Processes starting together on a new store take turns creating its tables and publishing
    # the policy: the first does it, the others find it done (infra.schema_lock).
    with schema_lock(settings):
        app = LedgerApp(_protected(env if env is not None else settings.eventsourcing_env(APP_NAME)), jurisdiction=jurisdiction or settings.jurisdiction)
        try:
            master = privacy.MasterKey.from_setting(settings.data_key)
            privacy.install(app, master)  # personal fields encrypted at rest (ADR 0015)
            integrity.install(app, master.seal)  # tamper-evident chain, linked in each save's transaction (ADR 0016)
            if publish_policy:
                ensure_policy(app)
        except BaseException:
            app.close()  # a store that could not be set up leaves no connection behind
            raise
    return app


def memory_app(jurisdiction: str, published_at: datetime | None = None) -> LedgerApp:
    """A fresh, empty, in-memory ledger (the scenario runner's; never the user's database)."""
    app = LedgerApp(_protected({"PERSISTENCE_MODULE": "eventsourcing.popo"}), jurisdiction=jurisdiction)
    master = privacy.MasterKey.ephemeral()
    privacy.install(app, master)
    integrity.install(app, master.seal)
    ensure_policy(app, published_at)
    return app


def _protected(env: dict[str, str]) -> dict[str, str]:
    """The store's env with the personal-data mapper (ADR 0015) and the recorder that chains
    every event in the transaction that stores it (ADR 0016)."""
    return integrity.chained_env({"MAPPER_TOPIC": privacy.MAPPER_TOPIC, **env})


def ensure_policy(app: LedgerApp, published_at: datetime | None = None) -> None:
    if PolicyLedger.ID in app.repository:
        return
    moment = published_at or datetime.now(timezone.utc)
    result = app.publish_packs(load_packs(app.jurisdiction, moment), at=moment)
    if result.status != "accepted":
        raise RuntimeError(f"the shipped policy packs were refused: {result.code} {result.message}")
