"""Personal data at rest (ADR 0015): field encryption in the persistence mapper, per-recipient keys.

- The personal fields of the events listed in :data:`PERSONAL_FIELDS` (and of the snapshots of
  their aggregates) are stored as an envelope ``{"_pd_": "aesgcm1", "ct": …, "ix": …}``: AES-GCM
  under the recipient's own data key, bound to the recipient, the event's originator and the field
  name (associated data). ``ix`` is a keyed hash (HMAC-SHA256 under a key derived from the master
  key) of a searchable field such as the resident id number: searchable, never the plaintext.
- Data keys live in ``recipient_keys``, wrapped (AES-GCM) by a key derived from the master key
  (``LEDGER_DATA_KEY``). Erasure deletes the wrapped key and leaves a tombstone: the ciphertext
  stays in the log (the integrity chain hashes it), but it decodes as :data:`ERASED`.
- The domain never sees any of this: ``Recipient.id_number`` and ``Recipient.name`` are plaintext
  in memory, and every adapter that goes through the application benefits.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
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
from ledger.values import ERASED

log = logging.getLogger("ledger.privacy")

ENVELOPE = "_pd_"
ALGORITHM = "aesgcm1"
DEV_KEY_MATERIAL = b"medical-aid-ledger development data key: NOT A SECRET"
KEY_CACHE_SECONDS = 30.0
_warned = False


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
        if not _warned:
            _warned = True
            log.warning(
                "LEDGER_DATA_KEY is not set: personal data is encrypted with the fixed DEVELOPMENT key, "
                "which protects nothing. Set LEDGER_DATA_KEY outside development."
            )
        return cls(DEV_KEY_MATERIAL, development=True)

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

    def status(self, recipient_id: str) -> dict[str, Any] | None:
        """``{"state": "active"|"erased", "created_at", "erased_at", "reason"}`` or None."""


class _CachedKeys:
    """Unwrapped keys kept in memory for a short while. An erasure in this process drops the key
    at once; another process sees it within :data:`KEY_CACHE_SECONDS`."""

    def __init__(self, ttl: float = KEY_CACHE_SECONDS):
        self.ttl = ttl
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[bytes | None, float]] = {}

    def get(self, rid: str) -> tuple[bool, bytes | None]:
        with self._lock:
            hit = self._keys.get(rid)
        if hit is None or time.monotonic() - hit[1] > self.ttl:
            return False, None
        return True, hit[0]

    def put(self, rid: str, key: bytes | None) -> None:
        with self._lock:
            if len(self._keys) > 50_000:
                self._keys.clear()
            self._keys[rid] = (key, time.monotonic())

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
            return had

    def status(self, recipient_id: str) -> dict[str, Any] | None:
        row = self._rows.get(recipient_id)
        if row is None:
            return None
        return {"state": "erased" if row["wrapped"] is None else "active", "created_at": row["created_at"], "erased_at": row["erased_at"], "reason": row["reason"]}


class SqlKeyStore:
    """Keys in the ``recipient_keys`` table of the event store's own database (SQLite or
    PostgreSQL), reached through the recorder's datastore so no second connection setting exists.

    Columns: recipient_id, wrapped_key (NULL once erased), key_id (which master key wrapped it),
    created_at, erased_at, erase_reason.
    """

    TABLE = "recipient_keys"

    def __init__(self, datastore: Any, master: MasterKey, *, postgres: bool):
        self.datastore = datastore
        self.master = master
        self.postgres = postgres
        self.p = "%s" if postgres else "?"
        self._cache = _CachedKeys()
        self._create_table()

    def _create_table(self) -> None:
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

    def _row(self, c: Any, rid: str) -> Any:
        c.execute(f"SELECT wrapped_key, key_id, created_at, erased_at, erase_reason FROM {self.TABLE} WHERE recipient_id = {self.p}", (rid,))
        return c.fetchone()

    def data_key(self, recipient_id: str, *, create: bool) -> bytes | None:
        hit, key = self._cache.get(recipient_id)
        if hit and (key is not None or not create):
            return key
        with self.datastore.transaction(commit=create) as c:
            if create:
                c.execute(
                    f"INSERT INTO {self.TABLE} (recipient_id, wrapped_key, key_id, created_at) "
                    f"VALUES ({self.p}, {self.p}, {self.p}, {self.p}) ON CONFLICT (recipient_id) DO NOTHING",
                    (recipient_id, self.master.wrap(recipient_id, AESGCM.generate_key(256)), self.master.key_id, _now()),
                )
            row = self._row(c, recipient_id)
        if row is None:
            return None  # no key was ever made (a store written before encryption)
        wrapped = row["wrapped_key"]
        if wrapped is None:
            self._cache.put(recipient_id, None)
            if create:
                raise _erased_error(recipient_id)
            return None
        if row["key_id"] != self.master.key_id:
            raise PersonalDataError(
                f"recipient {recipient_id}'s data key was wrapped by master key {row['key_id']}, "
                f"but LEDGER_DATA_KEY is {self.master.key_id}: set the data key this store was written with"
            )
        key = self.master.unwrap(recipient_id, bytes(wrapped))
        self._cache.put(recipient_id, key)
        return key

    def erase(self, recipient_id: str, reason: str = "") -> bool:
        with self.datastore.transaction(commit=True) as c:
            row = self._row(c, recipient_id)
            if row is None:
                c.execute(
                    f"INSERT INTO {self.TABLE} (recipient_id, wrapped_key, key_id, created_at, erased_at, erase_reason) "
                    f"VALUES ({self.p}, NULL, {self.p}, {self.p}, {self.p}, {self.p})",
                    (recipient_id, self.master.key_id, _now(), _now(), reason),
                )
                had = False
            else:
                had = row["wrapped_key"] is not None
                if had:
                    c.execute(
                        f"UPDATE {self.TABLE} SET wrapped_key = NULL, erased_at = {self.p}, erase_reason = {self.p} WHERE recipient_id = {self.p}",
                        (_now(), reason, recipient_id),
                    )
        self._cache.drop(recipient_id)
        return had

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
    return datetime.now(timezone.utc).isoformat()


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
    module = type(app.recorder).__module__
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
    still verifies, replay still works); their personal fields read as ``[erased]`` from now on."""
    r = app.recipient(recipient_id)  # raises UnknownEntity for an unknown id
    rid = str(r.id)
    had = key_store(app).erase(rid, reason)
    return {"recipient": rid, "erased": had, "already_erased": not had, **(key_store(app).status(rid) or {})}


def search_hash(app: Any) -> Callable[[str], str]:
    return key_store(app).master.search_hash
