"""The tamper-evident chain (ADR 0016).

Every stored event is chained, in notification order, by

    hash(p) = SHA-256("ledger-chain-v1" ‖ hash(previous) ‖ len‖position ‖ len‖topic
                      ‖ len‖originator id ‖ len‖version ‖ len‖state bytes)

over exactly what the store holds (the state bytes as stored: personal fields are ciphertext, so
erasing a key never breaks the chain).

**In the saving transaction.** The application's recorder is one of this module's subclasses of
the library's recorders (selected by the wiring: ``APPLICATION_RECORDER_TOPIC``, or
:class:`ChainedPOPOFactory` in memory). The method that inserts the events inside the recorder's
transaction reads the chain head under the writers' lock (PostgreSQL: the library's ``EXCLUSIVE``
lock on the events table; SQLite: its one write lock, held since the events were inserted) and
inserts the links in the same transaction. An event without a link can therefore only have been
written behind the application's back: ``ledger verify`` reports it, naming its position.

**Seals.** The last link of every save, and every link that carries a checkpoint, is sealed: an
HMAC under a key derived from the master data key over (position, hash, seq, the number of the
checkpoint in force). Links re-computed by anyone without the key end unsealed, and a save's seal
names the checkpoint it followed, so a deleted checkpoint is missed by the next seal.

**Checkpoints** (``chain_checkpoints``) form a numbered sequence 1, 2, 3, … sealed every
:data:`CHECKPOINT_EVERY` events (inside the save) and on demand (``ledger chain``); each signs its
number, position, hash, time, kind and the previous checkpoint's signature, so a deleted,
renumbered or reordered checkpoint is a gap ``ledger verify`` names. The relay publishes each one
(``chain.checkpoint_sealed``) and ``ledger chain --head`` prints the last one for keeping outside
the database: the two things an attacker holding the data key and write access cannot rewrite.

Stores chained by the earlier chainer (links written after the save, unnumbered checkpoints) keep
verifying: on first opening, their tables gain the new columns, the events the earlier chainer had
not reached yet are chained once, and the head is sealed (a checkpoint of kind ``upgrade``).

Positions are notification ids: they can have gaps (ADR 0002), so a position is never a count.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterator, NamedTuple, Protocol, Sequence

import psycopg
from eventsourcing.persistence import IntegrityError, InterfaceError
from eventsourcing.persistence import OperationalError as StoreOperationalError
from eventsourcing.persistence import StoredEvent
from eventsourcing.popo import POPOApplicationRecorder, POPOFactory
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteFactory
from eventsourcing.utils import get_topic, resolve_topic, retry
from psycopg.pq import TransactionStatus
from psycopg.sql import SQL, Identifier

from ledger.values import CST

log = logging.getLogger("ledger.integrity")
_IDLE = TransactionStatus.IDLE

DOMAIN = b"ledger-chain-v1"
GENESIS = bytes(32)
CHECKPOINT_EVERY = 1000
PAGE = 1000
BLOCK = 1024  # bytes of state per block digest (to locate a change outside JSON fields)
SHORT = 12  # hex characters kept per field digest

#: Kinds of checkpoint: inside a save every CHECKPOINT_EVERY events, on demand (``ledger
#: chain``), and the one sealed when a store chained by the earlier chainer is first opened.
PERIODIC, ON_DEMAND, UPGRADE = "periodic", "on_demand", "upgrade"


class ChainLink(NamedTuple):
    position: int
    hash: str


class ChainNotInstalled(RuntimeError):
    """The chaining recorder has no sealer: events are never stored unchained."""


class ReadChanged(IntegrityError):
    """An aggregate that the saving command read (and does not save) was changed by another
    writer since: nothing of this save is stored, and the command runs again (ADR 0021)."""


def _changed_message(ids: Sequence[Any]) -> str:
    return f"aggregate(s) {', '.join(str(i) for i in ids)} changed since the command read them"


# ---------------------------------------------------------------------------------------------
# Hashing


def _part(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def link_hash(previous: bytes, position: int, topic: str, originator_id: Any, version: int, state: bytes) -> bytes:
    """One link of the chain: the event's stored content and the previous link."""
    h = hashlib.sha256(DOMAIN)
    h.update(previous)
    for piece in (str(position).encode(), topic.encode("utf-8"), str(originator_id).encode(), str(version).encode(), bytes(state)):
        h.update(_part(piece))
    return h.digest()


def _short(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:SHORT]


def field_digests(topic: str, originator_id: Any, version: int, state: bytes) -> str:
    """A compact record of each part of the event, kept beside its link for diagnosis only (the
    link hash is what proves integrity): a short digest of the topic and originator id, the
    version, the state's length, a digest per top-level field of the JSON state, and a digest per
    :data:`BLOCK` bytes of state (for a state that is not JSON, or no longer parses)."""
    state = bytes(state)
    return json.dumps(
        {
            "t": _short(topic.encode("utf-8")),
            "o": _short(str(originator_id).encode()),
            "v": version,
            "n": len(state),
            "f": {k: _short(state[a:b]) for k, a, b in _json_fields(state)},
            "b": [_short(state[i : i + BLOCK]) for i in range(0, max(len(state), 1), BLOCK)],
        },
        separators=(",", ":"),
    )


