"""The city view: the districts' public streams folded into city-wide read models (ADR 0020).

Each district's relay publishes its public contract to its own durable stream (JetStream stream
``LEDGER_<CODE>``, Kafka topic ``ledger.<code>.events`` keyed by recipient; infra.districts). The
city view is a faststream subscriber on every district's stream that keeps, in its own database
(``LEDGER_CITY_DATABASE_URL``):

- the city-wide receipt index: which district paid aid on each receipt first, and every later
  payment on the same receipt in another district as a conflict (R-CAP-4, R-CLR-1(b)
  [002 4.5; 000 第七条]): the district that paid second opens the clearing case;
- each person's city-scheme usage per year and district (R-CAP-4 [001 municipal scheme]): the
  recipient key is the same in every district (one person, one resident id number);
- the aid paid per district and fund;
- per district, the last stream position applied and the newest chain checkpoint seen (ADR 0016):
  the manifest of a city snapshot.

Exactly once per district: one :class:`infra.contract.consumer.Deduplicator` per district over
:class:`SqlPositions` in the city database, its position committed in the same transaction as the
rows it changed (on Kafka, where order holds per key only, the position is kept per district and
recipient key). A message redelivered after a crash is dropped as a repeat; one whose transaction
rolled back is applied again. On JetStream the view pulls up to ``LEDGER_CITY_BATCH_SIZE`` messages
(default 100) of a district at once and applies them in stream order in one transaction, the
district's position with them (:meth:`CityView.process_batch`), and acknowledges them after the
commit. A batch lost with a crashed view process is redelivered only when its acknowledgement
times out, while the restarted view is already pulling later messages: so the view also commits
each district's last JetStream stream sequence (consecutive within a stream) with its rows, and
applies a message only if nothing between it and the last one applied is missing; the rest of a
batch after a gap is handed back to the broker (a delayed negative acknowledgement) until the
missing ones come back. Applying a later message first would move the position past the missing
ones, and they would then be dropped as repeats: lost.

Every answer that a decision may depend on carries the positions it was read at
(:meth:`CityView.positions`), so an explanation can record "as of the city view at changning
412, xuhui 380".
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.contract import messages as pm
from infra.contract.consumer import _ALWAYS, Deduplicator, Outcome, SqlPositions, _target
from infra.districts import District
from projections.common import add_missing_columns
from ledger.policy.packs import SHANGHAI_MEDICAL_AID
from ledger.values import VisitType, micros, receipt_identity

log = logging.getLogger("ledger.city")

ZERO = Decimal("0.00")
RULE_RECEIPT = "R-CAP-4, R-CLR-1(b) [002 4.5; 000 第七条]"
RULE_CAP = "R-CAP-4 [001]"
#: How long JetStream waits for the view's ack before redelivering (a view killed mid-message is
#: redelivered that message after this; the repeat check makes a redelivery harmless).
ACK_WAIT_S = 10
#: With batches: how long the view waits to fill one before applying what it has. Each wait ends
#: with a pull request expiring at the server; a message the server sends just as the client
#: gives up on the request is redelivered only after the ack wait (and holds the district's later
#: ones, see ``process_batch``): fewer, longer waits lose fewer.
BATCH_WAIT_S = 0.25
#: With batches: the ack wait. A message the server sent as a pull request expired is redelivered
#: only after it: when later ones arrive first the view reads the missing one from the stream
#: (``_fetch_missing``), but the district's newest messages wait it out, so it bounds the view's
#: lag (measured: 10 s gave a lag p99 of 9 s, 3 s 2.9 s, 1.5 s 1.3-1.7 s). A batch (20 messages)
#: takes well under a second; one redelivered while its first delivery is still being applied is
#: dropped as repeats, so a short wait costs deliveries, never correctness.
BATCH_ACK_WAIT_S = 1.5
#: How long a message after a gap waits before it is redelivered.
GAP_RETRY_S = 0.5
#: A gap of at most this many messages is read from the stream at once (``CityView._fetch_missing``).
MAX_GAP_FETCH = 1000


class CitySettings(BaseSettings):
    """``LEDGER_CITY_…``: how the view applies a district's stream."""

    model_config = SettingsConfigDict(env_prefix="LEDGER_CITY_", extra="ignore")

    #: Messages of one district applied in one transaction (and the most unacknowledged); 1: one
    #: message per transaction.
    batch_size: int = 20

