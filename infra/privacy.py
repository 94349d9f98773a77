"""Personal data at rest (ADR 0015): field encryption in the persistence mapper, per-recipient keys.

- The personal fields of the events listed in :data:`PERSONAL_FIELDS` (and of the snapshots of
  their aggregates) are stored as an envelope ``{"_pd_": "aesgcm1", "ct": …, "ix": …}``: AES-GCM
  under the recipient's own data key, bound to the recipient, the event's originator and the field
  name (associated data). ``ix`` is a keyed hash (HMAC-SHA256 under a key derived from the master
  key) of a searchable field such as the resident id number: searchable, never the plaintext.
- Data keys live in ``recipient_keys``, wrapped (AES-GCM) by a key derived from the master key
  (``LEDGER_DATA_KEY``). Erasure deletes the wrapped key and leaves a tombstone: the ciphertext
  stays in the log (the integrity chain hashes it), but it decodes as :data:`ERASED`. The old
  key's bytes are then purged from the database's pages (PostgreSQL: ``VACUUM``; SQLite:
  ``secure_delete`` and a WAL checkpoint), and every process sees the erasure on its next read
  (the store's erasure generation, checked once per request: :func:`fresh_keys`).
- The domain never sees any of this: ``Recipient.id_number`` and ``Recipient.name`` are plaintext
  in memory, and every adapter that goes through the application benefits.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eventsourcing.domain import CanSnapshotAggregate
from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent
from eventsourcing.utils import get_topic, resolve_topic

from ledger import errors
from ledger.aggregates import Claim, Recipient
from ledger.values import CST, ERASED

log = logging.getLogger("ledger.privacy")

ENVELOPE = "_pd_"
ALGORITHM = "aesgcm1"
DEV_KEY_MATERIAL = b"medical-aid-ledger development data key: NOT A SECRET"
#: Outside a :func:`fresh_keys` scope (a long-running follower, not the HTTP service), how long
#: unwrapped keys are trusted before the store's erasure generation is read again.
KEY_CACHE_SECONDS = 5.0
#: How long an erasure waits for what still holds the old key (a transaction that began before
#: it) before it reports the purge as unconfirmed.
PURGE_WAIT_SECONDS = 5.0
_warned = False
#: Set to the announcing process's id once the development key was announced: the worker
#: processes it starts (a parallel rebuild) inherit it and stay quiet, so one command invocation
#: warns once.
ANNOUNCED_ENV = "LEDGER_DEV_KEY_ANNOUNCED"


def _announced_by_parent() -> bool:
    owner = os.environ.get(ANNOUNCED_ENV, "")
    return bool(owner) and owner != str(os.getpid())


class PersonalDataError(RuntimeError):
    """The stored personal data cannot be read with this master key (wrong LEDGER_DATA_KEY)."""


# ---------------------------------------------------------------------------------------------
# Which fields are personal


@dataclass(frozen=True)
class PersonalFields:
    """Personal fields of one event class (or one aggregate's snapshots).

    ``owner``: the state key that holds the recipient id whose key protects the fields; ``None``
    means the event's originator is the recipient. ``searchable``: fields that also get a keyed
    hash (``ix``) so they can be found without decrypting.
    """

    fields: tuple[str, ...]
    owner: str | None = None
    searchable: tuple[str, ...] = ()


#: Event topic → its personal fields. Add a future address, bank account or diagnosis here (or
#: with :func:`register_personal_fields`) and it is encrypted from then on.
PERSONAL_FIELDS: dict[str, PersonalFields] = {}
#: Aggregate topic → the personal attributes its snapshots carry.
SNAPSHOT_FIELDS: dict[str, PersonalFields] = {}


def register_personal_fields(
    event_class: type, *fields: str, owner: str | None = None, searchable: tuple[str, ...] = (), aggregate: type | None = None
) -> None:
    """Declare ``fields`` of ``event_class`` personal; ``aggregate``'s snapshots carry them too."""
    spec = PersonalFields(tuple(fields), owner, tuple(searchable))
    PERSONAL_FIELDS[get_topic(event_class)] = spec
    if aggregate is not None:
        known = SNAPSHOT_FIELDS.get(get_topic(aggregate))
        merged = PersonalFields(
            tuple(dict.fromkeys((*(known.fields if known else ()), *fields))),
            owner,
            tuple(dict.fromkeys((*(known.searchable if known else ()), *searchable))),
        )
        SNAPSHOT_FIELDS[get_topic(aggregate)] = merged


register_personal_fields(Recipient.Enrolled, "id_number", "name", searchable=("id_number",), aggregate=Recipient)
# R-PH-9 [002 4.7]: a proxy's identity is recorded; it is the proxy's personal data, kept under
# the recipient's key so that erasing the recipient erases it too.
register_personal_fields(Claim.Lodged, "proxy_id_number", owner="recipient_id", searchable=("proxy_id_number",), aggregate=Claim)


def normalise_id_number(value: str) -> str:
    return value.strip().upper()


# ---------------------------------------------------------------------------------------------
# The master key and what is derived from it


class MasterKey:
    """The master key (``LEDGER_DATA_KEY``) and the sub-keys derived from it with HKDF-SHA256:
    one wraps data keys, one keys the search hash, one seals integrity checkpoints."""

    def __init__(self, material: bytes, *, development: bool = False):
        if not material:
            raise ValueError("the data key is empty")
        self.development = development
        self.wrap_key = _derive(material, b"ledger/wrap-data-keys/v1")
        self.index_key = _derive(material, b"ledger/search-index/v1")
        self.seal_key = _derive(material, b"ledger/chain-seal/v1")
        self.key_id = hmac.new(self.wrap_key, b"key-id", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_setting(cls, data_key: str | None) -> "MasterKey":
        """``LEDGER_DATA_KEY`` (any secret string; 32 random bytes in base64 recommended), or the
        fixed development key with a warning when it is unset."""
        global _warned
        if data_key:
            return cls(data_key.encode("utf-8"))
        if not _warned and not _announced_by_parent():
            _warned = True
            os.environ[ANNOUNCED_ENV] = str(os.getpid())
            log.warning(
                "LEDGER_DATA_KEY is not set: personal data is encrypted with the fixed DEVELOPMENT key, "
                "which protects nothing. Set LEDGER_DATA_KEY outside development."
            )
        return cls(DEV_KEY_MATERIAL, development=True)

    @staticmethod
    def announced() -> None:
        """The development key was already announced (``ledger serve`` on loopback gives one
        warning for every development setting): do not warn again."""
        global _warned
        _warned = True
        os.environ[ANNOUNCED_ENV] = str(os.getpid())

    @classmethod
    def ephemeral(cls) -> "MasterKey":
        """A random key for a store that lives only in memory (the scenario runner)."""
        return cls(os.urandom(32))

    def search_hash(self, value: str) -> str:
        """The keyed hash of a searchable value (the resident id number is normalised first)."""
        return hmac.new(self.index_key, normalise_id_number(value).encode("utf-8"), hashlib.sha256).hexdigest()

    def seal(self, text: str) -> str:
        return hmac.new(self.seal_key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def wrap(self, recipient_id: str, data_key: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self.wrap_key).encrypt(nonce, data_key, recipient_id.encode())

    def unwrap(self, recipient_id: str, wrapped: bytes) -> bytes:
        return AESGCM(self.wrap_key).decrypt(wrapped[:12], wrapped[12:], recipient_id.encode())


def _derive(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"medical-aid-ledger", info=info).derive(material)


# ---------------------------------------------------------------------------------------------
# Where data keys live


class KeyStore(Protocol):
    master: MasterKey

    def data_key(self, recipient_id: str, *, create: bool) -> bytes | None:
        """The recipient's data key; ``None`` when erased (or, without ``create``, absent).
        With ``create`` an absent key is made; an erased one raises PersonalDataErased."""

    def erase(self, recipient_id: str, reason: str = "") -> bool:
        """Delete the key (crypto-shredding); True if there was a key to delete."""

    def purge(self) -> bool:
        """Remove what the store may still hold of erased keys outside its live rows (dead row
        versions, freed page space, the write-ahead log); True when that is confirmed."""

    def status(self, recipient_id: str) -> dict[str, Any] | None:
        """``{"state": "active"|"erased", "created_at", "erased_at", "reason"}`` or None."""


_scope: ContextVar["_KeyScope | None"] = ContextVar("ledger_key_scope", default=None)


class _KeyScope:
    """One request: the key stores whose erasure generation it has already read."""

    __slots__ = ("checked",)

    def __init__(self) -> None:
        self.checked: set[int] = set()


@contextmanager
def fresh_keys() -> Iterator[None]:
    """Everything read inside sees every erasure committed before the scope began, in whichever
    process it was made (ADR 0015): the first decryption in the scope reads the store's erasure
    generation (with the key, in the same query) and drops every cached key if it moved. The
    HTTP service opens one scope per request (``infra.http.guard``)."""
    token = _scope.set(_KeyScope())
    try:
        yield
    finally:
        _scope.reset(token)


class _CachedKeys:
    """Unwrapped keys kept in memory, valid for one erasure generation of the store.

    Every erasure raises the store's generation in the transaction that deletes the key. A key
    is cached with the generation read in the same statement as the key; the cache only moves
    forward, and moving drops everything: a key read before an erasure can never be served after
    a read that saw the erasure's generation. Outside a :func:`fresh_keys` scope the generation
    is re-read when the last reading is older than the ttl."""

    def __init__(self, ttl: float = KEY_CACHE_SECONDS):
        self.ttl = ttl
        self._lock = threading.Lock()
        self._keys: dict[str, bytes | None] = {}
        self.generation = -1
        self._checked_at = float("-inf")

    def get(self, rid: str) -> tuple[bool, bytes | None]:
        with self._lock:
            if rid not in self._keys:
                return False, None
            return True, self._keys[rid]

    def stale(self) -> bool:
        return time.monotonic() - self._checked_at > self.ttl

    def observe(self, generation: int) -> None:
        """The store's generation as just read: a newer one drops every cached key."""
        with self._lock:
            if generation > self.generation:
                self._keys.clear()
                self.generation = generation
            if generation >= self.generation:
                self._checked_at = time.monotonic()

    def put(self, rid: str, key: bytes | None, generation: int) -> None:
        with self._lock:
            if generation != self.generation:
                return  # read under an older generation: an erasure may have come since
            if len(self._keys) > 50_000:
                self._keys.clear()
            self._keys[rid] = key

    def drop(self, rid: str) -> None:
        with self._lock:
            self._keys.pop(rid, None)


def _erased_error(rid: str) -> errors.LedgerError:
    return errors.PersonalDataErased(
        f"the personal data of recipient {rid} was erased: no new personal data can be recorded for them",
        field="recipient",
    )


class MemoryKeyStore:
    """Keys for an in-memory store (the scenario runner, tests)."""

    def __init__(self, master: MasterKey):
        self.master = master
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}

    def data_key(self, recipient_id: str, *, create: bool) -> bytes | None:
        with self._lock:
            row = self._rows.get(recipient_id)
            if row is None:
                if not create:
                    return None
                row = {"wrapped": self.master.wrap(recipient_id, AESGCM.generate_key(256)), "created_at": _now(), "erased_at": None, "reason": None}
                self._rows[recipient_id] = row
            if row["wrapped"] is None:
                if create:
                    raise _erased_error(recipient_id)
                return None
            return self.master.unwrap(recipient_id, row["wrapped"])

    def erase(self, recipient_id: str, reason: str = "") -> bool:
        with self._lock:
            row = self._rows.setdefault(recipient_id, {"wrapped": None, "created_at": _now(), "erased_at": None, "reason": None})
            had = row["wrapped"] is not None
            row.update(wrapped=None, erased_at=row["erased_at"] or _now(), reason=row["reason"] or reason)
            self._erasures = getattr(self, "_erasures", 0) + 1
            return had

    def generation_now(self) -> int:
        """How many erasures this store has seen (the aggregate cache drops what it decoded before)."""
        return getattr(self, "_erasures", 0)

    def purge(self) -> bool:
        return True  # the wrapped key was dropped with the row's reference; nothing else holds it

    def status(self, recipient_id: str) -> dict[str, Any] | None:
        row = self._rows.get(recipient_id)
        if row is None:
            return None
        return {"state": "erased" if row["wrapped"] is None else "active", "created_at": row["created_at"], "erased_at": row["erased_at"], "reason": row["reason"]}


class SqlKeyStore:
    """Keys in the ``recipient_keys`` table of the event store's own database (SQLite or
    PostgreSQL), reached through the recorder's datastore so no second connection setting exists.

    Columns: recipient_id, wrapped_key (NULL once erased), key_id (which master key wrapped it),
    created_at, erased_at, erase_reason. ``recipient_key_erasures`` holds one row, the store's
    erasure generation, raised by every erasure in the same transaction: any process reads it
    with a key and drops its cached keys when it moved (:class:`_CachedKeys`).
    """

    TABLE = "recipient_keys"
    GENERATION = "recipient_key_erasures"

    def __init__(self, datastore: Any, master: MasterKey, *, postgres: bool):
        self.datastore = datastore
        self.master = master
        self.postgres = postgres
        self.p = "%s" if postgres else "?"
        self._cache = _CachedKeys()
        self._create_table()

    def _create_table(self) -> None:
        """Create the key tables if missing. On SQLite a writer busy elsewhere makes the upgrade from
        the read of the schema to the write fail at once ("database is locked") rather than wait,
        so the attempt is repeated with a short jittered pause, for up to 30 s."""
        deadline = time.monotonic() + 30.0
        while True:
            try:
                return self._create_table_once()
            except Exception as exc:  # noqa: BLE001 - only SQLite's lock is retried
                if self.postgres or "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.01, 0.2))

    def _create_table_once(self) -> None:
        blob = "bytea" if self.postgres else "BLOB"
        with self.datastore.transaction(commit=True) as c:
            if self.postgres:
                # Concurrent CREATE TABLE IF NOT EXISTS can still collide in PostgreSQL's catalog.
                c.execute("SELECT pg_advisory_xact_lock(hashtext('ledger.recipient_keys'))")
            c.execute(
                f"CREATE TABLE IF NOT EXISTS {self.TABLE} ("
                "recipient_id TEXT PRIMARY KEY, "
                f"wrapped_key {blob}, "
                "key_id TEXT NOT NULL, "
                "created_at TEXT NOT NULL, "
                "erased_at TEXT, "
                "erase_reason TEXT)"
            )
            c.execute(f"CREATE TABLE IF NOT EXISTS {self.GENERATION} (id INTEGER PRIMARY KEY, generation BIGINT NOT NULL)")
            c.execute(f"INSERT INTO {self.GENERATION} (id, generation) VALUES (1, 0) ON CONFLICT (id) DO NOTHING")

    def _row(self, c: Any, rid: str) -> Any:
        c.execute(f"SELECT wrapped_key, key_id, created_at, erased_at, erase_reason FROM {self.TABLE} WHERE recipient_id = {self.p}", (rid,))
        return c.fetchone()

    def _generation(self, c: Any) -> int:
        c.execute(f"SELECT generation FROM {self.GENERATION} WHERE id = 1")
        return int(c.fetchone()["generation"])

    def _must_check(self) -> bool:
        scope = _scope.get()
        if scope is not None:
            return id(self) not in scope.checked
        return self._cache.stale()

    def generation_now(self) -> int:
        """The store's erasure generation, read again when a key read would be (once per
        :func:`fresh_keys` scope, else after the ttl): the aggregate cache, which holds decoded
        personal fields, is dropped when it moves (ADR 0021), so an erasure reaches every process
        as it does for keys."""
        if self._must_check():
            with self._key_cursor(False) as c:
                generation = self._generation(c)
            self._cache.observe(generation)
            scope = _scope.get()
            if scope is not None:
                scope.checked.add(id(self))
        return self._cache.generation

    def _key_cursor(self, create: bool) -> Any:
        """A cursor for reading a key: PostgreSQL answers the one ``SELECT`` of a read in
        autocommit (one statement is one snapshot) in one round trip, where a transaction block
        costs three (``BEGIN``, the query, ``ROLLBACK``; issue 16). Creating one, and SQLite,
        keep the transaction."""
        if create or not self.postgres or not hasattr(self.datastore, "get_connection"):
            return self.datastore.transaction(commit=create)
        return _autocommit_cursor(self.datastore)

    def data_key(self, recipient_id: str, *, create: bool) -> bytes | None:
        if not create and not self._must_check():
            hit, key = self._cache.get(recipient_id)
            if hit:
                return key
        with self._key_cursor(create) as c:
            if create:
                # Always asked of the store: an erasure in another process refuses new personal
                # data at once (PERSONAL_DATA_ERASED), never seals it under a shredded key.
                c.execute(
                    f"INSERT INTO {self.TABLE} (recipient_id, wrapped_key, key_id, created_at) "
                    f"VALUES ({self.p}, {self.p}, {self.p}, {self.p}) ON CONFLICT (recipient_id) DO NOTHING",
                    (recipient_id, self.master.wrap(recipient_id, AESGCM.generate_key(256)), self.master.key_id, _now()),
                )
            # The generation and the key in one statement (one snapshot): if the key is still
            # there, no erasure of it had committed, so the generation read is older than any.
            c.execute(self._key_query, (recipient_id,))
            row = c.fetchone()
        return self._absorb(recipient_id, row, create)

    @property
    def _key_query(self) -> str:
        return (
            f"SELECT g.generation, k.wrapped_key, k.key_id FROM {self.GENERATION} g "
            f"LEFT JOIN {self.TABLE} k ON k.recipient_id = {self.p} WHERE g.id = 1"
        )

    def _absorb(self, recipient_id: str, row: Any, create: bool) -> bytes | None:
        """The key (or None) from the row of :attr:`_key_query`, cached with its generation."""
        generation = int(row["generation"])
        self._cache.observe(generation)
        scope = _scope.get()
        if scope is not None:
            scope.checked.add(id(self))
        if row["key_id"] is None:
            return None  # no key was ever made (a store written before encryption)
        wrapped = row["wrapped_key"]
        if wrapped is None:
            self._cache.put(recipient_id, None, generation)
            if create:
                raise _erased_error(recipient_id)
            return None
        if row["key_id"] != self.master.key_id:
            raise PersonalDataError(
                f"recipient {recipient_id}'s data key was wrapped by master key {row['key_id']}, "
                f"but LEDGER_DATA_KEY is {self.master.key_id}: set the data key this store was written with"
            )
        key = self.master.unwrap(recipient_id, bytes(wrapped))
        self._cache.put(recipient_id, key, generation)
        return key

    def prefetch(self, recipient_id: str) -> tuple[str, tuple[Any, ...], Callable[[Any], None]] | None:
        """The read of ``recipient_id``'s key as a statement to send with another read in one
        round trip (``PersonalDataMapper.prefetch``): (query, params, what to do with its row),
        or None when the key is cached and current, or on SQLite. The row goes through the same
        checks as :meth:`data_key`'s; a key that does not exist (yet) is not cached."""
        if not self.postgres:
            return None
        if not self._must_check() and self._cache.get(recipient_id)[0]:
            return None

        def absorb(row: Any) -> None:
            if row is not None:
                with contextlib.suppress(PersonalDataError):  # a wrong master key is reported by the read itself
                    self._absorb(recipient_id, row, False)

        return self._key_query, (recipient_id,), absorb

    def erase(self, recipient_id: str, reason: str = "") -> bool:
        with self.datastore.transaction(commit=True) as c:
            if not self.postgres:
                # SQLite overwrites the freed space of the old row with zeros (some builds do
                # by default, not all): the wrapped key is not left in the page's free space.
                c.execute("PRAGMA secure_delete = ON")
            row = self._row(c, recipient_id)
            if row is None:
                c.execute(
                    f"INSERT INTO {self.TABLE} (recipient_id, wrapped_key, key_id, created_at, erased_at, erase_reason) "
                    f"VALUES ({self.p}, NULL, {self.p}, {self.p}, {self.p}, {self.p})",
                    (recipient_id, self.master.key_id, _now(), _now(), reason),
                )
                had, changed = False, True
            else:
                had = changed = row["wrapped_key"] is not None
                if had:
                    c.execute(
                        f"UPDATE {self.TABLE} SET wrapped_key = NULL, erased_at = {self.p}, erase_reason = {self.p} WHERE recipient_id = {self.p}",
                        (_now(), reason, recipient_id),
                    )
            if changed:
                c.execute(f"UPDATE {self.GENERATION} SET generation = generation + 1 WHERE id = 1")
            generation = self._generation(c)
        self._cache.observe(generation)
        self._cache.drop(recipient_id)
        return had

    def purge(self, wait: float | None = None) -> bool:
        """After an erasure, remove the old key from where the live database still holds it.

        PostgreSQL keeps the updated row's old version (with the key) as a dead tuple until
        VACUUM, which cannot run in a transaction: it runs on an autocommit connection, and the
        table's count of dead tuples left (tuples a transaction older than the erasure can still
        see) must come back 0. SQLite: the pages with the key may sit in the write-ahead log (and
        the old page in the file until it is checkpointed): a TRUNCATE checkpoint writes the
        zeroed page into the file and empties the log; it must not be blocked by a reader.
        Retried for ``wait`` seconds (:data:`PURGE_WAIT_SECONDS`); False if still unconfirmed
        (run the erasure again later).
        """
        deadline = time.monotonic() + (PURGE_WAIT_SECONDS if wait is None else wait)
        delay = 0.05
        while True:
            if self._purge_once():
                return True
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _purge_once(self) -> bool:
        if self.postgres:
            with self.datastore.get_connection() as conn:  # autocommit (eventsourcing sets it)
                conn.execute(f"VACUUM {self.TABLE}")
                row = conn.execute(
                    "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = %s::regclass", (self.TABLE,)
                ).fetchone()
            dead = row["n_dead_tup"] if isinstance(row, dict) else row[0]
            return dead == 0
        if getattr(self.datastore.pool, "is_sqlite_memory_mode", False):
            return True  # no file, no log
        with self.datastore.get_connection(commit=True) as conn:
            cursor = conn.cursor()
            cursor.execute("PRAGMA busy_timeout")
            timeout = int(cursor.fetchone()[0])
            cursor.execute("PRAGMA busy_timeout = 200")  # a reader holding an old snapshot: retried here
            try:
                cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                busy = cursor.fetchone()[0]
            finally:
                cursor.execute(f"PRAGMA busy_timeout = {timeout}")
        return busy == 0

    def status(self, recipient_id: str) -> dict[str, Any] | None:
        with self.datastore.transaction(commit=False) as c:
            row = self._row(c, recipient_id)
        if row is None:
            return None
        return {
            "state": "erased" if row["wrapped_key"] is None else "active",
            "created_at": row["created_at"],
            "erased_at": row["erased_at"],
            "reason": row["erase_reason"],
        }


def _now() -> str:
    return datetime.now(CST).isoformat()  # people's clock, +08:00


@contextmanager
def _autocommit_cursor(datastore: Any) -> Iterator[Any]:
    """A cursor of the PostgreSQL datastore's pool (autocommit) with the library's errors."""
    with datastore.get_connection() as conn, conn.cursor() as c:
        yield c


# ---------------------------------------------------------------------------------------------
# The mapper


class PersonalDataMapper(Mapper):
    """eventsourcing's Mapper with one more step: personal fields are sealed field by field
    before the state is encoded (and any whole-event compressor or cipher still applies after),
    and opened after it is decoded, before upcasting. Everything else is the library's own code.

    It must be bound to a key store (:func:`install`) before it writes personal data: unbound, it
    refuses rather than store plaintext.
    """

    keys: KeyStore | None = None

    # -- write -----------------------------------------------------------------------------
    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        topic = get_topic(domain_event.__class__)
        event_state = dict(vars(domain_event))
        originator_id = event_state.pop("originator_id")
        originator_version = event_state.pop("originator_version")
        class_version = getattr(type(domain_event), "class_version", 1)
        if class_version > 1:
            event_state["class_version"] = class_version
        self._seal_state(domain_event, topic, str(originator_id), event_state)
        stored_state = self.transcoder.encode(event_state)
        if self.compressor:
            stored_state = self.compressor.compress(stored_state)
        if self.cipher:
            stored_state = self.cipher.encrypt(stored_state)
        return StoredEvent(originator_id=originator_id, originator_version=originator_version, topic=topic, state=stored_state)

    def _seal_state(self, domain_event: Any, topic: str, originator: str, event_state: dict[str, Any]) -> None:
        if isinstance(domain_event, CanSnapshotAggregate):
            spec = SNAPSHOT_FIELDS.get(event_state.get("topic", ""))
            if spec is not None:
                inner = dict(event_state["state"])
                self._seal_fields(spec, originator, inner)
                event_state["state"] = inner
            return
        spec = PERSONAL_FIELDS.get(topic)
        if spec is not None:
            self._seal_fields(spec, originator, event_state)

    def _seal_fields(self, spec: PersonalFields, originator: str, state: dict[str, Any]) -> None:
        present = [f for f in spec.fields if isinstance(state.get(f), str) and state[f] != ERASED]
        if not present:
            return
        if self.keys is None:
            raise PersonalDataError("personal data would be stored in plaintext: the mapper has no key store (use infra.wiring)")
        owner = _owner(spec, originator, state)
        key = self.keys.data_key(owner, create=True)
        if key is None:  # pragma: no cover - create=True either returns a key or raises
            raise _erased_error(owner)
        for f in present:
            plaintext = state[f].encode("utf-8")
            nonce = os.urandom(12)
            envelope = {ENVELOPE: ALGORITHM, "ct": _b64(nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(owner, originator, f)))}
            if f in spec.searchable:
                envelope["ix"] = self.keys.master.search_hash(state[f])
            state[f] = envelope

    # -- read ------------------------------------------------------------------------------
    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        cls = resolve_topic(stored_event.topic)
        stored_state = stored_event.state
        try:
            if self.cipher:
                stored_state = self.cipher.decrypt(stored_state)
            if self.compressor:
                stored_state = self.compressor.decompress(stored_state)
            event_state: dict[str, Any] = self.transcoder.decode(stored_state)
        except Exception as e:
            msg = (
                f"Failed to deserialise state of stored event with topic '{stored_event.topic}', "
                f"originator_id '{stored_event.originator_id}' and originator_version {stored_event.originator_version}: {e}"
            )
            raise MapperDeserialisationError(msg) from e
        self._open_state(cls, stored_event.topic, str(stored_event.originator_id), event_state)
        return self._build(cls, stored_event, event_state)

    def prefetch(self, originator_id: Any) -> tuple[str, tuple[Any, ...], Callable[[Any], None]] | None:
        """The read of the data key that decoding ``originator_id``'s events (a recipient's) will
        need, for the recorder to send with the events' own read in one round trip; None when
        the key is cached and current, or the key store cannot say (issue 16)."""
        fetch = getattr(self.keys, "prefetch", None)
        return fetch(str(originator_id)) if fetch is not None else None

    def _build(self, cls: Any, stored_event: StoredEvent, event_state: dict[str, Any]) -> Any:
        from eventsourcing.persistence import find_id_convertor

        id_convertor = find_id_convertor(cls, type(stored_event.originator_id))
        event_state["originator_id"] = id_convertor(stored_event.originator_id)
        event_state["originator_version"] = stored_event.originator_version
        class_version = getattr(cls, "class_version", 1)
        from_version = event_state.pop("class_version", 1)
        while from_version < class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(event_state)
            from_version += 1
        domain_event = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", event_state)
        return domain_event

    def _open_state(self, cls: Any, topic: str, originator: str, event_state: dict[str, Any]) -> None:
        if isinstance(cls, type) and issubclass(cls, CanSnapshotAggregate):
            spec = SNAPSHOT_FIELDS.get(event_state.get("topic", ""))
            if spec is not None and isinstance(event_state.get("state"), dict):
                self._open_fields(spec, originator, event_state["state"])
            return
        spec = PERSONAL_FIELDS.get(topic)
        if spec is not None:
            self._open_fields(spec, originator, event_state)

    def _open_fields(self, spec: PersonalFields, originator: str, state: dict[str, Any]) -> None:
        sealed = [f for f in spec.fields if isinstance(state.get(f), dict) and ENVELOPE in state[f]]
        if not sealed:
            return  # plaintext written before encryption, or nothing personal in this event
        if self.keys is None:
            raise PersonalDataError("stored personal data is encrypted, but the mapper has no key store (use infra.wiring)")
        owner = _owner(spec, originator, state)
        key = self.keys.data_key(owner, create=False)
        for f in sealed:
            if key is None:
                state[f] = ERASED
                continue
            blob = base64.b64decode(state[f]["ct"])
            try:
                state[f] = AESGCM(key).decrypt(blob[:12], blob[12:], _aad(owner, originator, f)).decode("utf-8")
            except InvalidTag:
                raise PersonalDataError(
                    f"field {f!r} of an event of {originator} does not decrypt: the stored ciphertext was altered"
                ) from None


def _owner(spec: PersonalFields, originator: str, state: dict[str, Any]) -> str:
    if spec.owner is None:
        return originator
    return str(uuid.UUID(str(state[spec.owner])))


def _aad(owner: str, originator: str, field_name: str) -> bytes:
    return f"{owner}|{originator}|{field_name}".encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Wiring and erasure

MAPPER_TOPIC = get_topic(PersonalDataMapper)


def install(app: Any, master: MasterKey) -> KeyStore:
    """Bind the application's mapper to a key store on its own database, and make recipient ids
    keyed hashes of the id number. The app must have been built with ``MAPPER_TOPIC``."""
    if not isinstance(app.mapper, PersonalDataMapper):
        raise PersonalDataError("the application was not built with the personal-data mapper (MAPPER_TOPIC)")
    datastore = getattr(app.recorder, "datastore", None)
    module = type(datastore).__module__  # the library's datastore (the recorder may be a subclass: ADR 0016)
    if datastore is None:
        store: KeyStore = MemoryKeyStore(master)
    else:
        store = SqlKeyStore(datastore, master, postgres=module.startswith("eventsourcing.postgres"))
    app.mapper.keys = store
    if app.snapshots is not None and app.snapshots.mapper is not app.mapper:  # pragma: no cover - one mapper today
        app.snapshots.mapper.keys = store
    app.id_number_digest = master.search_hash
    return store


def key_store(app: Any) -> KeyStore:
    keys = getattr(app.mapper, "keys", None)
    if keys is None:
        raise PersonalDataError("this application has no key store (build it with infra.wiring)")
    return keys


def erase(app: Any, recipient_id: uuid.UUID | str, reason: str = "") -> dict[str, Any]:
    """Crypto-shredding: delete the recipient's data key. Their events stay (the integrity chain
    still verifies, replay still works); their personal fields read as ``[erased]`` from now on,
    in every process (the next request of a running service already does).

    Then the old key is purged from the database's pages (:meth:`SqlKeyStore.purge`), also when
    the recipient was already erased, so running the erasure again finishes a purge that a long
    transaction held up. ``purged`` says whether it is confirmed. Copies made before (backups,
    archived WAL) are out of reach: ADR 0015 says how they are handled."""
    r = app.recipient(recipient_id)  # raises UnknownEntity for an unknown id
    rid = str(r.id)
    keys = key_store(app)
    had = keys.erase(rid, reason)
    purged = keys.purge()
    return {"recipient": rid, "erased": had, "already_erased": not had, "purged": purged, **(keys.status(rid) or {})}


def search_hash(app: Any) -> Callable[[str], str]:
    return key_store(app).master.search_hash