def _parse_digests(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def explain_difference(chained_digests: str | None, topic: str, originator_id: Any, version: int, state: bytes) -> list[str]:
    """What differs between a stored event and what was chained: which part, which field, which bytes."""
    then = _parse_digests(chained_digests)
    if not then:
        return ["no part digests were kept for this link: only the hash differs"]
    state = bytes(state)
    now = _parse_digests(field_digests(topic, originator_id, version, state))
    out = []
    if then.get("t") != now["t"]:
        out.append(f"topic differs from what was chained (now {topic!r})")
    if then.get("o") != now["o"]:
        out.append(f"originator id differs from what was chained (now {originator_id})")
    if then.get("v") != now["v"]:
        out.append(f"originator version differs (chained {then.get('v')}, now {version})")
    if then.get("n") != now["n"]:
        out.append(f"state length differs (chained {then.get('n')} bytes, now {now['n']})")
    spans = {k: (a, b) for k, a, b in _json_fields(state)}
    old_fields, new_fields = then.get("f") or {}, now["f"]
    changed = [k for k in old_fields if k in new_fields and old_fields[k] != new_fields[k]]
    for k in changed:
        a, b = spans[k]
        out.append(f"state field {k!r} (bytes {a}–{b - 1}) differs from what was chained; now {state[a:b][:120]!r}")
    for k in sorted(set(old_fields) - set(new_fields)):
        out.append(f"state field {k!r} is missing (it was chained)")
    for k in sorted(set(new_fields) - set(old_fields)):
        out.append(f"state field {k!r} was added after chaining")
    if not changed and old_fields.keys() == new_fields.keys() or not new_fields:
        for i, (a, b) in enumerate(zip(then.get("b") or [], now["b"])):
            if a != b:
                lo, hi = i * BLOCK, min((i + 1) * BLOCK, len(state))
                out.append(f"state bytes {lo}–{hi - 1} differ from what was chained; now {state[lo:hi][:120]!r}")
                break
    if not out:
        out.append("every part matches its chained digest, but the link hash does not: the chain row itself was altered")
    return out


_DECODER = json.JSONDecoder()


def _json_fields(state: bytes) -> list[tuple[str, int, int]]:
    """The top-level keys of a JSON object state with the byte span of each ``"key": value``
    (empty when the state is not, or no longer, a JSON object)."""
    if state[:1] != b"{":  # not JSON (a compressed state): the block digests only
        return []
    try:
        text = state.decode("utf-8")
    except UnicodeDecodeError:
        return []
    decoder = _DECODER
    ascii_only = state.isascii()  # then a character offset is the byte offset
    out: list[tuple[str, int, int]] = []
    i = 1
    try:
        while i < len(text) and text[i] != "}":
            key, j = decoder.raw_decode(text, i)
            j = text.index(":", j) + 1
            _, end = decoder.raw_decode(text, j)
            # byte offsets, not character offsets (names and streets are not ASCII)
            if ascii_only:
                out.append((str(key), i, end))
            else:
                out.append((str(key), len(text[:i].encode("utf-8")), len(text[:end].encode("utf-8"))))
            i = end + 1 if end < len(text) and text[end] == "," else end
    except (ValueError, IndexError):
        pass
    return out


# ---------------------------------------------------------------------------------------------
# Links, checkpoints and their seals


class Row(NamedTuple):
    """One link: ``seal`` and ``checkpoint`` (the number of the checkpoint in force) are set on
    the last link of each save and on every link that carries a checkpoint."""

    position: int
    hash: str
    seq: int
    digests: str | None
    seal: str | None = None
    checkpoint: int | None = None


class Checkpoint(NamedTuple):
    """A signed checkpoint; ``number`` is None for one written by the earlier chainer."""

    position: int
    hash: str
    recorded_at: str
    seal: str
    number: int | None = None
    kind: str | None = None
    previous: str | None = None


class _Stored(NamedTuple):
    """A stored event with its position (the fields of a notification)."""

    id: int
    originator_id: Any
    originator_version: int
    topic: str
    state: bytes


def _uuid(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return value  # a store keyed by text ids


def _positioned(ids: Sequence[int] | None, stored_events: Sequence[StoredEvent]) -> list[_Stored]:
    if ids is None or len(ids) != len(stored_events):
        raise ChainNotInstalled("the recorder returned no notification ids: the events cannot be chained")
    return [_Stored(int(i), _uuid(s.originator_id), s.originator_version, s.topic, bytes(s.state)) for i, s in zip(ids, stored_events)]


def legacy_seal_text(position: int, hash_hex: str, recorded_at: str) -> str:
    """What the earlier chainer's (unnumbered) checkpoints signed."""
    return f"{position}|{hash_hex}|{recorded_at}"


def checkpoint_seal_text(number: int, position: int, hash_hex: str, recorded_at: str, kind: str, previous: str) -> str:
    return f"ledger-checkpoint-v2|{number}|{position}|{hash_hex}|{recorded_at}|{kind}|{previous}"


def link_seal_text(position: int, hash_hex: str, seq: int, checkpoint: int) -> str:
    return f"ledger-link-v2|{position}|{hash_hex}|{seq}|{checkpoint}"


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a, b)


@dataclass
class Sealer:
    """Computes links and seals them: the one place that knows the seal key (through ``seal``)."""

    seal: Callable[[str], str]
    checkpoint_every: int = CHECKPOINT_EVERY

    def sealed(self, row: Row, checkpoint: int) -> Row:
        return row._replace(seal=self.seal(link_seal_text(row.position, row.hash, row.seq, checkpoint)), checkpoint=checkpoint)

    def checkpoint(self, number: int, position: int, hash_hex: str, kind: str, previous: str) -> Checkpoint:
        at = datetime.now(CST).isoformat()  # people's clock, +08:00
        return Checkpoint(position, hash_hex, at, self.seal(checkpoint_seal_text(number, position, hash_hex, at, kind, previous)), number, kind, previous)

    @staticmethod
    def in_force(head: Row | None, last: Checkpoint | None) -> int:
        """The number of the last checkpoint: the store's, or the one the head's seal names if
        that is higher (a checkpoint was deleted: numbering goes on past it, leaving the gap)."""
        return max((last.number or 0) if last else 0, (head.checkpoint or 0) if head else 0)

    def link(self, head: Row | None, last: Checkpoint | None, events: Sequence[Any]) -> tuple[list[Row], list[Checkpoint]]:
        """The links (and periodic checkpoints) for ``events``, stored right after ``head``."""
        prev, seq = (bytes.fromhex(head.hash), head.seq) if head else (GENESIS, 0)
        number = self.in_force(head, last)
        previous = last.seal if last else ""
        rows: list[Row] = []
        checkpoints: list[Checkpoint] = []
        for n in events:
            prev = link_hash(prev, n.id, n.topic, n.originator_id, n.originator_version, n.state)
            seq += 1
            row = Row(n.id, prev.hex(), seq, field_digests(n.topic, n.originator_id, n.originator_version, n.state))
            if seq % self.checkpoint_every == 0:
                number += 1
                cp = self.checkpoint(number, n.id, row.hash, PERIODIC, previous)
                checkpoints.append(cp)
                previous = cp.seal
                row = self.sealed(row, number)
            rows.append(row)
        if rows and rows[-1].seal is None:
            rows[-1] = self.sealed(rows[-1], number)
        return rows, checkpoints


# ---------------------------------------------------------------------------------------------
# Chaining recorders: SQL


_ROW = "position, hash, seq, digests, seal, checkpoint"
_CHECKPOINT = "position, hash, recorded_at, seal, number, kind, previous"
#: Columns each table has in this version (older stores lack the later ones: :meth:`migrate`).
_COLUMNS = {
    "event_chain": ("position", "hash", "seq", "digests", "seal", "checkpoint"),
    "chain_checkpoints": ("position", "hash", "recorded_at", "seal", "number", "kind", "previous"),
}


#: PostgreSQL: the chain head (the last link and the last checkpoint) in one row, in one statement.
_HEAD = (
    "SELECT l.position, l.hash, l.seq, l.digests, l.seal, l.checkpoint, "
    + ", ".join(f"k.{c} AS k_{c}" for c in _COLUMNS["chain_checkpoints"])
    + " FROM (SELECT 1) AS one"
    " LEFT JOIN (SELECT * FROM event_chain ORDER BY position DESC LIMIT 1) AS l ON true"
    " LEFT JOIN (SELECT * FROM chain_checkpoints ORDER BY position DESC LIMIT 1) AS k ON true"
)
#: PostgreSQL: a save's links, however many, in one statement (one array per column, sent in
#: binary: the text form of an array of JSON digests costs more to quote than the rest of the save).
_INSERT_LINKS = (
    f"INSERT INTO event_chain ({_ROW}) "
    "SELECT * FROM unnest(%b::bigint[], %b::text[], %b::bigint[], %b::text[], %b::text[], %b::bigint[])"
)


#: PostgreSQL: up to this many events (and links) are inserted as one VALUES list of plain
#: parameters; more (a group commit's) as arrays in binary.
VALUES_MAX = 32


def _insert_links_values(n: int, _cache: dict[int, str] = {}) -> str:  # noqa: B006 - a cache
    statement = _cache.get(n)
    if statement is None:
        statement = _cache[n] = f"INSERT INTO event_chain ({_ROW}) VALUES " + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * n)
    return statement


def _composed(query: Any) -> Any:
    """A composed ``SQL`` statement as the bytes it stands for (anything else as it is)."""
    return query.as_bytes(None) if hasattr(query, "as_bytes") else query


def _row(r: Any) -> Row:
    return Row(int(r["position"]), r["hash"], int(r["seq"]), r["digests"], r["seal"], None if r["checkpoint"] is None else int(r["checkpoint"]))


def _checkpoint(r: Any) -> Checkpoint:
    return Checkpoint(int(r["position"]), r["hash"], r["recorded_at"], r["seal"], None if r["number"] is None else int(r["number"]), r["kind"], r["previous"])


