"""Common ground for the read models (ADR 0008).

- one SQLAlchemy ``metadata`` for every read-model table (all named ``proj_*``), the tracking
  table ``proj_tracking`` (one row per projection: the notification id it has applied up to) and
  ``proj_failures`` (notifications a view could not apply, and the operator's skip decisions);
- where the read models live: the event store's PostgreSQL database, or a SQLite file beside the
  event store's file (``ledger.db`` → ``ledger.projections.db``);
- money as integer fen (exact on both backends), JSON as canonical text;
- :class:`Store`: the rows of one table a batch needs, fetched with one ``IN`` query and written
  back as the difference at the end of the batch;
- :class:`Projection`: what a view declares (name, version, tables, the events it reads) and does
  (``apply`` a batch of ``(notification id, domain event)`` inside the runner's transaction).
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

from ledger.money import FEN

metadata = MetaData()

tracking = Table(
    "proj_tracking",
    metadata,
    Column("name", String(64), primary_key=True),
    # The last notification id applied (ids have gaps: a position, never a count).
    Column("position", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    # Wall-clock time of the last commit: for `status`, not part of any view.
    Column("updated_at", String(40), nullable=True),
)

# Notifications a view could not apply (a poison event: one the read models cannot store), and
# what an operator decided about each (``ledger projections skip``). A failed row stops its view
# at the position before it; a skipped row is left out of that view for good, rebuilds included.
failures = Table(
    "proj_failures",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", BigInteger, primary_key=True),  # the notification id that failed
    Column("topic", String(400), nullable=False),  # the event type
    Column("originator_id", String(80), nullable=True),
    Column("originator_version", BigInteger, nullable=True),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("first_failed_at", String(40), nullable=False),
    Column("last_failed_at", String(40), nullable=False),
    Column("status", String(16), nullable=False),  # "failed" (the view stops) or "skipped"
    Column("skipped_at", String(40), nullable=True),
    Column("skipped_by", String(200), nullable=True),
    Column("reason", Text, nullable=True),
)

Item = tuple[int, Any]  # (notification id, decoded domain event)


# --------------------------------------------------------------------------- where


def projection_url(store_url: str) -> str:
    """The read models' SQLAlchemy URL for an event store at ``store_url`` (a SQLAlchemy URL, as
    ``Settings.sqlalchemy_url()`` gives it). PostgreSQL: the same database (tables ``proj_*``).
    SQLite: a file beside the store's (``x.db`` → ``x.projections.db``), so that a rebuild never
    holds the write lock of the event store's file; ``:memory:`` stays in memory."""
    if not store_url.startswith("sqlite:"):
        return store_url
    path = store_url[len("sqlite:///") :].split("?", 1)[0]
    if path in ("", ":memory:"):
        return "sqlite://"
    p = Path(path)
    return "sqlite:///" + str(p.with_name(f"{p.stem}.projections{p.suffix or '.db'}"))


def make_engine(url: str) -> Engine:
    """An engine for the read models. On SQLite every write transaction starts with ``BEGIN
    IMMEDIATE`` (it takes the write lock first, so two runners serialise instead of failing at
    commit), WAL lets readers go on; a connection may ask for a plain ``BEGIN`` with the execution
    option ``sqlite_deferred=True`` (read-only use; :func:`reading`). On PostgreSQL every
    connection asks for lz4 compression of large values, and read-only ones run in autocommit
    (:func:`reading`)."""
    if not url.startswith("sqlite"):
        engine = create_engine(url, pool_pre_ping=True)

        @event.listens_for(engine, "connect")
        def _lz4(dbapi_connection: Any, _record: Any) -> None:
            # Values past ~2 kB (a cut's state: ~3 kB, 54% of the cuts) are compressed by the
            # server when stored: lz4 where the server was built with it, not the default pglz
            # (a rebuild at 1,000 recipients: 35 against 37-39 s of CPU in all, the rebuild
            # 15.0-15.5 s against 15.8-16.9 s). A server without lz4 keeps its default.
            try:
                with dbapi_connection.cursor() as cur:
                    cur.execute("SET default_toast_compression = 'lz4'")
                dbapi_connection.commit()
            except Exception:  # noqa: BLE001 - not built with lz4: the server's default stays
                dbapi_connection.rollback()

        return engine
    memory = url in ("sqlite://", "sqlite:///:memory:")
    if memory:
        engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_connection.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL never breaks a transaction: a power cut may lose the last
            # commits, rows and tracking position together, and the runner redoes them.
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        deferred = conn.get_execution_options().get("sqlite_deferred", False)
        conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

    @event.listens_for(engine, "before_cursor_execute")
    def _no_nul(_conn: Any, _cursor: Any, _statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        refuse_nul(parameters)

    return engine


def reading(engine: Engine) -> Connection:
    """A connection for reads only (``with reading(engine) as conn: ...``). On SQLite a plain
    ``BEGIN`` (``sqlite_deferred``: no write lock). On PostgreSQL autocommit: each statement its
    own transaction, which at READ COMMITTED is what a transaction of several reads gives too
    (every statement sees the rows committed when it starts), without the two round trips of
    ``BEGIN`` and ``ROLLBACK`` around them (a read of the HTTP service was 4 round trips for one
    ``SELECT``: the pool's ping, ``BEGIN``, the ``SELECT``, ``ROLLBACK``). Nothing that needs a
    transaction (a ``FOR UPDATE``, a transaction-level lock, a write) belongs on it."""
    conn = engine.connect()
    if engine.dialect.name == "postgresql":
        return conn.execution_options(isolation_level="AUTOCOMMIT")
    return conn.execution_options(sqlite_deferred=True)


class NulInText(ValueError):
    """Text with a NUL character (U+0000), which a read model cannot store."""


def refuse_nul(parameters: Any) -> None:
    """PostgreSQL refuses NUL in text; SQLite read models refuse it too, so that an event the
    read models cannot store stops its view the same way on both backends (ADR 0008)."""
    stack = [parameters]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise NulInText("a read model cannot store text containing NUL (U+0000), as PostgreSQL cannot")
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)


