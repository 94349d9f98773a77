"""The HTTP service's own durable records, in the ledger's database (ADR 0014).

Three small tables beside the event store, written with SQLAlchemy Core on the same
``LEDGER_DATABASE_URL``:

- ``http_access_log``: who read whose personal data, when, through which operation;
- ``http_idempotency``: the first response to each ``Idempotency-Key`` (per officer);
- ``http_write_off_proposals``: no longer written. Write-off proposals and their decisions are
  ledger events now (``WriteOffProposed``, ``WriteOffApproved``, ``WriteOffRefused``, R-CLR-3);
  the table is kept so that rows an earlier version left in an old store can still be read
  (``legacy_write_off_proposals``): a pending one is proposed again (``ledger clearing
  propose-write-off`` or ``POST /recipients/{id}/write-offs``), see docs/clearing.md.

None of these is ledger state: the ledger's facts and decisions stay in the event store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    cast,
    create_engine,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from infra.settings import Settings
from ledger.values import CST
from projections.common import add_missing_columns, create_missing_indexes

metadata = MetaData()

access_log = Table(
    "http_access_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("officer", String(64), nullable=False),
    Column("role", String(32), nullable=False),
    Column("street", String(200)),
    Column("recipient", String(64), index=True),  # the one recipient a read named (else NULL)
    Column("scope", String(16), nullable=False),  # "recipient" | "population"
    Column("operation", String(100), nullable=False),
    Column("target", String(500), nullable=False),
    # The recipients a read named when it named more than one (a list read: a district's clearing
    # cases), in the order named: one row per read, whatever its length (ADR 0014). PostgreSQL:
    # an array under a GIN index (``recipients @> ARRAY[…]``); SQLite: a JSON array (``json_each``).
    Column("recipients", JSON().with_variant(ARRAY(String(64)), "postgresql")),
)
#: The list column's index on PostgreSQL (created with the table, or on open for a table made
#: before the column: ``HttpStore.create_tables``).
RECIPIENTS_INDEX = Index("ix_http_access_log_recipients", access_log.c.recipients, postgresql_using="gin").ddl_if(dialect="postgresql")
#: The population-wide reads, which every "who read this person" answer includes: a partial index,
#: so that the answer's three conditions are three index reads, not a scan of the whole log.
POPULATION_INDEX = Index("ix_http_access_log_population", access_log.c.id, postgresql_where=access_log.c.scope == "population",
                         sqlite_where=access_log.c.scope == "population")

idempotency = Table(
    "http_idempotency",
    metadata,
    Column("key", String(200), primary_key=True),  # "<officer>/<Idempotency-Key>"
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

write_off_proposals = Table(
    "http_write_off_proposals",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("recipient", String(64), nullable=False, index=True),
    Column("officer", String(64), nullable=False),
    Column("reason", String(500)),
    Column("proposed_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),  # pending | approved | refused
    Column("decided_by", String(64)),
    Column("decided_at", DateTime(timezone=True)),
    Column("result", Text),
)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def make_engine(settings: Settings) -> Engine:
    url = settings.sqlalchemy_url()
    if settings.is_memory:
        return create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    if settings.is_sqlite:
        return create_engine(url, connect_args={"timeout": 10, "check_same_thread": False})
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


@dataclass(frozen=True)
class StoredResponse:
    request_hash: str
    status_code: int
    body: Any


class HttpStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def for_settings(cls, settings: Settings) -> "HttpStore":
        store = cls(make_engine(settings))
        store.create_tables()
        return store

    def create_tables(self) -> None:
        """The service's tables; an access log made before reads were kept one row each gets its
        list column and its indexes (the list's on PostgreSQL, the population-wide reads')."""
        metadata.create_all(self.engine)
        add_missing_columns(self.engine, access_log.name, [("recipients", "VARCHAR(64)[]" if self.engine.dialect.name == "postgresql" else "JSON")])
        create_missing_indexes(self.engine, (RECIPIENTS_INDEX, POPULATION_INDEX) if self.engine.dialect.name == "postgresql" else (POPULATION_INDEX,))

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    # ------------------------------------------------------------------ access log
    def record_access(self, *, officer: str, role: str, street: str | None, recipients: list[str] | None, operation: str, target: str) -> None:
        """One row per read (ADR 0014): the recipient it named, or the recipients of a list read
        in one column (each named once, in order), or ``recipients=None``: a population-wide read.
        A read naming a district's worth of people costs one row, not one per person."""
        named = None if recipients is None else list(dict.fromkeys(recipients))
        if named == []:
            return
        row = {"at": datetime.now(timezone.utc), "officer": officer, "role": role, "street": street, "operation": operation,
               "target": target[:500], "scope": "population" if named is None else "recipient",
               "recipient": named[0] if named is not None and len(named) == 1 else None,
               "recipients": named if named is not None and len(named) > 1 else None}
        if self.engine.dialect.name == "postgresql":
            # One statement in a transaction of its own: committed (and as durable) when it
            # returns, in one round trip instead of three (BEGIN, INSERT, COMMIT), on every read.
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(access_log.insert(), row)
        else:
            with self.engine.begin() as conn:
                conn.execute(access_log.insert(), row)

    def accesses(self, recipient: str, *, include_population: bool = True, since: datetime | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The reads that named ``recipient`` (alone or in a list), and with ``include_population``
        the population-wide ones, oldest first; each entry names ``recipient`` as the one read."""
        if self.engine.dialect.name == "postgresql":
            listed = access_log.c.recipients.op("@>")(cast(array([recipient]), ARRAY(String(64))))
        else:
            listed = exists(select(literal(1)).select_from(func.json_each(access_log.c.recipients).table_valued("value").alias("named"))
                            .where(text("named.value = :named_recipient").bindparams(named_recipient=recipient)))
        cond = or_(access_log.c.recipient == recipient, listed)
        if include_population:
            cond = or_(cond, access_log.c.scope == "population")
        q = select(*(c for c in access_log.c if c.name != "recipients")).where(cond)
        if since is not None:
            q = q.where(access_log.c.at >= _utc(since))
        q = q.order_by(access_log.c.id).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        # shown to people: China Standard Time (stored in UTC)
        return [{**dict(r), "at": _utc(r["at"]).astimezone(CST), "recipient": None if r["scope"] == "population" else recipient} for r in rows]

    # ------------------------------------------------------------------ idempotency
    def stored_response(self, key: str) -> StoredResponse | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(idempotency).where(idempotency.c.key == key)).mappings().first()
        if row is None:
            return None
        return StoredResponse(row["request_hash"], row["status_code"], json.loads(row["body"]))

    def store_response(self, key: str, request_hash: str, status_code: int, body: Any) -> StoredResponse:
        """Keep the first response for ``key``; a concurrent first writer wins and is returned."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(idempotency).values(
                        key=key, request_hash=request_hash, status_code=status_code,
                        body=json.dumps(body, ensure_ascii=False), created_at=datetime.now(timezone.utc),
                    )
                )
        except IntegrityError:
            stored = self.stored_response(key)
            if stored is not None:
                return stored
            raise
        return StoredResponse(request_hash, status_code, body)

    # ------------------------------------------------------------------ write-off proposals (legacy)
    def legacy_write_off_proposals(self, status: str | None = "pending") -> list[dict[str, Any]]:
        """Rows an earlier version kept in ``http_write_off_proposals`` (read only; see the module
        docstring): proposals are ledger events now."""
        q = select(write_off_proposals)
        if status:
            q = q.where(write_off_proposals.c.status == status)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(write_off_proposals.c.proposed_at)).mappings().all()
        return [_proposal_view(r) for r in rows]


def _proposal_view(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "recipient": row["recipient"],
        "officer": row["officer"],
        "reason": row["reason"],
        "proposed_at": _utc(row["proposed_at"]),
        "status": row["status"],
        "decided_by": row["decided_by"],
        "decided_at": _utc(row["decided_at"]),
        "result": json.loads(row["result"]) if row["result"] else None,
    }
