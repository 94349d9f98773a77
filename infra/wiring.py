"""Wiring: settings → the ledger application with its store and its policy published."""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import Any, Callable

from commands.app import LedgerApp
from infra import integrity, privacy
from infra.policy_files import load_packs
from infra.schema_lock import schema_lock
from infra.settings import Settings, StoreUnavailable, get_settings
from ledger.aggregates import PolicyLedger
from ledger.values import CST

APP_NAME = "ledger"

log = logging.getLogger("ledger.wiring")

#: What one command-line invocation opened (applications, read-model engines), closed when it
#: ends (``infra.cli``): a command run in-process, as the tests and ``ledger serve``'s helpers do,
#: leaves no database connection behind. None outside an invocation: nothing is collected.
_scope: list[Callable[[], Any]] | None = None


def open_scope() -> None:
    global _scope
    _scope = []


def on_close(close: Callable[[], Any]) -> None:
    """Close this (an app's ``close``, an engine's ``dispose``) when the invocation ends."""
    if _scope is not None:
        _scope.append(close)


def close_scope() -> None:
    global _scope
    pending, _scope = _scope or [], None
    for close in reversed(pending):
        try:
            close()
        except Exception:  # noqa: BLE001 - closing what is left is best effort
            log.debug("closing %r failed", close, exc_info=True)


def build_app(settings: Settings | None = None, *, jurisdiction: str | None = None, env: dict[str, str] | None = None, publish_policy: bool = True) -> LedgerApp:
    """The application on the configured store; publishes the policy packs on first use."""
    settings = settings or get_settings()
    if settings.is_postgres and env is None:
        check_postgres(settings)  # one line naming the problem, at once, rather than a retrying pool
    env = env if env is not None else settings.eventsourcing_env(APP_NAME)  # a reading command's missing store stops here
    # Processes starting together on a new store take turns creating its tables and publishing
    # the policy: the first does it, the others find it done (infra.schema_lock).
    with schema_lock(settings):
        app = LedgerApp(_protected(env), jurisdiction=jurisdiction or settings.jurisdiction)
        try:
            master = privacy.MasterKey.from_setting(settings.data_key)
            privacy.install(app, master)  # personal fields encrypted at rest (ADR 0015)
            _cache_follows_erasures(app)
            # tamper-evident chain, linked in each save's transaction (ADR 0016); no NOTIFY unless asked (ADR 0021)
            integrity.install(app, master.seal, notify=settings.postgres_notify)
            if publish_policy:
                ensure_policy(app)
            app.city = city_index()
        except BaseException:
            app.close()  # a store that could not be set up leaves no connection behind
            raise
    on_close(app.close)
    if app.city is not None and hasattr(app.city, "close"):
        on_close(app.city.close)
    return app


def city_index(environ: dict[str, str] | None = None) -> Any:
    """The city view as this district's decisions read it (ADR 0020, R-CAP-4): when the process
    runs as a district (``ledger --district X`` sets ``LEDGER_DISTRICT``) and
    ``LEDGER_CITY_DATABASE_URL`` names the view; otherwise None (nothing read, as before)."""
    environ = os.environ if environ is None else environ
    url, code = environ.get("LEDGER_CITY_DATABASE_URL"), environ.get("LEDGER_DISTRICT")
    if not url or not code:
        return None
    from infra.city import DistrictCityIndex

    return DistrictCityIndex(url, code)


def check_postgres(settings: Settings, timeout: int = 5) -> None:
    """Open and close one connection to the configured PostgreSQL database; raise
    StoreUnavailable naming the problem and its fix when that fails."""
    import psycopg

    try:
        psycopg.connect(settings.psycopg_conninfo(), connect_timeout=timeout).close()
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(describe_store_error(exc, settings) or str(exc)) from None


