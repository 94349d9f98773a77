"""Operating the store: what it holds, and starting it afresh (``ledger demo``, ``ledger status``).

Counting reads the notification log; nothing here decides or records a fact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from commands.app import LedgerApp
from infra.settings import DEFAULT_DATABASE_URL, Settings
from infra.wiring import build_app
from ledger.aggregates import Claim, PolicyLedger, Recipient


def topic_of(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def open_app(settings: Settings) -> LedgerApp:
    """The application on the configured store, wired as always but publishing nothing (for
    reading what the store holds)."""
    return build_app(settings, publish_policy=False)


def event_count(app: LedgerApp, topics: list[str] | None = None) -> int:
    """How many events are stored (optionally of the given topics), counted: notification ids can
    have gaps, so the last id is a position, never a count (ADR 0002)."""
    count, start = 0, 1
    while True:
        batch = app.recorder.select_notifications(start=start, limit=10_000, topics=topics or ())
        if not batch:
            return count
        count += len(batch)
        start = batch[-1].id + 1


def last_notification_id(app: LedgerApp) -> int:
    return app.recorder.max_notification_id() or 0


def last_recorded_at(app: LedgerApp) -> datetime | None:
    """The recorded time of the newest event (decoded from the last notification)."""
    last = last_notification_id(app)
    if not last:
        return None
    [n] = app.recorder.select_notifications(start=last, limit=1, inclusive_of_start=True)
    return app.mapper.to_domain_event(n).timestamp


# --------------------------------------------------------------------------------------- stores


def mask(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    return url


def _sqlite_path(url: str) -> str:
    return url[len("sqlite:///") :].split("?", 1)[0]


def sqlite_file(settings: Settings) -> Path | None:
    """The SQLite file of the store, or None (PostgreSQL, or SQLite in memory)."""
    if not settings.is_sqlite or settings.is_memory:
        return None
    return Path(_sqlite_path(settings.database_url)).expanduser()


def is_default_store(settings: Settings) -> bool:
    """The embedded default (``sqlite:///./var/ledger.db``), wherever the URL spells it."""
    path = sqlite_file(settings)
    return path is not None and path.resolve() == Path(_sqlite_path(DEFAULT_DATABASE_URL)).resolve()


def sqlite_files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


@dataclass
class StoreState:
    url: str
    backend: str
    exists: bool
    events: int = 0
    last_id: int = 0
    recipients: int = 0
    claims: int = 0
    packs: int = 0
    amendments: int = 0
    last_recorded: datetime | None = None
    size_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["last_recorded"] = self.last_recorded.isoformat() if self.last_recorded else None
        return out


def store_state(settings: Settings) -> StoreState:
    """What the configured store holds. A SQLite file that does not exist is not created."""
    backend = "postgresql" if settings.is_postgres else ("sqlite (memory)" if settings.is_memory else "sqlite")
    state = StoreState(url=mask(settings.database_url), backend=backend, exists=True)
    path = sqlite_file(settings)
    if path is not None:
        if not path.exists():
            state.exists = False
            return state
        state.size_bytes = sum(p.stat().st_size for p in sqlite_files(path))
    app = open_app(settings)
    try:
        state.events = event_count(app)
        state.last_id = last_notification_id(app)
        state.recipients = event_count(app, [topic_of(Recipient.Enrolled)])
        state.claims = event_count(app, [topic_of(Claim.Lodged)])
        state.packs = event_count(app, [topic_of(PolicyLedger.PackPublished)])
        state.amendments = event_count(app, [topic_of(PolicyLedger.ParameterAmended)])
        state.last_recorded = last_recorded_at(app)
    finally:
        app.close()
    return state


def holds_events(settings: Settings) -> bool:
    path = sqlite_file(settings)
    if path is not None and not path.exists():
        return False
    if settings.is_memory:
        return False
    app = open_app(settings)
    try:
        return last_notification_id(app) > 0
    finally:
        app.close()


def erase_store(settings: Settings) -> str:
    """Start the configured store afresh. SQLite: remove the file (and its WAL). PostgreSQL: drop
    every table of the database's current schema (the events and every read model built from
    them). Returns what was done, for the user."""
    path = sqlite_file(settings)
    if path is not None:
        removed = sqlite_files(path)
        for p in removed:
            os.remove(p)
        return f"removed {path}" if removed else f"{path} did not exist"
    if settings.is_memory:
        return "in-memory store: nothing to erase"
    with psycopg.connect(settings.psycopg_conninfo(), autocommit=True, connect_timeout=5) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
        for t in tables:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(t)))
    return f"dropped {len(tables)} table(s) in {mask(settings.database_url)}"