_md = sa.MetaData()
city_expenses = sa.Table(
    "city_expenses",
    _md,
    sa.Column("district", sa.String(40), primary_key=True),
    sa.Column("expense_id", sa.String(120), primary_key=True),
    sa.Column("recipient_key", sa.String(64), nullable=False, index=True),
    sa.Column("receipt", sa.String(420), nullable=False, index=True),
    sa.Column("year", sa.Integer, nullable=False),
    sa.Column("city_due", sa.String(24), nullable=False, default="0.00"),  # R-CAP-2: the aid due, as now known
    # R-CAP-2 [002 4.3]: the cap bucket, the invoice date's year and the cap kind (R-CAP-1); null on
    # rows applied before they were kept (counted under both kinds of ``year``: never paid twice)
    sa.Column("cap_year", sa.Integer, nullable=True),
    sa.Column("kind", sa.String(20), nullable=True),
    # R-CAP-4: when the district first decided the expense (its aid.decided's recorded time, µs
    # since 1970 UTC): a later decision elsewhere should have counted it (``usage_overlaps_for``);
    # null on rows applied before it was kept
    sa.Column("decided_us", sa.BigInteger, nullable=True),
)
city_receipts = sa.Table(
    "city_receipts",
    _md,
    sa.Column("receipt", sa.String(420), primary_key=True),
    sa.Column("district", sa.String(40), nullable=False),
    sa.Column("expense_id", sa.String(120), nullable=False),
    sa.Column("paid_at", sa.String(40), nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
)
city_conflicts = sa.Table(
    "city_conflicts",
    _md,
    sa.Column("receipt", sa.String(420), primary_key=True),
    sa.Column("district", sa.String(40), primary_key=True),  # the district that paid second: it clears
    sa.Column("expense_id", sa.String(120), primary_key=True),
    sa.Column("first_district", sa.String(40), nullable=False),
    sa.Column("first_expense_id", sa.String(120), nullable=False),
    sa.Column("paid_at", sa.String(40), nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
)
city_funds = sa.Table(
    "city_funds",
    _md,
    sa.Column("district", sa.String(40), primary_key=True),
    sa.Column("fund", sa.String(80), primary_key=True),
    sa.Column("amount", sa.String(24), nullable=False),
)
city_sequences = sa.Table(
    "city_sequences",
    _md,
    sa.Column("district", sa.String(40), primary_key=True),
    sa.Column("sequence", sa.BigInteger, nullable=False),  # the last JetStream stream sequence applied
)
city_heads = sa.Table(
    "city_heads",
    _md,
    sa.Column("district", sa.String(40), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),  # the newest position applied
    sa.Column("checkpoint", sa.Integer, nullable=False),  # the newest chain checkpoint seen (ADR 0016)
    sa.Column("checkpoint_position", sa.BigInteger, nullable=False),
    sa.Column("chain_head", sa.String(64), nullable=False),
    sa.Column("recorded_at", sa.String(40), nullable=False),  # of the newest event applied
)


def receipt_key(facility_code: str | None, invoice_no: str) -> str:
    """One receipt, the same in every district (R-CLR-1(b): normalised facility code and number)."""
    return "\x1f".join(receipt_identity(facility_code, invoice_no))


@dataclass(frozen=True)
class ReceiptAnswer:
    """Whether a receipt was paid in another district, as of ``positions`` of the city view."""

    district: str | None
    expense_id: str | None
    positions: dict[str, int]

    @property
    def aided_elsewhere(self) -> bool:
        return self.district is not None

    def explanation(self, asking: str) -> str:
        at = ", ".join(f"{d} {p}" for d, p in sorted(self.positions.items())) or "nothing applied yet"
        if not self.aided_elsewhere:
            return f"no district but {asking} paid this receipt, as of the city view at {at} ({RULE_RECEIPT})"
        return f"the same receipt was aided in {self.district} (expense {self.expense_id}) as of the city view at {at}: a receipt is paid once in the city ({RULE_RECEIPT})"


class CityView:
    """The city's read models in one database (SQLite or PostgreSQL)."""

    def __init__(self, url: str, districts: Iterable[District] = ()):
        """``url``: the city view's own database, as ``LEDGER_DATABASE_URL`` is written."""
        from infra.settings import Settings

        url = Settings(database_url=url).sqlalchemy_url()
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = sa.create_engine(url, **kwargs)
        try:
            _md.create_all(self.engine)
        except sa.exc.DBAPIError:
            if not sa.inspect(self.engine).has_table("city_heads"):
                raise
        _add_bucket_columns(self.engine)
        self.positions_store = SqlPositions(self.engine, table="city_positions")
        self.districts = {d.code: d for d in districts}
        self._dedup: dict[str, Deduplicator] = {}

    # -- applying ---------------------------------------------------------------------------
    def deduplicator(self, district: str, *, per_key: bool = False) -> Deduplicator:
        """District ``district``'s exactly-once gate: one stream position per district (per
        district and recipient key on Kafka, ``per_key``)."""
        name = f"{district}|key" if per_key else district
        if name not in self._dedup:
            stream: Any = (lambda m: f"{district}:{m.recipient_key or 'none'}") if per_key else district
            self._dedup[name] = Deduplicator(self.positions_store, stream=stream, strict=True)
        return self._dedup[name]

    def process(self, district: str, body: Any, *, per_key: bool = False) -> Outcome:
        """Apply one delivered message of ``district``'s stream once (rows and position in one
        transaction)."""
        return self.deduplicator(district, per_key=per_key).process_in_transaction(body, lambda m, tx: self.apply(district, m, tx))

    def process_batch(self, district: str, bodies: Iterable[Any], sequences: Iterable[int] | None = None) -> list[Outcome]:
        """Apply delivered messages of ``district``'s stream in one transaction, in stream order:
        each new message's rows and the district's position commit together, or nothing does (the
        broker then redelivers the batch, and each message is applied again or dropped as a
        repeat). The same gate as :meth:`process`, one transaction for many messages.

        ``sequences``: each message's JetStream stream sequence. A message is applied only if no
        sequence between the last one applied and its own is missing; the outcomes stop at the
        first gap (the caller hands the rest back to the broker, to come again after the missing
        ones). The last sequence applied commits with the rows."""
        dedup = self.deduplicator(district)
        parsed = [pm.parse_message(b) for b in bodies]
        seqs = list(sequences) if sequences is not None else [None] * len(parsed)
        # stable: a checkpoint stays after the event it seals, at the same position
        pairs = sorted(zip(parsed, seqs), key=lambda ms: (ms[1] or 0, ms[0].position))
        outcomes: list[Outcome] = []
        applied: list[pm.Envelope] = []
        with self.positions_store.begin() as tx:
            last = None
            if sequences is not None:
                row = tx.execute(sa.select(city_sequences.c.sequence).where(city_sequences.c.district == district)).first()
                last = None if row is None else int(row[0])
            table = self.positions_store.table
            row = tx.execute(sa.select(table.c.position).where(table.c.stream == district)).first()
            position = None if row is None else int(row[0])
            for m, seq in pairs:
                if seq is not None and last is not None and seq > last + 1:
                    log.info("city view: %s stream sequence %s follows %s: waiting for the missing ones", district, seq, last)
                    break
                target = _target(m)
                fresh = position is None or target > position  # the gate of SqlPositions.advance, kept in hand for the batch
                if fresh:
                    position = target
                if fresh or isinstance(m, _ALWAYS):
                    self._rows(district, m, tx)
                    applied.append(m)
                    outcomes.append(Outcome.PROCESSED)
                else:
                    outcomes.append(Outcome.REPEAT)
                if seq is not None:
                    last = seq if last is None else max(last, seq)
            if position is not None:
                self.positions_store.advance(tx, district, position)
            heads = [m for m in applied if not isinstance(m, pm.ReplayCompleted)]
            if heads:
                self._head(tx, district, heads)
            if sequences is not None and last is not None and outcomes:
                if tx.execute(city_sequences.update().where(city_sequences.c.district == district).values(sequence=last)).rowcount == 0:
                    tx.execute(city_sequences.insert().values(district=district, sequence=last))
        dedup.stats.delivered += len(outcomes)
        dedup.stats.processed += outcomes.count(Outcome.PROCESSED)
        dedup.stats.repeats += outcomes.count(Outcome.REPEAT)
        return outcomes

    def apply(self, district: str, m: pm.Envelope, conn: sa.Connection) -> None:
        self._rows(district, m, conn)
        if not isinstance(m, pm.ReplayCompleted):
            self._head(conn, district, [m])

    def _rows(self, district: str, m: pm.Envelope, conn: sa.Connection) -> None:
        """The read models' rows for one message (the district's head apart)."""
        if isinstance(m, (pm.ChainCheckpointSealed, pm.ReplayCompleted)):
            return
        if isinstance(m, pm.ExpenseRecorded):
            p = m.payload
            row = {
                "district": district,
                "expense_id": p.expense_id,
                "recipient_key": m.recipient_key or "",
                "receipt": receipt_key(p.facility.code, p.invoice_no),
                "year": p.service_date.year,
                "city_due": "0.00",
                "cap_year": p.invoice_date.year,
                "kind": VisitType(p.visit_type).cap_kind,  # R-CAP-1: outpatient and 门诊大病 share a limit
            }
            if conn.execute(sa.select(city_expenses.c.expense_id).where(city_expenses.c.district == district, city_expenses.c.expense_id == p.expense_id)).first() is None:
                conn.execute(city_expenses.insert().values(**row))
        elif isinstance(m, pm.AidDecided):
            for d in m.payload.decisions:
                self._due(conn, district, d.expense_id, d.by_scheme, decided_us=micros(m.recorded_at))
        elif isinstance(m, pm.AidReassessed):
            for r in m.payload.results:
                self._due(conn, district, r.expense_id, r.by_scheme)
        elif isinstance(m, pm.AidPaid):
            for p in m.payload.payments:
                for fund, amount in p.by_fund.items():
                    self._add_fund(conn, district, fund, Decimal(amount))
                self._paid(conn, district, p.expense_id, m)

    def _due(self, conn: sa.Connection, district: str, expense_id: str, by_scheme: dict[str, str], decided_us: int | None = None) -> None:
        # R-CAP-2/R-CAP-4 [001]: the city scheme's aid due for the expense, as the district now knows
        # it; with a decision, when it was first decided (kept from the first: a redecision keeps it).
        e = city_expenses
        values: dict[str, Any] = {"city_due": str(Decimal(by_scheme.get(SHANGHAI_MEDICAL_AID, "0.00")))}
        if decided_us is not None:
            values["decided_us"] = sa.func.coalesce(e.c.decided_us, decided_us)
        conn.execute(e.update().where(e.c.district == district, e.c.expense_id == expense_id).values(**values))

    def _add_fund(self, conn: sa.Connection, district: str, fund: str, amount: Decimal) -> None:
        t = city_funds
        row = conn.execute(sa.select(t.c.amount).where(t.c.district == district, t.c.fund == fund)).first()
        if row is None:
            conn.execute(t.insert().values(district=district, fund=fund, amount=str(amount)))
        else:
            conn.execute(t.update().where(t.c.district == district, t.c.fund == fund).values(amount=str(Decimal(row[0]) + amount)))

    def _paid(self, conn: sa.Connection, district: str, expense_id: str, m: pm.AidPaid) -> None:
        """The receipt index (R-CAP-4, R-CLR-1(b) [002 4.5; 000 第七条]): the first payment of a
        receipt in the city holds it; a payment of the same receipt in another district is a
        conflict of the district that paid second (by recorded time, then district code; whichever
        stream arrives first)."""
        found = conn.execute(sa.select(city_expenses.c.receipt).where(city_expenses.c.district == district, city_expenses.c.expense_id == expense_id)).first()
        if found is None:
            return  # an expense recorded before the stream began: not indexed
        receipt, paid_at = found[0], m.recorded_at.isoformat()
        first = conn.execute(sa.select(city_receipts).where(city_receipts.c.receipt == receipt)).mappings().first()
        if first is None:
            conn.execute(city_receipts.insert().values(receipt=receipt, district=district, expense_id=expense_id, paid_at=paid_at, position=m.position))
            return
        if first["district"] == district:
            return  # the district's own duplicates are its own clearing's (R-CLR-1(b), one store)
        second = {"district": district, "expense_id": expense_id, "paid_at": paid_at, "position": m.position}
        if (paid_at, district) < (first["paid_at"], first["district"]):  # this district paid first (a tie: by code): the holder becomes the conflict
            conn.execute(city_receipts.update().where(city_receipts.c.receipt == receipt).values(district=district, expense_id=expense_id, paid_at=paid_at, position=m.position))
            second, first = dict(first), second
            conn.execute(city_conflicts.update().where(city_conflicts.c.receipt == receipt).values(first_district=first["district"], first_expense_id=first["expense_id"]))
        exists = conn.execute(
            sa.select(city_conflicts.c.receipt).where(city_conflicts.c.receipt == receipt, city_conflicts.c.district == second["district"], city_conflicts.c.expense_id == second["expense_id"])
        ).first()
        if exists is None:
            conn.execute(
                city_conflicts.insert().values(
                    receipt=receipt,
                    district=second["district"],
                    expense_id=second["expense_id"],
                    first_district=first["district"],
                    first_expense_id=first["expense_id"],
                    paid_at=second["paid_at"],
                    position=second["position"],
                )
            )

    def _head(self, conn: sa.Connection, district: str, messages: list[pm.Envelope]) -> None:
        """The district's newest position and recorded time applied, and its newest checkpoint."""
        t = city_heads
        row = conn.execute(sa.select(t).where(t.c.district == district)).mappings().first()
        values = dict(row) if row else {"district": district, "position": 0, "checkpoint": 0, "checkpoint_position": 0, "chain_head": "", "recorded_at": ""}
        for m in messages:
            values["position"] = max(int(values["position"]), m.position)
            values["recorded_at"] = max(values["recorded_at"], m.recorded_at.isoformat())
            if isinstance(m, pm.ChainCheckpointSealed) and m.payload.number > values["checkpoint"]:
                values.update(checkpoint=m.payload.number, checkpoint_position=m.position, chain_head=m.payload.hash)
        if row is None:
            conn.execute(t.insert().values(**values))
        else:
            conn.execute(t.update().where(t.c.district == district).values(**values))

    # -- reading ----------------------------------------------------------------------------
    def positions(self, conn: sa.Connection | None = None) -> dict[str, int]:
        """Each district's newest stream position applied: the city view's own "as of"."""
        with _conn(self.engine, conn) as c:
            return {r.district: int(r.position) for r in c.execute(sa.select(city_heads.c.district, city_heads.c.position))}

    def receipt(self, facility_code: str | None, invoice_no: str, asking: str) -> ReceiptAnswer:
        """Was this receipt paid in a district other than ``asking``? Read in one transaction with
        the positions it is true at (R-CAP-4, R-CLR-1(b) [002 4.5; 000 第七条])."""
        key = receipt_key(facility_code, invoice_no)
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(city_expenses.c.district, city_expenses.c.expense_id)
                .join(city_receipts, city_receipts.c.receipt == city_expenses.c.receipt)
                .where(city_expenses.c.receipt == key, city_receipts.c.district != asking, city_receipts.c.district == city_expenses.c.district, city_receipts.c.expense_id == city_expenses.c.expense_id)
            ).first()
            positions = self.positions(c)
        return ReceiptAnswer(rows[0] if rows else None, rows[1] if rows else None, positions)

    def cap_usage(self, recipient_key: str, year: int) -> tuple[dict[str, Decimal], dict[str, int]]:
        """A person's city-scheme aid due in ``year`` per district (R-CAP-4 [001]: the city cap is
        the person's, city-wide), with the positions it was read at."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(city_expenses.c.district, city_expenses.c.city_due).where(city_expenses.c.recipient_key == recipient_key, city_expenses.c.year == year)).all()
            positions = self.positions(c)
        used: dict[str, Decimal] = defaultdict(lambda: ZERO)
        for district, due in rows:
            used[district] += Decimal(due)
        return dict(used), positions

    def usage_by_bucket(self, recipient_key: str, years: Iterable[int]) -> tuple[dict[tuple[int, str], dict[str, Decimal]], dict[str, int]]:
        """A person's city-scheme aid due per cap bucket (invoice year, kind) and district, for
        ``years`` (R-CAP-2, R-CAP-4 [001]: the city cap is the person's, city-wide), read in one
        snapshot with the positions it is true at (what a district's decision reads, ADR 0020)."""
        from commands.city import used_by_bucket

        years = sorted(set(years))
        e = city_expenses
        with self.engine.connect() as c:
            if c.dialect.name == "postgresql":  # one snapshot for both reads
                c.execution_options(isolation_level="REPEATABLE READ")
            rows = c.execute(
                sa.select(e.c.district, e.c.cap_year, e.c.year, e.c.kind, e.c.city_due).where(
                    e.c.recipient_key == recipient_key, sa.or_(e.c.cap_year.in_(years), sa.and_(e.c.cap_year.is_(None), e.c.year.in_(years)))
                )
            ).mappings().all()
            positions = self.positions(c)
        return used_by_bucket(rows), positions

    def usage_overlaps_for(self, district: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """For the cap check of ``district``'s clearing run (R-CAP-4, R-CLR-1(e) [001; 000 第七条]):
        every row (district, expense, recipient key, cap bucket, city-scheme aid due, when first
        decided) of the persons with aid due in ``district`` and in another district, read in one
        snapshot with the positions they are true at. The district decides which of its decisions
        counted less than was decided elsewhere before them (``commands.city.usage_known_before``)."""
        e = city_expenses
        here = sa.select(e.c.recipient_key).where(e.c.district == district, e.c.city_due != "0.00")
        there = sa.select(e.c.recipient_key).where(e.c.district != district, e.c.city_due != "0.00")
        both = sa.intersect(here, there).subquery()
        with self.engine.connect() as c:
            if c.dialect.name == "postgresql":  # one snapshot for both reads
                c.execution_options(isolation_level="REPEATABLE READ")
            rows = [
                dict(r)
                for r in c.execute(
                    sa.select(e.c.district, e.c.expense_id, e.c.recipient_key, e.c.year, e.c.cap_year, e.c.kind, e.c.city_due, e.c.decided_us)
                    .where(e.c.recipient_key.in_(sa.select(both.c.recipient_key)))
                    .order_by(e.c.recipient_key, e.c.district, e.c.expense_id)
                ).mappings()
            ]
            return rows, self.positions(c)

    def fund_totals(self) -> dict[tuple[str, str], Decimal]:
        """Aid paid per (district, fund)."""
        with self.engine.connect() as c:
            return {(r.district, r.fund): Decimal(r.amount) for r in c.execute(sa.select(city_funds))}

    def conflicts(self) -> list[dict[str, Any]]:
        """Receipts paid in two districts: each row names the district that paid second (it opens
        the clearing case, R-CLR-1(b)) and the first."""
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(sa.select(city_conflicts).order_by(city_conflicts.c.paid_at)).mappings()]

    def conflicts_for(self, district: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The receipts ``district`` paid second (it clears them, R-CAP-4, R-CLR-1(b) [002 4.5;
        000 第七条]), read in one transaction with the positions they are true at."""
        with self.engine.connect() as c:
            if c.dialect.name == "postgresql":  # one snapshot for both reads
                c.execution_options(isolation_level="REPEATABLE READ")
            rows = [dict(r) for r in c.execute(sa.select(city_conflicts).where(city_conflicts.c.district == district).order_by(city_conflicts.c.paid_at, city_conflicts.c.expense_id)).mappings()]
            return rows, self.positions(c)

    def manifest(self) -> dict[str, Any]:
        """Each district's stream position and chain head: what a city snapshot is the union at."""
        with self.engine.connect() as c:
            rows = [dict(r) for r in c.execute(sa.select(city_heads).order_by(city_heads.c.district)).mappings()]
        return {"districts": rows, "rules": [RULE_CAP, RULE_RECEIPT]}

    def close(self) -> None:
        self.engine.dispose()

    def last_sequence(self, district: str) -> int | None:
        """The last JetStream stream sequence of ``district`` the view applied, if any."""
        with self.positions_store.begin() as tx:
            row = tx.execute(sa.select(city_sequences.c.sequence).where(city_sequences.c.district == district)).first()
        return None if row is None else int(row[0])

    async def _fetch_missing(self, district: str, sample: Any, seqs: list[int]) -> dict[int, bytes]:
        """The messages between the last sequence applied and this batch's that the batch lacks,
        read from the district's stream by sequence. A message the server sent just as a pull
        request expired comes back only after the ack wait; rather than hold every later message
        of the district until then, the view reads it from the stream (the source of truth) and
        applies the batch in order; the late redelivery is then a repeat."""
        last = await asyncio.to_thread(self.last_sequence, district)
        if last is None or not seqs:
            return {}
        have = set(seqs)
        wanted = [q for q in range(last + 1, max(seqs)) if q not in have]
        if not wanted or len(wanted) > MAX_GAP_FETCH:
            return {}
        js = sample._client.jetstream()  # noqa: SLF001 - the connection the message came on
        found: dict[int, bytes] = {}
        for q in wanted:
            try:
                found[q] = (await js.get_msg(self.districts[district].stream, q)).data
            except Exception:  # noqa: BLE001 - not there (yet): the batch waits for the redelivery
                log.info("city view: %s stream sequence %s could not be read; waiting for its redelivery", district, q)
                break
        return found

    # -- subscribing --------------------------------------------------------------------------
    def attach(self, broker: Any, kind: str, districts: Iterable[District], *, name: str = "city", batch_size: int | None = None) -> None:
        """Subscribe the view on ``broker`` to every district's stream. NATS: a durable pull
        consumer per district stream from its first message, up to ``batch_size`` messages
        (``LEDGER_CITY_BATCH_SIZE``) at a time in one transaction, acknowledged after it, never
        more than that many unacknowledged; Kafka: the district's topic in consumer group
        ``name``, the position kept per district and recipient key (Kafka orders per partition,
        i.e. per key)."""
        from faststream import AckPolicy

        batch = max(1, batch_size or CitySettings().batch_size)
        for d in districts:
            self.districts.setdefault(d.code, d)

            def handler(code: str, per_key: bool) -> Any:
                async def consume(body: Any) -> None:
                    await asyncio.to_thread(self.process, code, body, per_key=per_key)

                consume.__name__ = f"city_{code}"
                return consume

            def batch_handler(code: str) -> Any:
                from faststream import Context

                async def consume_batch(bodies: list[Any], message: Any = Context("message")) -> None:
                    raw = list(message.raw_message)
                    ordered = sorted(zip(raw, bodies), key=lambda rb: rb[0].metadata.sequence.stream)
                    seqs = [r.metadata.sequence.stream for r, _ in ordered]
                    missing = await self._fetch_missing(code, raw[0], seqs) if raw else {}
                    items = sorted([(q, b) for q, (_, b) in zip(seqs, ordered)] + list(missing.items()), key=lambda qb: qb[0])
                    try:
                        done = len(await asyncio.to_thread(self.process_batch, code, [b for _, b in items], [q for q, _ in items]))
                    except BaseException:
                        for r, _ in ordered:
                            await r.nak()
                        raise
                    applied = {q for q, _ in items[:done]}
                    for r, _ in ordered:
                        if r.metadata.sequence.stream in applied:
                            await r.ack()
                        else:  # after a gap the stream could not fill: again once the missing ones are in
                            await r.nak(delay=GAP_RETRY_S)

                consume_batch.__name__ = f"city_{code}"
                return consume_batch

            if kind == "nats":
                from faststream.nats import ConsumerConfig, DeliverPolicy, JStream, PullSub

                many = batch > 1
                broker.subscriber(
                    f"{d.subject_prefix}.>",
                    stream=JStream(d.stream, declare=False),
                    durable=f"{name}_{d.code}",
                    pull_sub=PullSub(batch_size=batch, timeout=BATCH_WAIT_S, batch=True) if many else PullSub(batch_size=1, timeout=1.0),
                    deliver_policy=DeliverPolicy.ALL,
                    config=ConsumerConfig(max_ack_pending=batch, ack_wait=BATCH_ACK_WAIT_S if many else ACK_WAIT_S),
                    ack_policy=AckPolicy.MANUAL if many else AckPolicy.NACK_ON_ERROR,
                )(batch_handler(d.code) if many else handler(d.code, False))
            elif kind == "kafka":
                broker.subscriber(d.subject_prefix, group_id=name, auto_offset_reset="earliest", ack_policy=AckPolicy.ACK)(handler(d.code, True))
            else:
                raise ValueError(f"the city view runs on NATS JetStream or Kafka, not {kind!r}")


class DistrictCityIndex:
    """The city view as district ``district``'s decisions read it (``commands.city.CityIndex``):
    a receipt aided in another district, the person's city-scheme usage per district; each answer
    with the positions it is true at. A view that cannot be read raises
    ``commands.city.CityUnavailable`` (the decision goes on without it and records so)."""

    def __init__(self, url: str, district: str):
        self.url, self.district = url, district
        self._view: CityView | None = None
        self._lock = threading.Lock()

    def view(self) -> CityView:
        with self._lock:
            if self._view is None:
                self._view = CityView(self.url)
            return self._view

    def receipt(self, facility_code: str | None, invoice_no: str) -> ReceiptAnswer:
        return self._read(lambda v: v.receipt(facility_code, invoice_no, asking=self.district))

    def usage(self, recipient_key: str, years: Iterable[int]) -> Any:
        from commands.city import UsageRead

        used, positions = self._read(lambda v: v.usage_by_bucket(recipient_key, years))
        return UsageRead(used, positions)

    def conflicts_for(self, district: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The receipts ``district`` paid second, for its clearing run (R-CLR-1(b); the port
        ``commands.clearing_runs.CityConflictReads``)."""
        return self._read(lambda v: v.conflicts_for(district))

    def usage_overlaps_for(self, district: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The city-scheme usage of the persons aided in ``district`` and elsewhere, for its
        clearing run's cap check (R-CAP-4, R-CLR-1(e); the port ``commands.clearing_runs.CityUsageReads``)."""
        return self._read(lambda v: v.usage_overlaps_for(district))

    def _read(self, read: Any) -> Any:
        from commands.city import CityUnavailable

        for attempt in (1, 2):  # once more after a moment: a busy server (no free connection) passes
            try:
                return read(self.view())
            except sa.exc.SQLAlchemyError as exc:
                if attempt == 2:
                    raise CityUnavailable(f"the city view at {self.url.split('@')[-1]} cannot be read ({type(exc).__name__})") from exc
                time.sleep(0.05)

    def close(self) -> None:
        if self._view is not None:
            self._view.close()


def _add_bucket_columns(engine: sa.Engine) -> None:
    """A city view created before the cap bucket was kept gets its columns (R-CAP-2), and the time
    of the first decision (R-CAP-4)."""
    add_missing_columns(engine, "city_expenses", (("cap_year", "INTEGER"), ("kind", "VARCHAR(20)"), ("decided_us", "BIGINT")))


class _conn:
    def __init__(self, engine: sa.Engine, conn: sa.Connection | None):
        self.engine, self.given, self.own = engine, conn, None

    def __enter__(self) -> sa.Connection:
        if self.given is not None:
            return self.given
        self.own = self.engine.connect()
        return self.own

    def __exit__(self, *exc: Any) -> None:
        if self.own is not None:
            self.own.close()


async def run_city_view(view: CityView, url: str, districts: Iterable[District], *, stop: threading.Event | None = None, name: str = "city", batch_size: int | None = None) -> None:
    """Follow every district's JetStream stream into ``view`` until ``stop`` is set (the district
    streams are created here if no relay made them yet); ``batch_size``: see :meth:`CityView.attach`."""
    from faststream.nats import NatsBroker

    from infra.relay import ensure_stream

    stop = stop or threading.Event()
    districts = list(districts)
    broker = NatsBroker(url, name=f"ledger-{name}", connect_timeout=2, reconnect_time_wait=0.5, max_reconnect_attempts=-1, log_level=logging.DEBUG)
    view.attach(broker, "nats", districts, name=name, batch_size=batch_size)
    async with broker:
        await broker.connect()
        for d in districts:
            await ensure_stream(broker, d.stream, [f"{d.subject_prefix}.>"])
        await broker.start()
        while not stop.is_set():
            await asyncio.sleep(0.05)


def city_snapshot(districts: Iterable[District], out: Any, *, valid: str | None = None, known_at: str | None = None, view: CityView | None = None, formats: Iterable[str] = ("json",)) -> dict[str, Any]:
    """The city (V, T) snapshot: every district's own snapshot at the same (V, T) (ADR 0010), each
    taken by ``ledger --district X snapshot`` in a process of its own into ``out/<code>/``, and one
    manifest ``out/city.manifest.json`` listing each district's store position, chain head, files
    and row count, their sum, and the city view's positions when a view is given (ADR 0020)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for d in districts:
        folder = out / d.code
        args = [sys.executable, "-c", "from infra.cli import main; main()", "--district", d.code, "snapshot", "--out", str(folder)]
        for f in formats:
            args += ["--format", f]
        if valid:
            args += ["--valid", valid]
        if known_at:
            args += ["--known-at", known_at]
        done = subprocess.run(args, env={**os.environ}, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"district {d.code}: snapshot failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:] or ''}")
        (manifest_file,) = sorted(folder.glob("*.manifest.json"))
        m = json.loads(manifest_file.read_text(encoding="utf-8"))
        entries.append({"district": d.code, "manifest": str(manifest_file.relative_to(out)), **{k: m.get(k) for k in ("valid", "known_at", "store_position", "chain_head", "recipients", "rows", "files", "totals")}})
    valids = {e["valid"] for e in entries}
    manifest = {
        "valid": valids.pop() if len(valids) == 1 else sorted(valids),
        "known_at": known_at,
        "districts": entries,
        "rows": sum(int(e["rows"] or 0) for e in entries),
        "city_view_positions": view.positions() if view is not None else None,
    }
    (out / "city.manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True), encoding="utf-8")
    return manifest