def is_postgres(conn_or_engine: Connection | Engine) -> bool:
    return conn_or_engine.dialect.name == "postgresql"


# --------------------------------------------------------------------------- values


def fen(value: Decimal | str | int | None) -> int:
    """Yuan (two decimals) → integer fen, exactly; refuses a fraction of a fen."""
    amount = Decimal(value or 0)
    cents = amount * 100
    if cents != cents.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of fen")
    return int(cents)


def yuan(value: int | None) -> Decimal | None:
    return None if value is None else (Decimal(value) * FEN).quantize(FEN)


def yuan_str(value: int | None) -> str | None:
    """The wire format: a string with exactly two decimals (or None)."""
    return None if value is None else str(yuan(value))


def dumps(obj: Any) -> str:
    """Canonical JSON text: the same content always gives the same text (rebuilds compare equal)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_default)


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, datetime):
        return utc(obj)
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    return str(obj)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def utc(moment: datetime) -> str:
    """Recorded times as sortable UTC text."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def topic(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def chunks(values: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def add_missing_columns(engine: Engine, table: str, columns: Sequence[tuple[str, str]]) -> None:
    """A table made by an earlier version gets the columns it lacks (name, SQL type), each added
    nullable, on SQLite and PostgreSQL alike. A column another process added meanwhile is left;
    any other failure (the column still missing) is raised."""
    have = {c["name"] for c in inspect(engine).get_columns(table)}
    for name, kind in columns:
        if name in have:
            continue
        try:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))
        except DBAPIError:
            if name not in {c["name"] for c in inspect(engine).get_columns(table)}:
                raise
            # another process added it meanwhile


def create_missing_indexes(engine: Engine, indexes: Sequence[Index]) -> None:
    """Indexes an existing table lacks (added by a later version), each created if absent. One
    another process (a worker starting beside this one) created meanwhile is left; any other
    failure (the index still missing) is raised."""
    for index in indexes:
        try:
            with engine.begin() as conn:
                index.create(conn, checkfirst=True)
        except DBAPIError:
            table = index.table.name if index.table is not None else ""
            if index.name not in {i["name"] for i in inspect(engine).get_indexes(table)}:
                raise


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], *, generated: Sequence[str] = ()) -> None:
    """Insert rows in the batch's transaction: PostgreSQL ``COPY … FROM STDIN`` for more than a
    few rows (one stream instead of a round trip per row), else one executemany INSERT.
    ``generated``: columns the database fills (an identity key), left out."""
    if not rows:
        return
    names = [c.name for c in table.columns if c.name not in generated]
    if len(rows) > 20 and is_postgres(conn):
        from psycopg import sql

        stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, names)))
        with conn.connection.driver_connection.cursor() as cur, cur.copy(stmt) as copy:
            for r in rows:
                copy.write_row([r.get(n) for n in names])
        return
    conn.execute(table.insert(), [{n: r.get(n) for n in names} for r in rows])


