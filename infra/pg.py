"""Create and drop PostgreSQL databases (tests, benchmarks, first-time setup).

CREATE/DROP DATABASE cannot run inside a transaction, hence autocommit.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT_S = 5


def _libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style ``postgresql+psycopg://`` too."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def database_url(admin_url: str | None, name: str) -> str:
    """The admin URL with its database replaced by ``name``."""
    parts = urlsplit(_libpq_url(admin_url or DEFAULT_ADMIN_URL))
    return urlunsplit(parts._replace(path="/" + name))


def _connect(admin_url: str | None) -> psycopg.Connection:
    return psycopg.connect(
        _libpq_url(admin_url or DEFAULT_ADMIN_URL),
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
    )


def create_database(admin_url: str | None, name: str) -> str:
    """Create database ``name`` (``admin_url`` None means :data:`DEFAULT_ADMIN_URL`).

    Returns the new database's URL.
    """
    with _connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url(admin_url, name)


def drop_database(admin_url: str | None, name: str) -> None:
    """Drop database ``name`` if it exists, terminating its connections first."""
    with _connect(admin_url) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        force = sql.SQL(" WITH (FORCE)") if conn.info.server_version >= 130000 else sql.SQL("")
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force)
        )


def database_exists(admin_url: str | None, name: str) -> bool:
    with _connect(admin_url) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None