class _SqlChain:
    """The chain's SQL, shared by the SQLite and PostgreSQL recorders. ``event_chain`` and
    ``chain_checkpoints`` live in the event store's own database."""

    datastore: Any
    chain_sealer: Sealer | None = None
    _postgres = False

    def _chain_init(self, events_table: str, position: str) -> None:
        self.chain_sealer = None
        self._p = "%s" if self._postgres else "?"
        self._events_table = events_table
        self._select_events_after = (
            f"SELECT {position} AS id, originator_id, originator_version, topic, state FROM {events_table} "
            f"WHERE {position} > {self._p} ORDER BY {position} LIMIT {self._p}"
        )

    # -- inside a transaction ---------------------------------------------------------------
    #: SQLite: (id, version) pairs per statement (its bound-variable limit).
    CHANGED_CHUNK = 400

    def _changed(self, c: Any, unchanged: dict[Any, int]) -> list[Any]:
        """Which ids of ``unchanged`` (read by a command, not saved by it: id -> the version read,
        0 when it found none) have a later event, in the transaction of ``c``."""
        if self._postgres:
            c.execute(*self._changed_query(unchanged))
            return [r["originator_id"] for r in c.fetchall()]
        out: list[Any] = []
        pairs = [(k.hex if isinstance(k, uuid.UUID) else str(k), int(v)) for k, v in unchanged.items()]  # SQLite keeps a uuid's hex digits
        for n in range(0, len(pairs), self.CHANGED_CHUNK):
            chunk = pairs[n : n + self.CHANGED_CHUNK]
            where = " OR ".join(["(originator_id = ? AND originator_version > ?)"] * len(chunk))
            c.execute(f"SELECT DISTINCT originator_id FROM {self._events_table} WHERE {where}", [x for pair in chunk for x in pair])
            out += [r["originator_id"] for r in c.fetchall()]
        return out

    def _changed_query(self, unchanged: dict[Any, int]) -> tuple[str, list[Any]]:
        """PostgreSQL: one statement however many pairs (two arrays)."""
        kind = getattr(self.datastore, "originator_id_type", "uuid")
        return (
            f"SELECT DISTINCT e.originator_id FROM {self._events_table} AS e "
            f"JOIN unnest(%b::{kind}[], %b::bigint[]) AS x(id, v) ON e.originator_id = x.id AND e.originator_version > x.v",
            [list(unchanged), [int(v) for v in unchanged.values()]],
        )

    def changed_since(self, unchanged: dict[Any, int]) -> list[Any]:
        """The ids in ``unchanged`` (id -> version read) that have events after that version."""
        if not unchanged:
            return []
        with self.datastore.transaction(commit=False) as c:
            return self._changed(c, unchanged)

    def _chain_head(self, c: Any) -> tuple[Row | None, Checkpoint | None]:
        c.execute(f"SELECT {_ROW} FROM event_chain ORDER BY position DESC LIMIT 1")
        r = c.fetchone()
        c.execute(f"SELECT {_CHECKPOINT} FROM chain_checkpoints ORDER BY position DESC LIMIT 1")
        k = c.fetchone()
        return (_row(r) if r else None), (_checkpoint(k) if k else None)

    def _chain_write(self, c: Any, rows: list[Row], checkpoints: list[Checkpoint]) -> None:
        p = self._p
        if rows:
            c.executemany(f"INSERT INTO event_chain ({_ROW}) VALUES ({p}, {p}, {p}, {p}, {p}, {p})", [tuple(r) for r in rows])
        if checkpoints:
            c.executemany(f"INSERT INTO chain_checkpoints ({_CHECKPOINT}) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})", [tuple(k) for k in checkpoints])

    def _chain_reseal(self, c: Any, row: Row) -> None:
        p = self._p
        c.execute(f"UPDATE event_chain SET seal = {p}, checkpoint = {p} WHERE position = {p}", (row.seal, row.checkpoint, row.position))

    def _chain_events(self, c: Any, events: list[_Stored], head_read: tuple[Row | None, Checkpoint | None] | None = None) -> None:
        """Link ``events`` (just inserted by this transaction, which holds the writers' lock);
        ``head_read`` is the head as this transaction already read it under that lock."""
        sealer = self.chain_sealer
        if sealer is None:
            raise ChainNotInstalled("the integrity chain is not installed on this recorder (build the app with infra.wiring)")
        head, last = head_read if head_read is not None else self._chain_head(c)
        rows, checkpoints = sealer.link(head, last, events)
        self._chain_write(c, rows, checkpoints)

    def _chain_lock(self, c: Any) -> None:  # pragma: no cover - per backend
        raise NotImplementedError

    # -- own transactions -------------------------------------------------------------------
    def _chain_transaction(self, work: Callable[[Any], Any]) -> Any:
        """``work(cursor)`` in a write transaction holding the writers' lock; retried while
        SQLite reports the database busy (another process writing)."""
        for attempt in range(40):
            try:
                with self.datastore.transaction(commit=True) as c:
                    self._chain_lock(c)
                    return work(c)
            except StoreOperationalError:
                if attempt == 39:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")  # pragma: no cover

    def chain_seal_head(self, kind: str = ON_DEMAND) -> Checkpoint | None:
        """Seal a checkpoint at the head (unless the head has one); re-seal the head's link so
        that it names the new checkpoint. Returns the last checkpoint (None: nothing chained)."""
        sealer = self.chain_sealer
        if sealer is None:
            raise ChainNotInstalled("the integrity chain is not installed on this recorder")

        def work(c: Any) -> Checkpoint | None:
            head, last = self._chain_head(c)
            if head is None:
                return last
            if last is not None and last.position >= head.position:
                return last
            number = sealer.in_force(head, last) + 1
            cp = sealer.checkpoint(number, head.position, head.hash, kind, last.seal if last else "")
            self._chain_write(c, [], [cp])
            self._chain_reseal(c, sealer.sealed(head, number))
            return cp

        return self._chain_transaction(work)

    def _chain_columns(self, c: Any) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        if self._postgres:
            c.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name IN ('event_chain', 'chain_checkpoints')"
            )
            for r in c.fetchall():
                out.setdefault(r["table_name"], set()).add(r["column_name"])
        else:
            for table in _COLUMNS:
                c.execute(f"PRAGMA table_info({table})")
                cols = {r["name"] for r in c.fetchall()}
                if cols:
                    out[table] = cols
        return out

    def _chain_current(self, columns: dict[str, set[str]]) -> bool:
        return all(set(cols) <= columns.get(table, set()) for table, cols in _COLUMNS.items())

    def chain_install(self, sealer: Sealer) -> dict[str, Any]:
        """Bind the sealer; create the chain tables, or bring an earlier chainer's up to date (its
        columns, the events it had not chained yet, a sealed head). Returns what was done."""
        self.chain_sealer = sealer
        with self.datastore.transaction(commit=False) as c:
            if self._chain_current(self._chain_columns(c)):
                return {"created": False, "upgraded": False, "adopted": 0}
        return self._chain_transaction(lambda c: self._chain_migrate(c, sealer))

    def _chain_migrate(self, c: Any, sealer: Sealer) -> dict[str, Any]:
        columns = self._chain_columns(c)
        if self._chain_current(columns):
            return {"created": False, "upgraded": False, "adopted": 0}
        big = "BIGINT" if self._postgres else "INTEGER"
        created = "event_chain" not in columns
        upgraded = not created
        c.execute(
            f"CREATE TABLE IF NOT EXISTS event_chain (position {big} PRIMARY KEY, hash TEXT NOT NULL, seq {big} NOT NULL, "
            f"digests TEXT, seal TEXT, checkpoint {big})"
        )
        c.execute(
            f"CREATE TABLE IF NOT EXISTS chain_checkpoints (position {big} PRIMARY KEY, hash TEXT NOT NULL, recorded_at TEXT NOT NULL, "
            f"seal TEXT NOT NULL, number {big}, kind TEXT, previous TEXT)"
        )
        for table, cols in _COLUMNS.items():
            for col in cols:
                if table in columns and col not in columns[table]:
                    kind = big if col in ("checkpoint", "number") else "TEXT"
                    c.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")
        c.execute("CREATE UNIQUE INDEX IF NOT EXISTS chain_checkpoints_number ON chain_checkpoints (number)")
        adopted = self._chain_adopt(c, sealer)
        return {"created": created, "upgraded": upgraded, "adopted": adopted}

    def _chain_adopt(self, c: Any, sealer: Sealer) -> int:
        """Chain what the earlier chainer (or none) left unchained, and seal the head."""
        count = 0
        while True:
            head, last = self._chain_head(c)
            c.execute(self._select_events_after, (head.position if head else 0, PAGE))
            batch = [_Stored(int(e["id"]), _uuid(e["originator_id"]), int(e["originator_version"]), e["topic"], bytes(e["state"])) for e in c.fetchall()]
            if not batch:
                break
            rows, checkpoints = sealer.link(head, last, batch)
            self._chain_write(c, rows, checkpoints)
            count += len(batch)
        head, last = self._chain_head(c)
        if head is not None and (last is None or last.position < head.position):
            number = sealer.in_force(head, last) + 1
            cp = sealer.checkpoint(number, head.position, head.hash, UPGRADE, last.seal if last else "")
            self._chain_write(c, [], [cp])
            self._chain_reseal(c, sealer.sealed(head, number))
        elif head is not None and head.seal is None:
            self._chain_reseal(c, sealer.sealed(head, sealer.in_force(head, last)))
        if count:
            log.warning("integrity chain: %d events stored before this version chained them were chained now (up to position %s)", count, head.position if head else 0)
        return count

    # -- reading ----------------------------------------------------------------------------
    def chain_head(self) -> Row | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT {_ROW} FROM event_chain ORDER BY position DESC LIMIT 1")
            r = c.fetchone()
        return _row(r) if r else None

    def chain_rows(self, after: int, limit: int) -> list[Row]:
        p = self._p
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT {_ROW} FROM event_chain WHERE position > {p} ORDER BY position LIMIT {p}", (after, limit))
            return [_row(r) for r in c.fetchall()]

    def chain_at_or_before(self, position: int) -> Row | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT {_ROW} FROM event_chain WHERE position <= {self._p} ORDER BY position DESC LIMIT 1", (position,))
            r = c.fetchone()
        return _row(r) if r else None

    def chain_checkpoints(self) -> list[Checkpoint]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT {_CHECKPOINT} FROM chain_checkpoints ORDER BY position")
            return [_checkpoint(r) for r in c.fetchall()]

    def chain_last_checkpoint(self) -> Checkpoint | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT {_CHECKPOINT} FROM chain_checkpoints ORDER BY position DESC LIMIT 1")
            r = c.fetchone()
        return _checkpoint(r) if r else None

    def chain_checkpoints_after(self, number: int, up_to: int, limit: int = PAGE) -> list[Checkpoint]:
        """Numbered checkpoints after ``number`` at positions up to ``up_to`` (the relay's)."""
        p = self._p
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT {_CHECKPOINT} FROM chain_checkpoints WHERE number > {p} AND position <= {p} ORDER BY number LIMIT {p}",
                (number, up_to, limit),
            )
            return [_checkpoint(r) for r in c.fetchall()]


