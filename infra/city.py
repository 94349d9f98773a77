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
rolled back is applied again.

Every answer that a decision may depend on carries the positions it was read at
(:meth:`CityView.positions`), so an explanation can record "as of the city view at changning
412, xuhui 380".
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from infra.contract import messages as pm
from infra.contract.consumer import Deduplicator, Outcome, SqlPositions
from infra.districts import District
from ledger.policy.packs import SHANGHAI_MEDICAL_AID
from ledger.values import receipt_identity

log = logging.getLogger("ledger.city")

ZERO = Decimal("0.00")
RULE_RECEIPT = "R-CAP-4, R-CLR-1(b) [002 4.5; 000 第七条]"
RULE_CAP = "R-CAP-4 [001]"
#: How long JetStream waits for the view's ack before redelivering (a view killed mid-message is
#: redelivered that message after this; the repeat check makes a redelivery harmless).
ACK_WAIT_S = 10

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

    def apply(self, district: str, m: pm.Envelope, conn: sa.Connection) -> None:
        if isinstance(m, pm.ChainCheckpointSealed):
            self._head(conn, district, m, checkpoint=m)
            return
        if isinstance(m, pm.ReplayCompleted):
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
            }
            if conn.execute(sa.select(city_expenses.c.expense_id).where(city_expenses.c.district == district, city_expenses.c.expense_id == p.expense_id)).first() is None:
                conn.execute(city_expenses.insert().values(**row))
        elif isinstance(m, pm.AidDecided):
            for d in m.payload.decisions:
                self._due(conn, district, d.expense_id, d.by_scheme)
        elif isinstance(m, pm.AidReassessed):
            for r in m.payload.results:
                self._due(conn, district, r.expense_id, r.by_scheme)
        elif isinstance(m, pm.AidPaid):
            for p in m.payload.payments:
                for fund, amount in p.by_fund.items():
                    self._add_fund(conn, district, fund, Decimal(amount))
                self._paid(conn, district, p.expense_id, m)
        self._head(conn, district, m)

    def _due(self, conn: sa.Connection, district: str, expense_id: str, by_scheme: dict[str, str]) -> None:
        # R-CAP-2/R-CAP-4 [001]: the city scheme's aid due for the expense, as the district now knows it.
        due = Decimal(by_scheme.get(SHANGHAI_MEDICAL_AID, "0.00"))
        conn.execute(city_expenses.update().where(city_expenses.c.district == district, city_expenses.c.expense_id == expense_id).values(city_due=str(due)))

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

    def _head(self, conn: sa.Connection, district: str, m: pm.Envelope, checkpoint: pm.ChainCheckpointSealed | None = None) -> None:
        t = city_heads
        row = conn.execute(sa.select(t).where(t.c.district == district)).mappings().first()
        values = dict(row) if row else {"district": district, "position": 0, "checkpoint": 0, "checkpoint_position": 0, "chain_head": "", "recorded_at": ""}
        values["position"] = max(int(values["position"]), m.position)
        values["recorded_at"] = max(values["recorded_at"], m.recorded_at.isoformat())
        if checkpoint is not None and checkpoint.payload.number > values["checkpoint"]:
            values.update(checkpoint=checkpoint.payload.number, checkpoint_position=checkpoint.position, chain_head=checkpoint.payload.hash)
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

    def fund_totals(self) -> dict[tuple[str, str], Decimal]:
        """Aid paid per (district, fund)."""
        with self.engine.connect() as c:
            return {(r.district, r.fund): Decimal(r.amount) for r in c.execute(sa.select(city_funds))}

    def conflicts(self) -> list[dict[str, Any]]:
        """Receipts paid in two districts: each row names the district that paid second (it opens
        the clearing case, R-CLR-1(b)) and the first."""
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(sa.select(city_conflicts).order_by(city_conflicts.c.paid_at)).mappings()]

    def manifest(self) -> dict[str, Any]:
        """Each district's stream position and chain head: what a city snapshot is the union at."""
        with self.engine.connect() as c:
            rows = [dict(r) for r in c.execute(sa.select(city_heads).order_by(city_heads.c.district)).mappings()]
        return {"districts": rows, "rules": [RULE_CAP, RULE_RECEIPT]}

    def close(self) -> None:
        self.engine.dispose()

    # -- subscribing --------------------------------------------------------------------------
    def attach(self, broker: Any, kind: str, districts: Iterable[District], *, name: str = "city") -> None:
        """Subscribe the view on ``broker`` to every district's stream. NATS: a durable pull
        consumer per district stream from its first message, one message at a time, acknowledged
        after the transaction; Kafka: the district's topic in consumer group ``name``, the
        position kept per district and recipient key (Kafka orders per partition, i.e. per key)."""
        from faststream import AckPolicy

        for d in districts:
            self.districts.setdefault(d.code, d)

            def handler(code: str, per_key: bool) -> Any:
                async def consume(body: Any) -> None:
                    await asyncio.to_thread(self.process, code, body, per_key=per_key)

                consume.__name__ = f"city_{code}"
                return consume

            if kind == "nats":
                from faststream.nats import ConsumerConfig, DeliverPolicy, JStream, PullSub

                broker.subscriber(
                    f"{d.subject_prefix}.>",
                    stream=JStream(d.stream, declare=False),
                    durable=f"{name}_{d.code}",
                    pull_sub=PullSub(batch_size=1, timeout=1.0),
                    deliver_policy=DeliverPolicy.ALL,
                    config=ConsumerConfig(max_ack_pending=1, ack_wait=ACK_WAIT_S),
                    ack_policy=AckPolicy.NACK_ON_ERROR,
                )(handler(d.code, False))
            elif kind == "kafka":
                broker.subscriber(d.subject_prefix, group_id=name, auto_offset_reset="earliest", ack_policy=AckPolicy.ACK)(handler(d.code, True))
            else:
                raise ValueError(f"the city view runs on NATS JetStream or Kafka, not {kind!r}")


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


async def run_city_view(view: CityView, url: str, districts: Iterable[District], *, stop: threading.Event | None = None, name: str = "city") -> None:
    """Follow every district's JetStream stream into ``view`` until ``stop`` is set (the district
    streams are created here if no relay made them yet)."""
    from faststream.nats import NatsBroker

    from infra.relay import ensure_stream

    stop = stop or threading.Event()
    districts = list(districts)
    broker = NatsBroker(url, name=f"ledger-{name}", connect_timeout=2, reconnect_time_wait=0.5, max_reconnect_attempts=-1, log_level=logging.DEBUG)
    view.attach(broker, "nats", districts, name=name)
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
