"""The districts of a city, each with a ledger of its own (ADR 0020).

One configuration names the districts: ``LEDGER_DISTRICTS`` is a comma-separated list of district
codes (``changning,xuhui,jingan``) or ``@PATH`` of a file with one district a line (``code`` or
``code URL``; ``#`` starts a comment). Each district has its own event store, its own read models
and its own relay, so the writers of two districts never share a table or a lock:

- its store is ``LEDGER_DISTRICT_<CODE>_DATABASE_URL`` when set (or the URL on its line of the
  file), otherwise derived from ``LEDGER_DATABASE_URL`` by district code: a PostgreSQL database
  ``<database>_<code>`` on the same server (the library locks a store's events table on every
  insert: separate databases are separate locks), a SQLite file ``<stem>.<code>.db`` beside the
  embedded default (``./var/ledger.db`` → ``./var/ledger.changning.db``);
- its relay publishes to its own JetStream stream ``LEDGER_<CODE>`` on subjects
  ``ledger.<code>.events.<type>`` (Kafka: topic ``ledger.<code>.events``, keyed by recipient),
  tracked in its own store.

``ledger --district X …`` runs any command against district X by setting the environment of
that one process (:func:`use_district`): every command works per district unchanged, and without
``--district`` nothing changes (the single-district ledger, ``make demo``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from infra.settings import DEFAULT_DATABASE_URL, _is_sqlite, _sqlite_path

#: A district code: lower-case ASCII letters, digits and ``_``, starting with a letter (it names a
#: database, a SQLite file, a JetStream stream and a subject token).
CODE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class DistrictError(ValueError):
    """The district configuration or the district asked for is not usable: the message says why
    and how to fix it (the CLI prints it on one line, exit 2)."""


@dataclass(frozen=True)
class District:
    code: str
    database_url: str

    @property
    def stream(self) -> str:
        """Its JetStream stream."""
        return f"LEDGER_{self.code.upper()}"

    @property
    def subject_prefix(self) -> str:
        """Its subjects' prefix (NATS; also its Kafka topic and Redis stream, its RabbitMQ exchange);
        its replays go to the sibling ``ledger.<code>.replay`` (infra.relay.Topology)."""
        return f"ledger.{self.code}.events"

    def topology(self, kind: str = "nats", url: str | None = None):  # type: ignore[no-untyped-def]
        """Where its relay publishes (infra.relay.Topology): its own stream, subjects by type."""
        from infra.relay import DEFAULT_URLS, Topology

        return Topology(kind, url or DEFAULT_URLS[kind], exchange=self.subject_prefix, stream=self.stream)

    def env(self) -> dict[str, str]:
        """The environment under which every ``ledger`` command works on this district."""
        return {
            "LEDGER_DATABASE_URL": self.database_url,
            "LEDGER_DISTRICT": self.code,
            "LEDGER_RELAY_EXCHANGE": self.subject_prefix,
            "LEDGER_RELAY_STREAM": self.stream,
        }


def district_url(base_url: str, code: str) -> str:
    """The store of district ``code`` derived from the city's base URL (see the module doc)."""
    _check_code(code)
    if _is_sqlite(base_url):
        path = _sqlite_path(base_url)
        if path == ":memory:":
            return base_url  # every application opens a private in-memory database anyway
        p = Path(path)
        return "sqlite:///" + str(p.with_name(f"{p.stem}.{code}{p.suffix or '.db'}"))
    parts = urlsplit(base_url)
    dbname = parts.path.lstrip("/") or "ledger"
    return urlunsplit(parts._replace(path=f"/{dbname}_{code}"))


def configured(env: Mapping[str, str] | None = None) -> dict[str, District]:
    """The districts named by ``LEDGER_DISTRICTS`` (in their order); empty when it is unset."""
    env = os.environ if env is None else env
    spec = (env.get("LEDGER_DISTRICTS") or "").strip()
    if not spec:
        return {}
    base = (env.get("LEDGER_CITY_BASE_URL") or env.get("LEDGER_DATABASE_URL") or DEFAULT_DATABASE_URL).strip()
    entries: list[tuple[str, str | None]] = []
    if spec.startswith("@"):
        path = Path(spec[1:]).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DistrictError(f"LEDGER_DISTRICTS={spec}: cannot read {path} ({exc.strerror}): name a file of district codes") from None
        for number, line in enumerate(lines, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) > 2:
                raise DistrictError(f"{path}:{number}: a line is `code` or `code URL`, found {line.strip()!r}")
            entries.append((words[0], words[1] if len(words) == 2 else None))
    else:
        entries = [(w.strip(), None) for w in spec.split(",") if w.strip()]
    out: dict[str, District] = {}
    for code, url in entries:
        _check_code(code)
        if code in out:
            raise DistrictError(f"LEDGER_DISTRICTS names district {code!r} twice")
        url = env.get(f"LEDGER_DISTRICT_{code.upper()}_DATABASE_URL") or url or district_url(base, code)
        out[code] = District(code, url)
    if not out:
        raise DistrictError(f"LEDGER_DISTRICTS={spec!r} names no district")
    return out


def district(code: str, env: Mapping[str, str] | None = None) -> District:
    """District ``code`` of the configuration (DistrictError naming the known ones otherwise)."""
    districts = configured(env)
    if not districts:
        raise DistrictError(f"--district {code}: no districts are configured: set LEDGER_DISTRICTS (e.g. LEDGER_DISTRICTS=changning,xuhui)")
    if code not in districts:
        raise DistrictError(f"--district {code}: not a configured district (LEDGER_DISTRICTS: {', '.join(districts)})")
    return districts[code]


def use_district(code: str) -> District:
    """Point this process at district ``code``: its store, its relay's stream (the CLI's
    ``--district``). Settings are read from the environment each time, so every command that
    follows works on that district."""
    chosen = district(code)
    base = os.environ.get("LEDGER_DATABASE_URL")
    if base and "LEDGER_CITY_BASE_URL" not in os.environ:
        os.environ["LEDGER_CITY_BASE_URL"] = base  # the city's base stays known to sub-processes
    os.environ.update(chosen.env())
    return chosen


def ensure_store(d: District) -> None:
    """Create district ``d``'s PostgreSQL database if it does not exist (a SQLite file is created
    by the first recording command)."""
    if _is_sqlite(d.database_url):
        return
    from infra import pg

    parts = urlsplit(pg._libpq_url(d.database_url))  # noqa: SLF001 - the same URL normalisation
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    if not pg.database_exists(admin, name):
        pg.create_database(admin, name)


@contextmanager
def district_ledger(d: District, *, create: bool = True) -> Iterator[Any]:
    """District ``d``'s ledger (its store created if new and ``create``), closed afterwards with
    its city port: what a move between districts opens on either side (``ledger transfer``,
    ``POST /transfers``)."""
    from infra.settings import Settings
    from infra.wiring import build_app

    if create:
        ensure_store(d)
    app = build_app(Settings(database_url=d.database_url))
    try:
        yield app
    finally:
        port = getattr(app, "city", None)
        if port is not None and hasattr(port, "close"):
            port.close()
        app.close()


def _check_code(code: str) -> None:
    if not CODE.match(code):
        raise DistrictError(f"{code!r} is not a district code: lower-case letters, digits and _, starting with a letter (e.g. changning)")
