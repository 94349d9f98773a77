"""Settings read from the environment (prefix ``LEDGER_``), and the wiring they imply.

One URL, ``LEDGER_DATABASE_URL``, chooses the backend for the event store and the read models
(ADR 0002). Nothing here opens a connection.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./var/ledger.db"
DEV_TOKEN_SECRET = "dev-only-token-secret-change-me"
#: A token secret shorter than this is refused by ``ledger serve`` beyond loopback (ADR 0013):
#: HMAC-SHA256 wants a key as long as its output.
MIN_TOKEN_SECRET_BYTES = 32
#: The largest request body the HTTP service reads (``LEDGER_MAX_BODY_BYTES``, ADR 0013).
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
#: The largest settlement file an upload may carry (``LEDGER_MAX_UPLOAD_BYTES``, docs/import.md):
#: only the upload routes take it, every other route keeps ``LEDGER_MAX_BODY_BYTES``.
DEFAULT_MAX_UPLOAD_BYTES = 16 * 1024 * 1024

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg"}


class StoreUnavailable(RuntimeError):
    """The configured store cannot be opened as asked: the message names the problem and the fix
    (the CLI prints it on one line and exits 5)."""


#: Set (by the CLI, for reading commands) while only an existing store may be opened: a SQLite
#: path with no file then raises StoreUnavailable instead of creating an empty store.
_existing_only = False


def require_existing_store(flag: bool = True) -> None:
    """Reading commands open only a store that exists (``sqlite:///relative`` is relative to the
    working directory, ``sqlite:////absolute`` absolute): a missing file is named, not created."""
    global _existing_only
    _existing_only = flag


def missing_sqlite_store(url: str) -> str:
    path = Path(_sqlite_path(url)).expanduser()
    hint = (
        "sqlite:///PATH is relative to the current directory (" + str(Path.cwd()) + "), sqlite:////PATH is absolute"
    )
    return (
        f"no ledger store at {path.resolve() if not path.is_absolute() else path} (LEDGER_DATABASE_URL={url}): "
        f"set LEDGER_DATABASE_URL to the store's file ({hint}), or create one with `ledger demo` or a recording command"
    )


@dataclass(frozen=True)
class PostgresTarget:
    host: str
    port: int
    user: str
    password: str
    dbname: str


def _is_sqlite(url: str) -> bool:
    return url.startswith(_SQLITE_PREFIX)


def _sqlite_path(url: str) -> str:
    """``sqlite:///./var/x.db`` → ``./var/x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    return url[len(_SQLITE_PREFIX) :].split("?", 1)[0]


def _parse_postgres(url: str) -> PostgresTarget:
    parts = urlsplit(url)
    if parts.scheme not in _POSTGRES_SCHEMES:
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname:
        raise ValueError(f"PostgreSQL URL names no database: {url!r}")
    return PostgresTarget(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=unquote(parts.username) if parts.username else "postgres",
        password=unquote(parts.password) if parts.password else "",
        dbname=dbname,
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    broker: Literal["rabbit", "nats", "redis", "kafka"] = "rabbit"
    token_secret: str = DEV_TOKEN_SECRET
    data_key: str | None = None
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, gt=0)  # larger request bodies get 413 unread
    max_upload_bytes: int = Field(DEFAULT_MAX_UPLOAD_BYTES, gt=0)  # the same, for the settlement-file upload routes
    jurisdiction: Literal["shanghai.changning", "shanghai", "lianyungang"] = "shanghai.changning"
    #: PostgreSQL: send a ``NOTIFY`` on the events table's channel with every save (the event
    #: store library's way to wake a LISTENing reader). Off: nothing in the ledger LISTENs, and
    #: every notifying commit takes the server's notification-queue lock (ADR 0021).
    postgres_notify: bool = False
    #: HTTP: endpoint threads per worker process (ADR 0023); more requests wait their turn.
    http_threads: int = Field(4, gt=0, le=256)
    #: HTTP: seconds between a worker's full collections of its heap (ADR 0023, ``infra.http.collector``);
    #: 0 leaves Python's cyclic collector as it is.
    http_gc_full_seconds: float = Field(60.0, ge=0, le=86400)

    @field_validator("database_url")
    @classmethod
    def _supported_database_url(cls, value: str) -> str:
        value = value.strip()
        if _is_sqlite(value):
            if not _sqlite_path(value):
                raise ValueError("sqlite URL names no file: use sqlite:///path or sqlite:///:memory:")
            return value
        _parse_postgres(value)
        return value

    def network_weaknesses(self) -> list[str]:
        """Why these settings are unfit for a service reachable beyond this machine, one phrase
        per setting (empty when none): ``ledger serve`` refuses a non-loopback address with any
        of them and warns on loopback (ADR 0013, ADR 0015)."""
        out = []
        if not self.data_key:
            out.append("LEDGER_DATA_KEY is not set (personal data would be encrypted with the fixed development key)")
        if self.token_secret == DEV_TOKEN_SECRET:
            out.append("LEDGER_TOKEN_SECRET is the development secret (anyone can sign a token with it)")
        elif len(self.token_secret.encode("utf-8")) < MIN_TOKEN_SECRET_BYTES:
            out.append(f"LEDGER_TOKEN_SECRET is shorter than {MIN_TOKEN_SECRET_BYTES} bytes")
        return out

    # -- backend --------------------------------------------------------------------------

    @property
    def is_sqlite(self) -> bool:
        return _is_sqlite(self.database_url)

    @property
    def is_postgres(self) -> bool:
        return not self.is_sqlite

    @property
    def is_memory(self) -> bool:
        return self.is_sqlite and _sqlite_path(self.database_url) == ":memory:"

    def postgres_target(self) -> PostgresTarget:
        return _parse_postgres(self.database_url)

    # -- wiring ---------------------------------------------------------------------------

    def eventsourcing_env(self, app_name: str) -> dict[str, str]:
        """The ``env`` mapping for an eventsourcing 9.5 Application called ``app_name``.

        Pass it explicitly (``MyApp(env=settings.eventsourcing_env(MyApp.name))``): explicit
        values win over ``os.environ``. PostgreSQL tables are named after the application
        (``<name>_events``); SQLite has one ``stored_events`` table per file, so two applications
        that must not share a stream must not share a SQLite URL.
        ``POSTGRES_ENABLE_DB_FUNCTIONS`` is deliberately never set (ADR 0002).
        """
        if self.is_sqlite:
            path = _sqlite_path(self.database_url)
            if path == ":memory:":
                # One shared-cache in-memory database per call, so that every connection of
                # the application's pool sees the same data and no two applications collide.
                slug = "".join(c if c.isalnum() else "_" for c in app_name) or "app"
                dbname = f"file:{slug}_{uuid.uuid4().hex}?mode=memory&cache=shared"
            else:
                if _existing_only and not Path(path).expanduser().exists():
                    raise StoreUnavailable(missing_sqlite_store(self.database_url))
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
                dbname = str(Path(path).expanduser())
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": dbname,
                "SQLITE_LOCK_TIMEOUT": "10",
            }
        pg = self.postgres_target()
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": pg.dbname,
            "POSTGRES_HOST": pg.host,
            "POSTGRES_PORT": str(pg.port),
            "POSTGRES_USER": pg.user,
            "POSTGRES_PASSWORD": pg.password,
        }

    def sqlalchemy_url(self) -> str:
        """The same database for SQLAlchemy (read models): psycopg 3 driver for PostgreSQL."""
        if self.is_sqlite:
            return _SQLITE_PREFIX + _sqlite_path(self.database_url)
        pg = self.postgres_target()
        auth = quote(pg.user, safe="")
        if pg.password:
            auth += ":" + quote(pg.password, safe="")
        host = f"[{pg.host}]" if ":" in pg.host else pg.host
        return f"postgresql+psycopg://{auth}@{host}:{pg.port}/{quote(pg.dbname, safe='')}"

    def psycopg_conninfo(self) -> str:
        """A libpq URL for psycopg; PostgreSQL only."""
        if self.is_sqlite:
            raise ValueError("psycopg_conninfo() needs a PostgreSQL database_url")
        return self.sqlalchemy_url().replace("postgresql+psycopg://", "postgresql://", 1)


def get_settings() -> Settings:
    """Read the settings from the environment now (not cached: tests change the environment)."""
    return Settings()