def describe_store_error(exc: BaseException, settings: Settings | None = None) -> str | None:
    """One line for a store that cannot be reached (PostgreSQL database missing, server down,
    login refused), found anywhere in ``exc``'s chain; None when it is no such error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    text = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StoreUnavailable):
            return str(current)
        if type(current).__module__.startswith(("psycopg", "sqlalchemy", "eventsourcing")) and "OperationalError" in type(current).__name__:
            text = str(current)
            if "connection" in text or "does not exist" in text:
                break
        current = current.__cause__ or current.__context__ or getattr(current, "orig", None)
    if not text:
        return None
    settings = settings or get_settings()
    if settings.is_sqlite:
        return f"cannot open the SQLite store {settings.database_url}: {text.splitlines()[0]}"
    pg = settings.postgres_target()
    where = f"{pg.host}:{pg.port}"
    if "does not exist" in text and "database" in text:
        return (
            f"PostgreSQL database {pg.dbname!r} does not exist on {where}: create it "
            f"(createdb -h {pg.host} -p {pg.port} -U {pg.user} {pg.dbname}) or fix LEDGER_DATABASE_URL"
        )
    if "password authentication failed" in text or "no password supplied" in text or "role" in text and "does not exist" in text:
        return f"PostgreSQL at {where} refused user {pg.user!r}: fix the user or password in LEDGER_DATABASE_URL"
    if "refused" in text or "timeout" in text.lower() or "could not translate host name" in text or "No route" in text:
        return f"cannot reach PostgreSQL at {where}: start the server or fix the host and port in LEDGER_DATABASE_URL"
    first = " ".join(text.split())[:200]
    return f"cannot open the PostgreSQL store at {where}/{pg.dbname} ({first}): check LEDGER_DATABASE_URL and the server"


def memory_app(jurisdiction: str, published_at: datetime | None = None) -> LedgerApp:
    """A fresh, empty, in-memory ledger (the scenario runner's; never the user's database)."""
    app = LedgerApp(_protected({"PERSISTENCE_MODULE": "eventsourcing.popo"}), jurisdiction=jurisdiction)
    master = privacy.MasterKey.ephemeral()
    privacy.install(app, master)
    _cache_follows_erasures(app)
    integrity.install(app, master.seal)
    ensure_policy(app, published_at)
    return app


def _cache_follows_erasures(app: LedgerApp) -> None:
    """The aggregate cache holds decoded personal fields: it is dropped when the store's erasure
    generation moves (read as the key cache reads it: once per request, else after its ttl), so
    an erasure in any process reads as ``[erased]`` in this one too (ADR 0015, ADR 0021)."""
    if app.repository.cache is not None:
        app.repository.cache_token = privacy.key_store(app).generation_now


#: Aggregates an ordinary process keeps decoded (the library's LRU aggregate cache, ADR 0021).
AGGREGATE_CACHE_SIZE = 1000


def _protected(env: dict[str, str]) -> dict[str, str]:
    """The store's env with the personal-data mapper (ADR 0015), the recorder that chains
    every event in the transaction that stores it (ADR 0016) and, unless ``env`` says otherwise
    (the demo's and the imports' ``infra.demo.demo_env``), a bounded aggregate cache that is
    fast-forwarded on every read (ADR 0021): a read costs one query for the events stored since
    (by this or any other process), never a stale aggregate, and no snapshot read or decoding
    of what this process already holds. A copy leaves the cache for every command, so what a
    failed command did to it never reaches the cache."""
    cache = {"AGGREGATE_CACHE_MAXSIZE": str(AGGREGATE_CACHE_SIZE), "AGGREGATE_CACHE_FASTFORWARD": "y", "DEEPCOPY_FROM_AGGREGATE_CACHE": "y"}
    if "AGGREGATE_CACHE_MAXSIZE" in env:
        cache = {}
    return integrity.chained_env({"MAPPER_TOPIC": privacy.MAPPER_TOPIC, **cache, **env})


def ensure_policy(app: LedgerApp, published_at: datetime | None = None) -> None:
    if PolicyLedger.ID in app.repository:
        return
    moment = published_at or datetime.now(CST)  # people's clock, +08:00
    result = app.publish_packs(load_packs(app.jurisdiction, moment), at=moment)
    if result.status != "accepted":
        raise RuntimeError(f"the shipped policy packs were refused: {result.code} {result.message}")
