"""The tamper-evident chain (ADR 0016).

Every stored event is chained, in notification order, by

    hash(p) = SHA-256("ledger-chain-v1" ‖ hash(previous) ‖ len‖position ‖ len‖topic
                      ‖ len‖originator id ‖ len‖version ‖ len‖state bytes)

over exactly what the store holds (the state bytes as stored: personal fields are ciphertext, so
erasing a key never breaks the chain). The links live in ``event_chain`` (position, hash, plus a
short digest of each field so that ``ledger verify`` can say *what* changed), written by a
chainer that follows the notification log (after every save, and by ``ledger chain``), anchored
every :data:`CHECKPOINT_EVERY` events and at the end of each explicit run in ``chain_checkpoints``
(position, hash, recorded_at, seal), each sealed with an HMAC under a key derived from the master
data key, so rewriting the chain table as well as the events does not go unnoticed.

Positions are notification ids: they can have gaps (ADR 0002), so a position is never a count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, NamedTuple, Protocol

from eventsourcing.persistence import IntegrityError as StoreIntegrityError
from eventsourcing.persistence import OperationalError as StoreOperationalError

log = logging.getLogger("ledger.integrity")

DOMAIN = b"ledger-chain-v1"
GENESIS = bytes(32)
CHECKPOINT_EVERY = 1000
PAGE = 1000
BLOCK = 1024  # bytes of state per block digest (to locate a change outside JSON fields)
SHORT = 12  # hex characters kept per field digest


class ChainLink(NamedTuple):
    position: int
    hash: str


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


def _json_fields(state: bytes) -> list[tuple[str, int, int]]:
    """The top-level keys of a JSON object state with the byte span of each ``"key": value``
    (empty when the state is not, or no longer, a JSON object)."""
    try:
        text = state.decode("utf-8")
    except UnicodeDecodeError:
        return []
    decoder = json.JSONDecoder()
    out: list[tuple[str, int, int]] = []
    i = 1 if text.startswith("{") else -1
    if i < 0:
        return []
    try:
        while i < len(text) and text[i] != "}":
            key, j = decoder.raw_decode(text, i)
            j = text.index(":", j) + 1
            _, end = decoder.raw_decode(text, j)
            # byte offsets, not character offsets (names and streets are not ASCII)
            out.append((str(key), len(text[:i].encode("utf-8")), len(text[:end].encode("utf-8"))))
            i = end + 1 if end < len(text) and text[end] == "," else end
    except (ValueError, IndexError):
        pass
    return out


# ---------------------------------------------------------------------------------------------
# Where links are kept


class Row(NamedTuple):
    position: int
    hash: str
    seq: int
    digests: str | None


class _Stored(NamedTuple):
    """A stored event as read from the events table (the fields of a notification)."""

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


class Checkpoint(NamedTuple):
    position: int
    hash: str
    recorded_at: str
    seal: str


#: Given the current head and the next stored events, the links and checkpoints to add.
Linker = Callable[["Row | None", list[Any]], "tuple[list[Row], list[Checkpoint]]"]


class ChainStore(Protocol):
    def head(self) -> Row | None: ...
    def rows(self, after: int, limit: int) -> list[Row]: ...
    def at_or_before(self, position: int) -> Row | None: ...
    def advance(self, link: Linker, *, stop: int | None, wait: bool) -> tuple[bool, Row | None, int]:
        """Under the writers' lock: read the head and up to :data:`PAGE` events after it (up to
        ``stop``), add their links. Returns (done, new head, events chained); not done when
        another chainer holds the lock and ``wait`` is false, or got in first."""
    def append(self, expected_head: int, rows: list[Row], checkpoints: list[Checkpoint], *, wait: bool) -> bool: ...
    def checkpoints(self) -> list[Checkpoint]: ...
    def last_checkpoint(self) -> Checkpoint | None: ...


class MemoryChainStore:
    def __init__(self, read: Callable[..., list[Any]] | None = None) -> None:
        self._read = read  # the recorder's select_notifications
        self._rows: list[Row] = []
        self._checkpoints: list[Checkpoint] = []
        self._lock = threading.Lock()

    def head(self) -> Row | None:
        return self._rows[-1] if self._rows else None

    def rows(self, after: int, limit: int) -> list[Row]:
        return [r for r in self._rows if r.position > after][:limit]

    def at_or_before(self, position: int) -> Row | None:
        found = None
        for r in self._rows:
            if r.position > position:
                break
            found = r
        return found

    def advance(self, link: Linker, *, stop: int | None, wait: bool) -> tuple[bool, Row | None, int]:
        assert self._read is not None
        with self._lock:
            head = self.head()
            batch = list(self._read(start=(head.position if head else 0) + 1, limit=PAGE, stop=stop))
            rows, checkpoints = link(head, batch)
            self._rows.extend(rows)
            self._checkpoints.extend(checkpoints)
            return True, self.head(), len(batch)

    def append(self, expected_head: int, rows: list[Row], checkpoints: list[Checkpoint], *, wait: bool) -> bool:
        with self._lock:
            current = self._rows[-1].position if self._rows else 0
            if current != expected_head:
                return False
            self._rows.extend(rows)
            self._checkpoints.extend(checkpoints)
            return True

    def checkpoints(self) -> list[Checkpoint]:
        return list(self._checkpoints)

    def last_checkpoint(self) -> Checkpoint | None:
        return self._checkpoints[-1] if self._checkpoints else None


class SqlChainStore:
    """``event_chain`` and ``chain_checkpoints`` in the event store's database, through the
    recorder's datastore. Writers are serialised: an advisory lock on PostgreSQL, the database
    write lock on SQLite; a writer that finds the head moved gives way."""

    LOCK = "hashtext('ledger.event_chain')"

    def __init__(self, datastore: Any, *, postgres: bool, events_table: str):
        self.datastore = datastore
        self.postgres = postgres
        self.p = "%s" if postgres else "?"
        big = "BIGINT" if postgres else "INTEGER"
        position = "notification_id" if postgres else "rowid"
        self._select_events = (
            f"SELECT {position} AS id, originator_id, originator_version, topic, state FROM {events_table} "
            f"WHERE {position} > {self.p} AND {position} <= {self.p} ORDER BY {position} LIMIT {self.p}"
        )
        with datastore.transaction(commit=True) as c:
            if postgres:
                c.execute(f"SELECT pg_advisory_xact_lock({self.LOCK})")
            c.execute(
                f"CREATE TABLE IF NOT EXISTS event_chain (position {big} PRIMARY KEY, hash TEXT NOT NULL, "
                f"seq {big} NOT NULL, digests TEXT)"
            )
            c.execute(
                f"CREATE TABLE IF NOT EXISTS chain_checkpoints (position {big} PRIMARY KEY, hash TEXT NOT NULL, "
                "recorded_at TEXT NOT NULL, seal TEXT NOT NULL)"
            )

    @staticmethod
    def _row(r: Any) -> Row:
        return Row(int(r["position"]), r["hash"], int(r["seq"]), r["digests"])

    def head(self) -> Row | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT position, hash, seq, digests FROM event_chain ORDER BY position DESC LIMIT 1")
            r = c.fetchone()
        return self._row(r) if r else None

    def rows(self, after: int, limit: int) -> list[Row]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT position, hash, seq, digests FROM event_chain WHERE position > {self.p} ORDER BY position LIMIT {self.p}", (after, limit))
            return [self._row(r) for r in c.fetchall()]

    def at_or_before(self, position: int) -> Row | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT position, hash, seq, digests FROM event_chain WHERE position <= {self.p} ORDER BY position DESC LIMIT 1", (position,))
            r = c.fetchone()
        return self._row(r) if r else None

    def _lock(self, c: Any, wait: bool) -> bool:
        if not self.postgres:
            return True  # SQLite: its one write lock, taken at the first write
        if wait:
            c.execute(f"SELECT pg_advisory_xact_lock({self.LOCK})")
            return True
        c.execute(f"SELECT pg_try_advisory_xact_lock({self.LOCK}) AS ok")
        return bool(c.fetchone()["ok"])

    def _insert(self, c: Any, rows: list[Row], checkpoints: list[Checkpoint]) -> None:
        p = self.p
        if rows:
            c.executemany(f"INSERT INTO event_chain (position, hash, seq, digests) VALUES ({p}, {p}, {p}, {p})", [tuple(r) for r in rows])
        if checkpoints:
            c.executemany(
                f"INSERT INTO chain_checkpoints (position, hash, recorded_at, seal) VALUES ({p}, {p}, {p}, {p})", [tuple(cp) for cp in checkpoints]
            )

    def advance(self, link: Linker, *, stop: int | None, wait: bool) -> tuple[bool, Row | None, int]:
        """One transaction: lock, head, the next events (read from the events table itself, so the
        writers' commit order is the order chained), links."""
        try:
            with self.datastore.transaction(commit=True) as c:
                if not self._lock(c, wait):
                    return False, None, 0
                c.execute("SELECT position, hash, seq, digests FROM event_chain ORDER BY position DESC LIMIT 1")
                r = c.fetchone()
                head = self._row(r) if r else None
                c.execute(self._select_events, ((head.position if head else 0), stop if stop is not None else 2**62, PAGE))
                batch = [_Stored(int(e["id"]), _uuid(e["originator_id"]), int(e["originator_version"]), e["topic"], bytes(e["state"])) for e in c.fetchall()]
                rows, checkpoints = link(head, batch)
                self._insert(c, rows, checkpoints)
            return True, (rows[-1] if rows else head), len(batch)
        except (StoreIntegrityError, StoreOperationalError):
            return False, None, 0  # another chainer got in first, or held SQLite's write lock

    def append(self, expected_head: int, rows: list[Row], checkpoints: list[Checkpoint], *, wait: bool) -> bool:
        try:
            with self.datastore.transaction(commit=True) as c:
                if self.postgres:
                    if wait:
                        c.execute(f"SELECT pg_advisory_xact_lock({self.LOCK})")
                    else:
                        c.execute(f"SELECT pg_try_advisory_xact_lock({self.LOCK}) AS ok")
                        if not c.fetchone()["ok"]:
                            return False
                c.execute("SELECT MAX(position) AS head FROM event_chain")
                current = c.fetchone()["head"] or 0
                if int(current) != expected_head:
                    return False
                self._insert(c, rows, checkpoints)
            return True
        except (StoreIntegrityError, StoreOperationalError):
            # Another chainer wrote the same positions first (or held SQLite's write lock): the
            # caller reads the new head and carries on from there.
            return False

    def checkpoints(self) -> list[Checkpoint]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT position, hash, recorded_at, seal FROM chain_checkpoints ORDER BY position")
            return [Checkpoint(int(r["position"]), r["hash"], r["recorded_at"], r["seal"]) for r in c.fetchall()]

    def last_checkpoint(self) -> Checkpoint | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT position, hash, recorded_at, seal FROM chain_checkpoints ORDER BY position DESC LIMIT 1")
            r = c.fetchone()
        return Checkpoint(int(r["position"]), r["hash"], r["recorded_at"], r["seal"]) if r else None


# ---------------------------------------------------------------------------------------------
# The chainer


def _seal_text(position: int, hash_hex: str, recorded_at: str) -> str:
    return f"{position}|{hash_hex}|{recorded_at}"


@dataclass
class Chain:
    """The chain of one application's store."""

    app: Any
    store: Any
    seal: Callable[[str], str]
    checkpoint_every: int = CHECKPOINT_EVERY
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- writing ---------------------------------------------------------------------------
    def run(self, *, stop: int | None = None, wait: bool = True, checkpoint_at_end: bool = True) -> ChainLink | None:
        """Chain every stored event after the head (up to ``stop``); returns the new head.
        ``wait=False`` gives way at once when another chainer holds the lock (after a save)."""
        with self._lock:
            for _attempt in range(50):
                done, head = self._run_once(stop=stop, wait=wait, checkpoint_at_end=checkpoint_at_end)
                if done or not wait:
                    return head
            raise RuntimeError("the chain head kept moving under this chainer")  # pragma: no cover

    def _link(self, head: Row | None, batch: list[Any]) -> tuple[list[Row], list[Checkpoint]]:
        prev, seq = (bytes.fromhex(head.hash), head.seq) if head else (GENESIS, 0)
        rows, checkpoints = [], []
        for n in batch:
            prev = link_hash(prev, n.id, n.topic, n.originator_id, n.originator_version, n.state)
            seq += 1
            rows.append(Row(n.id, prev.hex(), seq, field_digests(n.topic, n.originator_id, n.originator_version, n.state)))
            if seq % self.checkpoint_every == 0:
                checkpoints.append(self._checkpoint(n.id, prev.hex()))
        return rows, checkpoints

    def _run_once(self, *, stop: int | None, wait: bool, checkpoint_at_end: bool) -> tuple[bool, ChainLink | None]:
        head = None
        while True:
            done, head, count = self.store.advance(self._link, stop=stop, wait=wait)
            if not done:
                if wait:
                    time.sleep(0.01)
                return False, self.head()
            if count < PAGE:
                break
        if checkpoint_at_end and head is not None:
            last = self.store.last_checkpoint()
            if last is None or last.position < head.position:
                self.store.append(head.position, [], [self._checkpoint(head.position, head.hash)], wait=True)
        return True, (ChainLink(head.position, head.hash) if head else None)

    def _checkpoint(self, position: int, hash_hex: str) -> Checkpoint:
        at = datetime.now(timezone.utc).isoformat()
        return Checkpoint(position, hash_hex, at, self.seal(_seal_text(position, hash_hex, at)))

    def after_save(self, recordings: list[Any]) -> None:
        """The application's after-save hook: chain what was just written, never failing a save
        that already happened (a chain that lags catches up on the next save or ``ledger chain``)."""
        try:
            self.run(wait=False, checkpoint_at_end=False)
        except Exception:  # noqa: BLE001 - the events are committed; the chain catches up later
            log.warning("the integrity chain could not follow this save; it will catch up", exc_info=True)

    # -- reading ---------------------------------------------------------------------------
    def head(self) -> ChainLink | None:
        row = self.store.head()
        return ChainLink(row.position, row.hash) if row else None

    def head_at(self, position: int) -> ChainLink | None:
        """The link of the last event at or before ``position``, chaining up to it first if the
        chainer lags behind."""
        head = self.store.head()
        if head is None or head.position < position:
            self.run(stop=position, checkpoint_at_end=False)
        row = self.store.at_or_before(position)
        return ChainLink(row.position, row.hash) if row else None


# ---------------------------------------------------------------------------------------------
# Verifying


@dataclass
class Problem:
    position: int
    kind: str  # altered | deleted | inserted | chain_row | checkpoint
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
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return min(self.problems, key=lambda p: (p.position, p.kind != "checkpoint")) if self.problems else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head": self.head._asdict() if self.head else None,
            "unchained": self.unchained,
            "checkpoints": self.checkpoints,
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


def verify(chain: Chain, progress: Callable[[int], None] | None = None, max_problems: int = 20) -> Report:
    """Recompute the chain from the stored events and compare with the links and checkpoints."""
    report = Report(head=chain.head())
    head_position = report.head.position if report.head else 0
    checkpoints = {cp.position: cp for cp in chain.store.checkpoints()}
    report.checkpoints = len(checkpoints)

    def events() -> Iterator[Any]:
        start = 1
        while True:
            batch = chain.app.recorder.select_notifications(start=start, limit=PAGE)
            yield from batch
            if len(batch) < PAGE:
                return
            start = batch[-1].id + 1

    def rows() -> Iterator[Row]:
        after = 0
        while True:
            batch = [r for r in chain.store.rows(after, PAGE) if r.position <= head_position]  # links added meanwhile wait for the next run
            yield from batch
            if len(batch) < PAGE:
                return
            after = batch[-1].position

    recomputed = GENESIS  # from the events, resynchronised on the stored link after a break
    recomputed_at: dict[int, str] = {}
    for n, row in _merge(events(), rows()):
        if n is not None and n.id > head_position:
            report.unchained += 1
            continue
        if progress:
            progress(1)
        if row is None:
            report.problems.append(Problem(n.id, "inserted", f"position {n.id} holds an event that was never chained (inserted after chaining)", event=_describe(n)))
            continue
        if n is None:
            report.problems.append(Problem(row.position, "deleted", f"the event chained at position {row.position} is missing from the store (deleted)"))
            recomputed = bytes.fromhex(row.hash)
            continue
        report.checked += 1
        recomputed = link_hash(recomputed, n.id, n.topic, n.originator_id, n.originator_version, n.state)
        recomputed_at[n.id] = recomputed.hex()
        if recomputed.hex() != row.hash:
            details = explain_difference(row.digests, n.topic, n.originator_id, n.originator_version, n.state)
            if row.digests == field_digests(n.topic, n.originator_id, n.originator_version, n.state):
                # The event is as chained: the link was edited. Carry on from the true hash.
                report.problems.append(
                    Problem(n.id, "chain_row", f"the chain link at position {n.id} was altered (the event itself matches what was chained)", details=details, event=_describe(n))
                )
            else:
                report.problems.append(
                    Problem(n.id, "altered", f"the event at position {n.id} does not match its chained hash", details=details, event=_describe(n))
                )
                recomputed = bytes.fromhex(row.hash)  # carry on from the chained link, to find any later break
        if len(report.problems) >= max_problems:
            break

    last_good = 0
    for position, cp in sorted(checkpoints.items()):
        if chain.seal(_seal_text(cp.position, cp.hash, cp.recorded_at)) != cp.seal:
            report.problems.append(Problem(position, "checkpoint", f"the checkpoint at position {position} has a bad seal (forged, or LEDGER_DATA_KEY differs)"))
        elif position in recomputed_at and recomputed_at[position] != cp.hash:
            report.problems.append(
                Problem(
                    position,
                    "checkpoint",
                    f"the checkpoint at position {position} (recorded {cp.recorded_at}) disagrees with the chain recomputed "
                    f"from the stored events: the log and its chain table were rewritten between positions {last_good + 1} and {position}",
                    details=[f"checkpoint {cp.hash}", f"recomputed {recomputed_at[position]}"],
                )
            )
        elif position <= head_position and position not in recomputed_at and not any(p.position == position for p in report.problems):
            report.problems.append(Problem(position, "checkpoint", f"the checkpoint at position {position} names an event that is not in the chain"))
        else:
            last_good = position
    report.problems.sort(key=lambda p: p.position)
    return report


# ---------------------------------------------------------------------------------------------
# Wiring

#: Chains by application. The chain holds its app, so an app with a chain lives as long as the
#: process: adapters that keep only ``app.recorder`` rely on the app (whose finaliser closes the
#: store's connections) staying alive. Freeing it needs those adapters to hold the app first.
_chains: "weakref.WeakKeyDictionary[Any, Chain]" = weakref.WeakKeyDictionary()


def install(app: Any, seal: Callable[[str], str], *, on_save: bool = True) -> Chain:
    """Give the application its chain (tables created if needed); chain after every save."""
    datastore = getattr(app.recorder, "datastore", None)
    if datastore is None:
        store: Any = MemoryChainStore(app.recorder.select_notifications)
    else:
        postgres = type(app.recorder).__module__.startswith("eventsourcing.postgres")
        table = f'"{datastore.schema}"."{app.recorder.events_table_name}"' if postgres else app.recorder.events_table_name
        store = SqlChainStore(datastore, postgres=postgres, events_table=table)
    chain = Chain(app, store, seal)
    _chains[app] = chain
    if on_save and chain.after_save not in app.after_save:
        app.after_save.append(chain.after_save)
    return chain


def chain_for(app: Any) -> Chain:
    chain = _chains.get(app)
    if chain is None:
        raise RuntimeError("this application has no integrity chain (build it with infra.wiring)")
    return chain


def chain_head(position: int, app: Any = None) -> ChainLink | None:
    """The chain head at ``position``: the link of the last event at or before it (None for an
    empty store), chaining up to it first if needed. For snapshots to carry: a snapshot taken at
    position P names this hash, and ``ledger verify`` proves the log up to P is the one it saw.
    Without ``app``, the store of the current settings is opened."""
    if app is None:
        from infra.wiring import build_app

        app = build_app()
    return chain_for(app).head_at(position)