class ChainedSQLiteApplicationRecorder(_SqlChain, SQLiteApplicationRecorder):
    """The library's SQLite recorder, chaining each event in the transaction that inserts it."""

    def __init__(self, datastore: Any, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name)
        self._chain_init(self.events_table_name, "rowid")

    def _insert_events(self, c: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        unchanged = kwargs.get("unchanged")
        if unchanged and stored_events:  # under the write lock the INSERTs took
            changed = self._changed(c, unchanged)
            if changed:
                raise ReadChanged(_changed_message(changed))
        if stored_events:
            # The INSERTs above took SQLite's write lock: the head read now is the last one.
            self._chain_events(c, _positioned(ids, stored_events))
        return ids

    def _chain_lock(self, c: Any) -> None:
        # A write first (that changes nothing), so that SQLite's write lock is held before
        # anything is read.
        c.execute(f"UPDATE {self.events_table_name} SET topic = topic WHERE rowid < 0")


class ChainedPostgresApplicationRecorder(_SqlChain, PostgresApplicationRecorder):
    """The library's PostgreSQL recorder, chaining each event in the transaction that inserts it
    (after the library's ``LOCK TABLE … IN EXCLUSIVE MODE``, which serialises the writers)."""

    _postgres = True
    #: Send the library's ``NOTIFY`` on every insert (``LEDGER_POSTGRES_NOTIFY``, ADR 0021). Off
    #: unless set: nothing in the ledger LISTENs (readers poll the log), and a NOTIFY makes every
    #: commit take the server's notification-queue lock. ``install(..., notify=True)`` turns it on.
    notify = False

    def __init__(self, datastore: Any, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        if datastore.enable_db_functions:
            raise ChainNotInstalled("POSTGRES_ENABLE_DB_FUNCTIONS inserts events without this recorder's transaction (ADR 0002, 0016)")
        # The library's insert with the events' array sent in binary (the text form quotes every
        # field: measured 1.7 ms per 100 events, 0.17 in binary; ADR 0021), returning each row's
        # originator and version too.
        self.insert_events_statement = SQL(
            "INSERT INTO {schema}.{table} AS t (originator_id, originator_version, topic, state)"
            " SELECT originator_id, originator_version, topic, state FROM unnest(%b::{schema}.{stored_event_type}[])"
            " RETURNING notification_id, originator_id, originator_version"
        ).format(
            schema=Identifier(datastore.schema),
            table=Identifier(self.events_table_name),
            stored_event_type=Identifier(self.stored_event_type_name),
        ).as_bytes(None)
        # The writers' lock's statements as bytes, composed once: psycopg composes an ``SQL``
        # object (quoting each identifier) at every execute (issue 16).
        self.lock_table_statements = [_composed(q) for q in self.lock_table_statements]
        self._chain_init(f'"{datastore.schema}"."{self.events_table_name}"', "notification_id")
        self._head_reads = threading.local()
        self._select_latest: dict[str, Any] = {}
        self._values_statements: dict[int, bytes] = {}

    def _insert_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        if self.chain_sealer is None:  # refused before anything is written
            raise ChainNotInstalled("the integrity chain is not installed on this recorder (build the app with infra.wiring)")
        super()._insert_events(curs, stored_events, **kwargs)

    def _notify_channel(self, curs: Any) -> None:
        if self.notify:
            super()._notify_channel(curs)

    def _insert_stored_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        # The library's statements (the writers' lock, then the insert), then the chain head read
        # under that lock, on cursors of their own: all sent in the one pipeline that the
        # library syncs after the insert, so linking the events costs no round trip of its own
        # (ADR 0021). A refused insert aborts the reads with it.
        # The aggregates the command read and does not save (``unchanged``, ADR 0021) are checked
        # the same way: under the lock, in the same pipeline.
        self._head_reads.cursors = None
        if len(stored_events) > VALUES_MAX:
            super()._insert_stored_events(curs, stored_events, **kwargs)
        else:
            # A few events (a command's): the same insert as one VALUES list of plain parameters,
            # which psycopg adapts in C (an array of the composite type is adapted element by
            # element in Python: measured 134 µs for 3 events, 70 as VALUES; issue 16).
            self._lock_table(curs)
            self._notify_channel(curs)
            curs.execute(self._insert_values(len(stored_events)), [x for e in stored_events for x in (e.originator_id, e.originator_version, e.topic, e.state)])
        conn = curs.connection
        head = conn.cursor()
        head.execute(_HEAD, prepare=True)  # explicit columns: a migration of the chain tables cannot change its result
        changed = None
        unchanged = kwargs.get("unchanged")
        if unchanged:
            changed = conn.cursor()
            changed.execute(*self._changed_query(unchanged), prepare=False)
        self._head_reads.cursors = (head, changed)

    def _head_read(self) -> tuple[Row | None, Checkpoint | None] | None:
        cursors = getattr(self._head_reads, "cursors", None)
        self._head_reads.cursors = None
        if cursors is None:
            return None
        head, changed = cursors
        both = head.fetchone()
        head.close()
        if changed is not None:
            ids = [row["originator_id"] for row in changed.fetchall()]
            changed.close()
            if ids:
                raise ReadChanged(_changed_message(ids))
        assert both is not None
        k = {c: both[f"k_{c}"] for c in _COLUMNS["chain_checkpoints"]}
        return (_row(both) if both["position"] is not None else None), (_checkpoint(k) if k["position"] is not None else None)

    def _insert_values(self, n: int) -> bytes:
        """The events' insert for ``n`` events as one VALUES list (bytes, composed once per ``n``)."""
        statement = self._values_statements.get(n)
        if statement is None:
            statement = self._values_statements[n] = SQL(
                "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) VALUES "
                + ", ".join(["(%s, %s, %s, %b)"] * n)
                + " RETURNING notification_id, originator_id, originator_version"
            ).format(schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name)).as_bytes(None)
        return statement

    def _chain_write(self, c: Any, rows: list[Row], checkpoints: list[Checkpoint]) -> None:
        # The links in one statement however many (one round of the pipeline, not one per link):
        # a few as one VALUES list of plain parameters (adapted in C: 11 µs for 3 links, 86 as
        # six arrays), more as arrays in binary.
        if rows and len(rows) <= VALUES_MAX:
            c.execute(_insert_links_values(len(rows)), [x for r in rows for x in r])
        elif rows:
            c.execute(_INSERT_LINKS, [list(col) for col in zip(*rows)], prepare=False)
        super()._chain_write(c, [], checkpoints)

    @retry((InterfaceError, StoreOperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """The library's transaction in two round trips instead of five (issue 16). The library
        wraps its pipeline in psycopg's transaction block, which syncs the ``BEGIN`` on its own,
        syncs again before its ``COMMIT``, then the ``COMMIT``, then once more when the pipeline
        ends. Here ``BEGIN`` and ``COMMIT`` are plain statements of the pipeline:

        1. ``BEGIN``, the writers' lock, the insert, the chain head and the check of what the
           command read (``unchanged``), one sync: a refused insert raises here;
        2. the links (computed from the positions the insert returned and the head read under the
           lock), any checkpoint, ``COMMIT``, one sync.

        Anything that fails rolls the transaction back: the events are never committed without
        their links, and a stale read (``ReadChanged``) stores nothing. The statements, the lock
        and what is committed are the library's and ADR 0016's/0021's, unchanged."""
        if self.chain_sealer is None:  # refused before anything is written
            raise ChainNotInstalled("the integrity chain is not installed on this recorder (build the app with infra.wiring)")
        if not stored_events:
            return super().insert_events(stored_events, **kwargs)
        failed: BaseException | None = None
        ids: Sequence[int] | None = None
        with self.datastore.get_connection() as conn:
            try:
                with conn.pipeline() as pipeline, conn.cursor() as tx, conn.cursor() as curs:
                    try:
                        tx.execute("BEGIN", prepare=False)
                        self._insert_events(curs, stored_events, **kwargs)
                        self._insert_stored_events(curs, stored_events, **kwargs)
                        pipeline.sync()  # round trip 1: a uniqueness violation is raised here
                        ids = self._link_inserted(curs, stored_events)
                        tx.execute("COMMIT", prepare=False)
                    except Exception as exc:  # noqa: BLE001 - re-raised below, after the pipeline
                        failed = exc
                # round trip 2: the pipeline's end syncs the links and the COMMIT (raising if refused)
            except Exception as exc:  # noqa: BLE001 - re-raised below
                failed = failed or exc
            if failed is not None:
                self._head_reads.cursors = None
                if conn.pgconn.transaction_status != _IDLE:
                    try:
                        conn.execute("ROLLBACK")
                    except Exception:  # noqa: BLE001 - a broken connection is discarded by the pool
                        log.debug("rollback after a refused save failed", exc_info=True)
                if not isinstance(failed, (IntegrityError, psycopg.IntegrityError, InterfaceError, StoreOperationalError, psycopg.OperationalError)):
                    log.error("the integrity chain could not link the events of this save; nothing is stored", exc_info=failed)
                raise failed  # inside the datastore's connection: psycopg's errors become the library's
        return ids

    @retry((InterfaceError, StoreOperationalError), max_attempts=10, wait=0.2)
    def select_latest(self, originator_id: Any, snapshots: Any, also: tuple[Any, Any, Callable[[Any], None]] | None = None) -> tuple[StoredEvent | None, list[StoredEvent]] | None:
        """An aggregate's latest snapshot in ``snapshots`` (the snapshot recorder) and its events
        after that snapshot, in one statement: one round trip where the library's repository makes
        two, one after the other (issue 16). None when ``snapshots`` is not a table of this store.
        ``also``: (query, params, callback) sent in the same round trip (the data key that
        decoding will need, ``PersonalDataMapper.prefetch``); the callback gets its first row."""
        table = getattr(snapshots, "events_table_name", None)
        if table is None or getattr(snapshots, "datastore", None) is not self.datastore:
            return None
        statement = self._select_latest.get(table)
        if statement is None:
            statement = self._select_latest[table] = SQL(
                "WITH s AS (SELECT originator_version, topic, state FROM {schema}.{snapshots} WHERE originator_id = %(id)s"
                " ORDER BY originator_version DESC LIMIT 1)"
                " SELECT 0 AS k, originator_version, topic, state FROM s"
                " UNION ALL SELECT 1 AS k, originator_version, topic, state FROM {schema}.{events}"
                " WHERE originator_id = %(id)s AND originator_version > COALESCE((SELECT originator_version FROM s), 0)"
                " ORDER BY k, originator_version"
            ).format(schema=Identifier(self.datastore.schema), snapshots=Identifier(table), events=Identifier(self.events_table_name)).as_bytes(None)
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            if also is None:
                curs.execute(statement, {"id": originator_id}, prepare=True)
                rows = curs.fetchall()
            else:
                with conn.cursor() as extra:
                    with conn.pipeline():
                        curs.execute(statement, {"id": originator_id}, prepare=True)
                        extra.execute(also[0], also[1])
                    rows = curs.fetchall()
                    also[2](extra.fetchone())
        snapshot = None
        if rows and rows[0]["k"] == 0:
            r = rows.pop(0)
            snapshot = StoredEvent(originator_id=originator_id, originator_version=r["originator_version"], topic=r["topic"], state=bytes(r["state"]))
        events = [StoredEvent(originator_id=originator_id, originator_version=r["originator_version"], topic=r["topic"], state=bytes(r["state"])) for r in rows]
        return snapshot, events

    def changed_since(self, unchanged: dict[Any, int]) -> list[Any]:
        """As :meth:`_SqlChain.changed_since`, in one round trip: its one statement in autocommit
        (one snapshot), not a transaction block (``BEGIN``, the query, ``ROLLBACK``)."""
        if not unchanged:
            return []
        with self.datastore.get_connection() as conn, conn.cursor() as c:
            return self._changed(c, unchanged)

    def _link_inserted(self, curs: Any, stored_events: Sequence[StoredEvent]) -> list[int]:
        """The positions the insert returned, the events linked to the head read under the lock
        (the links' statement queued in the pipeline); ReadChanged if what the command read changed."""
        assert curs.statusmessage and curs.statusmessage.startswith("INSERT"), curs.statusmessage
        # The insert returns each row's originator and version too (see __init__): each
        # position is matched to its own event, whatever order the rows come back in.
        returned = {(str(r["originator_id"]), int(r["originator_version"])): int(r["notification_id"]) for r in curs.fetchall()}
        ids = [returned[(str(s.originator_id), s.originator_version)] for s in stored_events]
        self._chain_events(curs, _positioned(ids, stored_events), self._head_read())
        return ids

    def _fetch_ids_after_insert_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        # The library's insert path (not this recorder's own ``insert_events``).
        try:
            ids = self._link_inserted(curs, stored_events)
        except Exception as exc:
            # The library commits unless the database refused something: make it refuse, so
            # that the events are never committed without their links.
            if isinstance(exc, ReadChanged):
                # refused as the store's key refuses a stale aggregate: the caller runs the command again
                abort = "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'unique_violation', MESSAGE = 'an aggregate the command read changed since'; END $$"
            else:
                log.error("the integrity chain could not link the events of this save; nothing is stored", exc_info=True)
                abort = "DO $$ BEGIN RAISE EXCEPTION 'the integrity chain could not link these events'; END $$"
            try:
                curs.execute(abort)
            except Exception:  # noqa: BLE001 - the transaction is aborted, which is the point
                pass
            raise
        return ids

    def _chain_lock(self, c: Any) -> None:
        self._lock_table(c)


# ---------------------------------------------------------------------------------------------
# Chaining recorder: in memory


class ChainedPOPOApplicationRecorder(POPOApplicationRecorder):
    """The library's in-memory recorder, chaining under its own lock."""

    def __init__(self) -> None:
        super().__init__()
        self.chain_sealer: Sealer | None = None
        self._chain_rows: list[Row] = []
        self._chain_cps: list[Checkpoint] = []

    def _insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        with self._database_lock:
            if self.chain_sealer is None:
                raise ChainNotInstalled("the integrity chain is not installed on this recorder (build the app with infra.wiring)")
            unchanged = kwargs.get("unchanged")
            if unchanged and stored_events:
                changed = self.changed_since(unchanged)
                if changed:
                    raise ReadChanged(_changed_message(changed))
            ids = super()._insert_events(stored_events, **kwargs)
            if stored_events:
                head = self._chain_rows[-1] if self._chain_rows else None
                last = self._chain_cps[-1] if self._chain_cps else None
                rows, checkpoints = self.chain_sealer.link(head, last, _positioned(ids, stored_events))
                self._chain_rows.extend(rows)
                self._chain_cps.extend(checkpoints)
            return ids

    def chain_install(self, sealer: Sealer) -> dict[str, Any]:
        self.chain_sealer = sealer
        return {"created": False, "upgraded": False, "adopted": 0}

    def changed_since(self, unchanged: dict[Any, int]) -> list[Any]:
        """The ids in ``unchanged`` (id -> version read) that have events after that version."""
        with self._database_lock:
            return [k for k, v in unchanged.items() if any(n > v for n in self._stored_events_index.get(str(k), {}))]

    def chain_seal_head(self, kind: str = ON_DEMAND) -> Checkpoint | None:
        with self._database_lock:
            sealer = self.chain_sealer
            assert sealer is not None
            head = self._chain_rows[-1] if self._chain_rows else None
            last = self._chain_cps[-1] if self._chain_cps else None
            if head is None or (last is not None and last.position >= head.position):
                return last
            number = sealer.in_force(head, last) + 1
            cp = sealer.checkpoint(number, head.position, head.hash, kind, last.seal if last else "")
            self._chain_cps.append(cp)
            self._chain_rows[-1] = sealer.sealed(head, number)
            return cp

    def chain_head(self) -> Row | None:
        return self._chain_rows[-1] if self._chain_rows else None

    def chain_rows(self, after: int, limit: int) -> list[Row]:
        with self._database_lock:
            return [r for r in self._chain_rows if r.position > after][:limit]

    def chain_at_or_before(self, position: int) -> Row | None:
        found = None
        with self._database_lock:
            for r in self._chain_rows:
                if r.position > position:
                    break
                found = r
        return found

    def chain_checkpoints(self) -> list[Checkpoint]:
        with self._database_lock:
            return sorted(self._chain_cps, key=lambda k: k.position)

    def chain_last_checkpoint(self) -> Checkpoint | None:
        cps = self.chain_checkpoints()
        return cps[-1] if cps else None

    def chain_checkpoints_after(self, number: int, up_to: int, limit: int = PAGE) -> list[Checkpoint]:
        found = [k for k in self.chain_checkpoints() if k.number is not None and k.number > number and k.position <= up_to]
        return sorted(found, key=lambda k: k.number or 0)[:limit]


class ChainedPOPOFactory(POPOFactory):
    """``PERSISTENCE_MODULE`` for an in-memory ledger (the library's POPO factory reads no
    recorder topic)."""

    def application_recorder(self) -> Any:
        return ChainedPOPOApplicationRecorder()


SQLITE_RECORDER_TOPIC = get_topic(ChainedSQLiteApplicationRecorder)
POSTGRES_RECORDER_TOPIC = get_topic(ChainedPostgresApplicationRecorder)
POPO_FACTORY_TOPIC = get_topic(ChainedPOPOFactory)


def chained_env(env: dict[str, str]) -> dict[str, str]:
    """The store's eventsourcing env with this module's chaining recorder selected, whatever
    factory the env names (the library's, or a subclass such as :mod:`infra.sqlite_bulk`'s)."""
    module = env.get("PERSISTENCE_MODULE") or "eventsourcing.popo"
    factory: Any = None
    if module in ("eventsourcing.popo", "eventsourcing.sqlite", "eventsourcing.postgres"):
        factory = {"eventsourcing.popo": POPOFactory, "eventsourcing.sqlite": SQLiteFactory, "eventsourcing.postgres": PostgresFactory}[module]
    else:
        try:
            factory = resolve_topic(module)
        except Exception:  # noqa: BLE001 - not a class topic: the library will say what is wrong
            factory = None
    if isinstance(factory, type) and issubclass(factory, SQLiteFactory):
        return {**env, "APPLICATION_RECORDER_TOPIC": SQLITE_RECORDER_TOPIC}
    if isinstance(factory, type) and issubclass(factory, PostgresFactory):
        return {**env, "APPLICATION_RECORDER_TOPIC": POSTGRES_RECORDER_TOPIC}
    if factory is POPOFactory:
        return {**env, "PERSISTENCE_MODULE": POPO_FACTORY_TOPIC}
    if isinstance(factory, type) and issubclass(factory, ChainedPOPOFactory):
        return dict(env)
    raise ChainNotInstalled(f"no chaining recorder for the persistence module {module!r} (ADR 0016)")


class ChainStore(Protocol):
    """What :class:`Chain` and :func:`verify` need from a chaining recorder."""

    def chain_head(self) -> Row | None: ...
    def chain_rows(self, after: int, limit: int) -> list[Row]: ...
    def chain_at_or_before(self, position: int) -> Row | None: ...
    def chain_checkpoints(self) -> list[Checkpoint]: ...
    def chain_last_checkpoint(self) -> Checkpoint | None: ...
    def chain_checkpoints_after(self, number: int, up_to: int, limit: int = PAGE) -> list[Checkpoint]: ...
    def chain_seal_head(self, kind: str = ON_DEMAND) -> Checkpoint | None: ...


# ---------------------------------------------------------------------------------------------
# The chain of one application


@dataclass(frozen=True)
class SignedHead:
    """The last checkpoint, in the form an auditor keeps outside the database."""

    position: int
    hash: str
    checkpoint: int
    signature: str
    recorded_at: str

    def as_dict(self) -> dict[str, Any]:
        return {"position": self.position, "hash": self.hash, "checkpoint": self.checkpoint, "signature": self.signature, "recorded_at": self.recorded_at}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"))

    @classmethod
    def parse(cls, text: str) -> "SignedHead":
        """The JSON ``ledger chain --head`` prints, or ``POSITION:HASH`` (no checkpoint)."""
        text = text.strip()
        if text.startswith("{"):
            d = json.loads(text)
            return cls(int(d["position"]), str(d["hash"]).lower(), int(d.get("checkpoint") or 0), str(d.get("signature") or ""), str(d.get("recorded_at") or ""))
        position, _, hash_hex = text.partition(":")
        if not hash_hex:
            raise ValueError("a head is the JSON printed by `ledger chain --head`, or POSITION:HASH")
        return cls(int(position), hash_hex.strip().lower(), 0, "", "")


@dataclass
class Chain:
    """The chain of one application's store (its recorder does the chaining)."""

    app: Any
    store: Any  # ChainStore: the application's recorder
    sealer: Sealer

    @property
    def seal(self) -> Callable[[str], str]:
        return self.sealer.seal

    @property
    def checkpoint_every(self) -> int:
        return self.sealer.checkpoint_every

    @checkpoint_every.setter
    def checkpoint_every(self, value: int) -> None:
        self.sealer.checkpoint_every = value

    def head(self) -> ChainLink | None:
        row = self.store.chain_head()
        return ChainLink(row.position, row.hash) if row else None

    def seal_head(self) -> Checkpoint | None:
        """Seal a checkpoint at the head unless it has one; the last checkpoint (None when empty)."""
        return self.store.chain_seal_head(ON_DEMAND)

    def signed_head(self, *, seal: bool = True) -> SignedHead | None:
        """The last checkpoint (sealed at the head first, unless ``seal`` is false)."""
        cp = self.seal_head() if seal else self.store.chain_last_checkpoint()
        if cp is None:
            return None
        return SignedHead(cp.position, cp.hash, cp.number or 0, cp.seal, cp.recorded_at)

    def run(self, *, stop: int | None = None, wait: bool = True, checkpoint_at_end: bool = True) -> ChainLink | None:
        """The head; with ``checkpoint_at_end``, a checkpoint sealed at it first. Nothing is left to
        chain: every event was chained by the transaction that stored it (``stop`` and ``wait``
        are accepted for the callers of the earlier chainer)."""
        if checkpoint_at_end:
            self.seal_head()
        return self.head()

    def head_at(self, position: int) -> ChainLink | None:
        """The link of the last event at or before ``position``."""
        row = self.store.chain_at_or_before(position)
        return ChainLink(row.position, row.hash) if row else None


# ---------------------------------------------------------------------------------------------
# Verifying


@dataclass
class Problem:
    position: int
    kind: str  # altered | chain_row | deleted | unchained | links_deleted | unsealed | seal | checkpoint | head
    message: str
    details: list[str] = field(default_factory=list)
    event: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"position": self.position, "kind": self.kind, "message": self.message, "details": self.details, "event": self.event}


@dataclass
class Report:
    checked: int = 0
    head: ChainLink | None = None
    unchained: int = 0
    checkpoints: int = 0
    last_checkpoint: int = 0
    problems: list[Problem] = field(default_factory=list)
    expected_head: SignedHead | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return min(self.problems, key=lambda p: (p.position, p.kind == "checkpoint")) if self.problems else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head": self.head._asdict() if self.head else None,
            "unchained": self.unchained,
            "checkpoints": self.checkpoints,
            "last_checkpoint": self.last_checkpoint,
            "expected_head": self.expected_head.as_dict() if self.expected_head else None,
            "first_broken": self.first.as_dict() if self.first else None,
            "problems": [p.as_dict() for p in self.problems],
        }


def _describe(n: Any) -> dict[str, Any]:
    return {"position": n.id, "topic": n.topic, "originator_id": str(n.originator_id), "version": n.originator_version}


def _merge(events: Iterator[Any], rows: Iterator[Row]) -> Iterator[tuple[Any | None, Row | None]]:
    e, r = next(events, None), next(rows, None)
    while e is not None or r is not None:
        if r is None or (e is not None and e.id < r.position):
            yield e, None
            e = next(events, None)
        elif e is None or r.position < e.id:
            yield None, r
            r = next(rows, None)
        else:
            yield e, r
            e, r = next(events, None), next(rows, None)


def _unchained(n: Any) -> Problem:
    return Problem(
        n.id,
        "unchained",
        f"position {n.id} holds an event that was never chained: every event is chained in the transaction that stores it, "
        "so this one was written behind the ledger's back (or its link was deleted)",
        event=_describe(n),
    )


def verify(chain: Chain, progress: Callable[[int], None] | None = None, max_problems: int = 50, expect: SignedHead | None = None) -> Report:
    """Recompute the chain from the stored events; check every link, seal and checkpoint (and,
    given ``expect``, that the log extends that head)."""
    store = chain.store
    recorder = chain.app.recorder
    seal = chain.sealer.seal
    # Checkpoints first, then the head: every checkpoint read here is at or before the head
    # (one beyond it names events that are gone). Saves committed meanwhile are left for the
    # next run, except that the checkpoints are read again for the links' seals that name them.
    checkpoints_before = store.chain_checkpoints()
    head_row = store.chain_head()
    report = Report(head=ChainLink(head_row.position, head_row.hash) if head_row else None, expected_head=expect)
    head_position = head_row.position if head_row else 0
    problems = report.problems

    def events(start: int = 1, stop: int | None = None) -> Iterator[Any]:
        while True:
            batch = recorder.select_notifications(start=start, limit=PAGE, stop=stop)
            yield from batch
            if len(batch) < PAGE:
                return
            start = batch[-1].id + 1

    def rows() -> Iterator[Row]:
        after = 0
        while True:
            batch = [r for r in store.chain_rows(after, PAGE) if r.position <= head_position]  # later saves wait for the next run
            yield from batch
            if len(batch) < PAGE:
                return
            after = batch[-1].position

    recomputed = GENESIS  # from the events, resynchronised on the stored link after a break
    recomputed_at: dict[int, str] = {}
    claims: list[tuple[int, int]] = []  # (position, checkpoint number) named by valid link seals
    seq = 0
    last_sealed: Row | None = None
    first_after_seal: int | None = None  # the first link after the last sealed one
    for n, row in _merge(events(stop=head_position), rows()):
        if len(problems) >= max_problems:
            break
        if progress:
            progress(1)
        if row is None:
            problems.append(_unchained(n))
            report.unchained += 1
            continue
        if row.seq != seq + 1:
            missing = row.seq - seq - 1
            problems.append(
                Problem(
                    row.position,
                    "links_deleted",
                    f"the links are numbered {seq} then {row.seq} at position {row.position}: "
                    + (f"{missing} chained event(s) and their links before this position were deleted" if missing > 0 else "the link numbering was rewritten"),
                )
            )
            recomputed = bytes.fromhex(row.hash)
            seq = row.seq
            checked_here = False
        else:
            seq = row.seq
            checked_here = True
        if n is None:
            problems.append(Problem(row.position, "deleted", f"the event chained at position {row.position} is missing from the store (deleted)"))
            recomputed = bytes.fromhex(row.hash)
        elif checked_here:
            report.checked += 1
            recomputed = link_hash(recomputed, n.id, n.topic, n.originator_id, n.originator_version, n.state)
            recomputed_at[n.id] = recomputed.hex()
            if recomputed.hex() != row.hash:
                details = explain_difference(row.digests, n.topic, n.originator_id, n.originator_version, n.state)
                if row.digests == field_digests(n.topic, n.originator_id, n.originator_version, n.state):
                    # The event is as chained: the link was edited. Carry on from the true hash.
                    problems.append(
                        Problem(n.id, "chain_row", f"the chain link at position {n.id} was altered (the event itself matches what was chained)", details=details, event=_describe(n))
                    )
                else:
                    problems.append(Problem(n.id, "altered", f"the event at position {n.id} does not match its chained hash", details=details, event=_describe(n)))
                    recomputed = bytes.fromhex(row.hash)  # carry on from the chained link, to find any later break
        else:
            report.checked += 1
            recomputed_at[n.id] = row.hash
        if row.seal is not None:
            if not _same(seal(link_seal_text(row.position, row.hash, row.seq, row.checkpoint or 0)), row.seal):
                problems.append(
                    Problem(row.position, "seal", f"the link at position {row.position} carries a seal that does not match it (forged or altered; or LEDGER_DATA_KEY differs)")
                )
            else:
                claims.append((row.position, row.checkpoint or 0))
            last_sealed, first_after_seal = row, None
        elif first_after_seal is None:
            first_after_seal = row.position

    if len(problems) < max_problems and head_row is not None and first_after_seal is not None:
        problems.append(
            Problem(
                first_after_seal,
                "unsealed",
                f"the links from position {first_after_seal} to the head ({head_position}) carry no save's seal: every save seals its "
                "last link, so these were chained outside a save (links deleted and computed again, or forged events appended with links)",
                details=[f"the last sealed link is at position {last_sealed.position}" if last_sealed else "no link is sealed"],
            )
        )

    # Events after the head: stored by saves that committed after this run began (their links
    # exist now), or written without links.
    late = list(events(start=head_position + 1)) if len(problems) < max_problems else []
    if late:
        linked = {r.position for r in store.chain_rows(head_position, len(late) + PAGE)}
        for n in late:
            if n.id not in linked:
                problems.append(_unchained(n))
                report.unchained += 1
                if len(problems) >= max_problems:
                    break

    known = {(k.position, k.seal) for k in checkpoints_before}
    checkpoints_after = store.chain_checkpoints()
    checkpoints = [k for k in checkpoints_after if k.position <= head_position or (k.position, k.seal) in known]
    _verify_checkpoints(report, checkpoints, checkpoints_after, recomputed_at, claims, seal, head_position)
    if expect is not None:
        _verify_expected(report, expect, store, recomputed_at, head_position)
    problems.sort(key=lambda p: p.position)
    return report


def _verify_checkpoints(
    report: Report,
    checkpoints: list[Checkpoint],
    latest: list[Checkpoint],
    recomputed_at: dict[int, str],
    claims: list[tuple[int, int]],
    seal: Callable[[str], str],
    head_position: int,
) -> None:
    problems = report.problems
    report.checkpoints = len(checkpoints)
    numbered = sorted((k for k in checkpoints if k.number is not None), key=lambda k: k.number or 0)
    legacy = [k for k in checkpoints if k.number is None]
    report.last_checkpoint = numbered[-1].number or 0 if numbered else 0
    by_number = {k.number: k for k in latest if k.number is not None}
    first_numbered = numbered[0].position if numbered else None

    last_good = 0
    for k in checkpoints:  # in position order
        if k.number is None:
            ok = _same(seal(legacy_seal_text(k.position, k.hash, k.recorded_at)), k.seal)
            if first_numbered is not None and k.position > first_numbered:
                problems.append(Problem(k.position, "checkpoint", f"the unnumbered checkpoint at position {k.position} comes after numbered ones: it was not sealed by the ledger"))
                continue
        else:
            ok = _same(seal(checkpoint_seal_text(k.number, k.position, k.hash, k.recorded_at, k.kind or "", k.previous or "")), k.seal)
        label = f"checkpoint #{k.number}" if k.number is not None else "the unnumbered checkpoint"
        if not ok:
            problems.append(Problem(k.position, "checkpoint", f"{label} at position {k.position} has a bad signature (forged, renumbered or altered; or LEDGER_DATA_KEY differs)"))
        elif k.position in recomputed_at and recomputed_at[k.position] != k.hash:
            problems.append(
                Problem(
                    k.position,
                    "checkpoint",
                    f"{label} at position {k.position} (sealed {k.recorded_at}) disagrees with the chain recomputed from the stored events: "
                    f"the log and its links were rewritten between positions {last_good + 1} and {k.position}",
                    details=[f"checkpoint {k.hash}", f"recomputed {recomputed_at[k.position]}"],
                )
            )
        elif k.position > head_position or (k.position not in recomputed_at and not any(p.position == k.position for p in problems)):
            problems.append(Problem(k.position, "checkpoint", f"{label} at position {k.position} names an event that is not in the chain (the log was truncated, or the checkpoint forged)"))
        else:
            last_good = k.position

    # The numbered sequence: 1, 2, 3, … each naming the previous one's signature, positions rising.
    previous_seal = legacy[-1].seal if legacy else ""
    previous: Checkpoint | None = None
    expected = 1
    for k in numbered:
        number = k.number or 0
        if number > expected:
            missing = f"#{expected}" if number == expected + 1 else f"#{expected}–#{number - 1}"
            after = f"after #{previous.number} at position {previous.position}" if previous else "at the start of the sequence"
            problems.append(Problem(k.position, "checkpoint", f"checkpoint {missing} is missing (deleted): the sequence jumps {after} to #{number} at position {k.position}"))
        elif previous is not None and k.previous != previous.seal:
            problems.append(Problem(k.position, "checkpoint", f"checkpoint #{number} at position {k.position} does not follow #{previous.number}: it names another previous signature"))
        elif previous is None and number == 1 and (k.previous or "") != previous_seal:
            problems.append(Problem(k.position, "checkpoint", f"checkpoint #1 at position {k.position} does not follow the last unnumbered checkpoint"))
        if previous is not None and k.position <= previous.position:
            problems.append(Problem(k.position, "checkpoint", f"checkpoint #{number} at position {k.position} is not after #{previous.number} at position {previous.position} (reordered)"))
        previous, expected = k, number + 1

    # Each save's seal names the checkpoint in force: it must exist, at or before that link.
    named: set[int] = set()
    for position, number in claims:
        if number == 0 or number in named:
            continue
        k = by_number.get(number)
        if k is None:
            named.add(number)
            problems.append(
                Problem(position, "checkpoint", f"checkpoint #{number} is missing (deleted): the save sealed at position {position} followed it")
            )
        elif k.position > position:
            named.add(number)
            problems.append(
                Problem(position, "checkpoint", f"checkpoint #{number} is at position {k.position}, but the save sealed at position {position} already followed it: the checkpoints were renumbered or replaced")
            )


def _verify_expected(report: Report, expect: SignedHead, store: Any, recomputed_at: dict[int, str], head_position: int) -> None:
    problems = report.problems
    p = expect.position
    if p > head_position:
        problems.append(Problem(p, "head", f"the log is shorter than the expected head: it ends at position {head_position}, the head kept outside names position {p} (truncated, or another store)"))
        return
    row = store.chain_at_or_before(p)
    if row is None or row.position != p:
        problems.append(Problem(p, "head", f"no event is chained at position {p}, which the expected head names (deleted, or another store)"))
        return
    if row.hash != expect.hash or recomputed_at.get(p, row.hash) != expect.hash:
        problems.append(
            Problem(
                p,
                "head",
                f"the log does not extend the expected head: the link at position {p} differs from the one kept outside (rewritten, or another store)",
                details=[f"expected {expect.hash}", f"stored {row.hash}"] + ([f"recomputed {recomputed_at[p]}"] if p in recomputed_at else []),
            )
        )
        return
    if expect.checkpoint:
        k = next((k for k in store.chain_checkpoints() if k.number == expect.checkpoint), None)
        if k is None or (k.position, k.hash) != (p, expect.hash) or (expect.signature and not _same(k.seal, expect.signature)):
            problems.append(
                Problem(p, "head", f"checkpoint #{expect.checkpoint}, which the expected head names, is " + ("missing" if k is None else "not the one kept outside") + " (the checkpoints were rebuilt)")
            )


# ---------------------------------------------------------------------------------------------
# Wiring

#: Chains by application. The chain holds its app, so an app with a chain lives as long as the
#: process: adapters that keep only ``app.recorder`` rely on the app (whose finaliser closes the
#: store's connections) staying alive. Freeing it needs those adapters to hold the app first.
_chains: "weakref.WeakKeyDictionary[Any, Chain]" = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()


def install(app: Any, seal: Callable[[str], str], *, on_save: bool = True, notify: bool = False) -> Chain:
    """Give the application's chaining recorder its sealer (tables created or upgraded if
    needed). ``on_save`` is accepted for callers of the earlier chainer: every save chains.
    ``notify``: a PostgreSQL recorder sends the library's ``NOTIFY`` on every insert
    (``LEDGER_POSTGRES_NOTIFY``; off by default, ADR 0021)."""
    recorder = app.recorder
    if not hasattr(recorder, "chain_install"):
        raise ChainNotInstalled(
            f"{type(recorder).__name__} does not chain the events it stores: build the app with infra.wiring (integrity.chained_env)"
        )
    if isinstance(recorder, ChainedPostgresApplicationRecorder):
        recorder.notify = bool(notify)
    sealer = Sealer(seal)
    with _install_lock:
        recorder.chain_install(sealer)
    chain = Chain(app, recorder, sealer)
    _chains[app] = chain
    return chain


def chain_for(app: Any) -> Chain:
    chain = _chains.get(app)
    if chain is None:
        raise RuntimeError("this application has no integrity chain (build it with infra.wiring)")
    return chain


def chain_head(position: int, app: Any) -> ChainLink | None:
    """The chain head at ``position`` of ``app``'s store: the link of the last event at or before
    it (None for an empty store). For snapshots to carry: a snapshot taken at position P names this
    hash, and ``ledger verify`` proves the log up to P is the one it saw."""
    return chain_for(app).head_at(position)