def insert_new(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows, leaving out those whose primary key is already stored (``ON CONFLICT DO
    NOTHING``): rows every partition of a rebuild derives alike (the published policy)."""
    if not rows:
        return
    if is_postgres(conn):
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    names = [c.name for c in table.columns]
    conn.execute(upsert(table).on_conflict_do_nothing(), [{n: r.get(n) for n in names} for r in rows])


def add_sums(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], sums: Sequence[str]) -> None:
    """Set-based: add each row's ``sums`` columns to the stored row with the same primary key, or
    insert it (``INSERT … ON CONFLICT (pk) DO UPDATE SET c = c + excluded.c``, one statement for
    the batch on both backends); a view that is a sum never reads its rows back."""
    if not rows:
        return
    if is_postgres(conn):
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    stmt = upsert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=[c.name for c in table.primary_key.columns],
        set_={c: table.c[c] + stmt.excluded[c] for c in sums},
    )
    conn.execute(stmt, list(rows))


# --------------------------------------------------------------------------- the batch store


class Store:
    """The rows of one table that one batch touches.

    ``fetch(column, values)`` loads every row whose ``column`` is in ``values`` (one query per
    500 values); ``get``/``put``/``delete`` work on the loaded rows; ``flush`` writes back only
    what changed (bulk insert, update and delete). A key must be fetched before it is read:
    ``put`` of a row that exists in the database but was never fetched fails on the primary key,
    which is how a forgotten fetch shows itself.
    """

    def __init__(self, conn: Connection, table: Table, *, index: Sequence[str] = ()):
        self.conn = conn
        self.table = table
        self.pk = tuple(c.name for c in table.primary_key.columns)
        self.rows: dict[tuple, dict[str, Any]] = {}
        self.stored: dict[tuple, dict[str, Any]] = {}
        self._fetched: set[tuple[str, Any]] = set()
        # One secondary index (columns that never change once a row is written) for ``where``.
        self._ix_cols = tuple(index)
        self._ix: dict[tuple, dict[tuple, None]] = {}

    def _ix_add(self, key: tuple, row: dict[str, Any]) -> None:
        if self._ix_cols:
            self._ix.setdefault(tuple(row[c] for c in self._ix_cols), {})[key] = None

    def _ix_drop(self, key: tuple) -> None:
        row = self.rows.get(key)
        if self._ix_cols and row is not None:
            self._ix.get(tuple(row[c] for c in self._ix_cols), {}).pop(key, None)

    def key(self, row: dict[str, Any]) -> tuple:
        return tuple(row[c] for c in self.pk)

    def fetch(self, column: str, values: Iterable[Any]) -> None:
        todo = sorted({v for v in values if (column, v) not in self._fetched}, key=repr)
        col = self.table.c[column]
        for part in chunks(todo):
            for r in self.conn.execute(select(self.table).where(col.in_(part))).mappings():
                k = self.key(r)
                if k not in self.stored:
                    self.stored[k] = dict(r)
                    self.rows[k] = dict(r)
                    self._ix_add(k, self.rows[k])
            self._fetched.update((column, v) for v in part)

    def get(self, *key: Any) -> dict[str, Any] | None:
        return self.rows.get(key)

    def put(self, row: dict[str, Any]) -> dict[str, Any]:
        key = self.key(row)
        self._ix_drop(key)
        self.rows[key] = row
        self._ix_add(key, row)
        return row

    def delete(self, *key: Any) -> None:
        self._ix_drop(key)
        self.rows.pop(key, None)

    def where(self, **equal: Any) -> list[dict[str, Any]]:
        """The loaded rows with these column values (by the index when it covers them)."""
        if self._ix_cols and set(self._ix_cols) <= set(equal):
            keys = self._ix.get(tuple(equal[c] for c in self._ix_cols), {})
            candidates = [self.rows[k] for k in keys]
        else:
            candidates = list(self.rows.values())
        return [r for r in candidates if all(r[k] == v for k, v in equal.items())]

    def flush(self) -> None:
        t = self.table
        inserts = [r for k, r in self.rows.items() if k not in self.stored]
        updates = [r for k, r in self.rows.items() if k in self.stored and r != self.stored[k]]
        deletes = [k for k in self.stored if k not in self.rows]
        if deletes:
            cond = and_(*(t.c[c] == bindparam(f"k_{c}") for c in self.pk))
            self.conn.execute(t.delete().where(cond), [{f"k_{c}": v for c, v in zip(self.pk, k)} for k in deletes])
        if updates:
            cols = [c.name for c in t.columns if c.name not in self.pk]
            cond = and_(*(t.c[c] == bindparam(f"k_{c}") for c in self.pk))
            stmt = t.update().where(cond).values({c: bindparam(f"v_{c}") for c in cols})
            self.conn.execute(
                stmt,
                [{**{f"k_{c}": r[c] for c in self.pk}, **{f"v_{c}": r.get(c) for c in cols}} for r in updates],
            )
        insert_rows(self.conn, t, inserts)
        self.stored = {k: dict(r) for k, r in self.rows.items()}


class Parsed:
    """Working states (JSON text in a view's table, one per recipient) kept parsed between batches,
    so that a batch parses only the states another batch did not leave here. An entry is used only
    when the stored text is the very text it was written as (``take``): a batch rolled back, or
    another runner's batch, leaves other text and the state is parsed again; an entry is taken out
    while a batch changes it and put back with the text it is written as (``keep``)."""

    def __init__(self, size: int = 12_000):
        from collections import OrderedDict

        self.size = size
        self._kept: OrderedDict[Any, tuple[str, Any]] = OrderedDict()

    def take(self, key: Any, stored: str) -> Any:
        hit = self._kept.pop(key, None)
        return hit[1] if hit is not None and hit[0] == stored else loads(stored)

    def keep(self, key: Any, text: str, state: Any) -> None:
        self._kept[key] = (text, state)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)


# --------------------------------------------------------------------------- partitions

#: Topics every partition of a partitioned rebuild reads (the policy: caps and cuts need the book
#: in force at every position); their rows are written by the partition that owns the policy id.
SHARED_PREFIX = "ledger.aggregates:PolicyLedger."


def partition_of(originator_id: Any, parts: int) -> int:
    """The partition (0 … parts − 1) of an aggregate in a rebuild split ``parts`` ways (ADR 0008):
    a recipient's events, its claims' events, each aggregate's own, all land in one partition."""
    if parts <= 1:
        return 0
    try:
        return (originator_id.int if isinstance(originator_id, uuid.UUID) else uuid.UUID(str(originator_id)).int) % parts
    except ValueError:
        return zlib.crc32(str(originator_id).encode()) % parts


class WorkerOpened:
    """What a worker process of a process pool opened (a store, an engine), kept for its next task.

    A pool's worker runs many tasks: the first opens what ``open_`` returns, the next ones with
    the same ``key`` reuse it, and a task with another key closes what was open (``close()`` on
    whatever has it, ``dispose()`` on an engine) before opening its own. One per pool function,
    at module level (a worker process holds one copy of the module)."""

    def __init__(self) -> None:
        self._key: Any = None
        self._opened: Any = None

    def get(self, key: Any, open_: Any) -> Any:
        if self._opened is None or self._key != key:
            self.close()
            self._opened, self._key = open_(), key
        return self._opened

    def close(self) -> None:
        opened, self._opened, self._key = self._opened, None, None
        for thing in opened if isinstance(opened, tuple) else (opened,):
            for method in ("dispose", "close"):
                if hasattr(thing, method):
                    getattr(thing, method)()
                    break


# --------------------------------------------------------------------------- a projection


class Projection:
    """One read model: its tables, the events it reads, and how a batch of them changes its rows.

    ``apply`` runs inside the runner's transaction, together with the tracking update; it must be
    a function of the events alone (no wall clock, no randomness), so that a rebuild from zero
    and any split into batches give the same rows. Bump ``version`` when the tables or the meaning
    of a column change: the runner then rebuilds the view.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]]
    events: ClassVar[tuple[type, ...]]
    #: Whether a rebuild may split this view by aggregate (``part``): every row it writes belongs
    #: to one aggregate's partition, or is a sum added set-based, or is derived alike by every
    #: partition (``insert_new``). A view that matches across aggregates (duplicates) cannot.
    partitionable: ClassVar[bool] = True
    #: (k, parts): this instance keeps only partition k of a partitioned rebuild (its own tracking
    #: row ``name@k/parts``); None: the whole log.
    part: tuple[int, int] | None = None
    #: Set by the runner before each ``apply``: False while more pages follow before the head it
    #: is catching up to (a view may then carry work over to the next page in rows of its own,
    #: committed with the position, as the cuts view does), True for the page that reaches it.
    last_page: bool = True

    @classmethod
    def topics(cls) -> frozenset[str]:
        return frozenset(topic(e) for e in cls.events)

    @property
    def tracking_name(self) -> str:
        return self.name if self.part is None else f"{self.name}@{self.part[0]}/{self.part[1]}"

    def owns(self, originator_id: Any) -> bool:
        """Whether rows keyed by this aggregate are this instance's to write."""
        return self.part is None or partition_of(originator_id, self.part[1]) == self.part[0]

    def reads(self, topic_: str, originator_id: Any) -> bool:
        """Whether this instance is given the notification: every one of its topics when whole;
        in a partition, its own aggregates' and the shared (policy) ones."""
        return self.part is None or topic_.startswith(SHARED_PREFIX) or self.owns(originator_id)

    def apply(self, conn: Connection, items: Sequence[Item]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
