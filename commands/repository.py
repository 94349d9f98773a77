"""The ledger's repository: eventsourcing's own, with two savings the benchmark's profile showed
(ADR 0017). Neither changes what a ``get`` returns.

1. ``eventsourcing.application.project_aggregate`` asserts ``isinstance(event, CanMutateProtocol)``
   for every event it applies: a ``runtime_checkable`` Protocol check, which on Python 3.11 walks
   the protocol's attributes each time. On the ingest it was about a quarter of all CPU time
   (``typing._get_protocol_attrs``), more than the decision engine. Every event the ledger stores
   is an ``eventsourcing.domain`` event with ``mutate``, so the check proves nothing here.
2. With snapshotting on (``LedgerApp.snapshotting_intervals``), every ``get`` first asks the
   snapshot table for the latest snapshot, then the event table: two round trips. A snapshot
   only exists once an aggregate has reached a multiple of its interval, so for an aggregate
   last seen here below its type's interval (or of a type never snapshotted) the snapshot query
   is skipped and its events are read from the start. If another process has since taken it
   past the interval, this reads more events than it had to, and the result is the same: a
   snapshot is only a shortcut.
3. Otherwise the library asks the snapshot table, waits, then asks the event table: two round
   trips for every aggregate a process reads first. The PostgreSQL recorder answers both in one
   statement (``select_latest``: the latest snapshot and the events after it), with the same
   rows, and the data key that decoding them needs in the same round trip (issue 16).
"""

from __future__ import annotations

import contextlib
import itertools
import zlib
from copy import deepcopy
from typing import Any, Iterable

from eventsourcing.application import AggregateNotFoundError, Cache, LRUCache, Repository
from eventsourcing.persistence import Compressor


def mutate_all(aggregate: Any, events: Iterable[Any]) -> Any:
    """Apply ``events`` in order (``project_aggregate`` without the per-event Protocol check)."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def _no_reads() -> dict[Any, int] | None:
    return None


class LedgerRepository(Repository):
    #: The application's ``snapshotting_intervals`` (set by the application): a type missing from
    #: it is never snapshotted.
    snapshot_intervals: dict[type, int] = {}
    #: Remember at most this many aggregates (then start again: it is only a hint).
    SEEN_MAX = 500_000
    #: The calling thread's command attempt's reads (id -> version read, 0 for none found), or
    #: None outside one (set by the application: ``LedgerCore._read_set``).
    read_set: Any = staticmethod(_no_reads)

    #: What the cached aggregates' decoding depended on (set by the wiring: the key store's
    #: erasure generation, ADR 0015): when it moves, the whole cache is dropped.
    cache_token: Any = None

    def _fresh_cache(self) -> None:
        token_now = self.cache_token
        if self.cache is None or token_now is None:
            return
        token = token_now()
        if token != self.__dict__.get("_cache_token", token):
            size = getattr(self.cache, "maxsize", None)
            self.cache = LRUCache(maxsize=size) if size else Cache()
        self.__dict__["_cache_token"] = token

    def get(self, aggregate_id: Any, *, version: int | None = None, projector_func: Any = mutate_all, **kwargs: Any) -> Any:
        if version is None:
            self._fresh_cache()
        reads = self.read_set() if version is None else None
        if reads is not None:
            return self._get_for_command(reads, aggregate_id, projector_func, **kwargs)
        return self._get(aggregate_id, version, projector_func, **kwargs)

    def _get_for_command(self, reads: dict[Any, int], aggregate_id: Any, projector_func: Any, **kwargs: Any) -> Any:
        """A read by a command (ADR 0021): the cached aggregate as it stands, without asking the
        store for newer events, and the version read noted in ``reads``. The command's save then
        proves it current: an aggregate it saves by the store's unique (id, version) key, one it
        only read by the check its transaction makes under the writers' lock (``unchanged``);
        a command that saves nothing has its reads checked before it answers
        (``LedgerCore.run``). A stale one makes the command run again, from the store."""
        cache = self.cache
        if cache is not None:
            try:
                cached = cache.get(aggregate_id)
            except KeyError:
                cached = None
            if cached is not None and cached.pending_events:  # changed and never saved: not the store's
                with contextlib.suppress(KeyError):
                    cache.get(aggregate_id, evict=True)
                cached = None
            if cached is not None and aggregate_id in self._refresh:
                # Another process changed it (a save of this process was refused): brought
                # forward by the events after the cached version (``_get``), not read again whole.
                cached = None
            if cached is not None:
                reads.setdefault(aggregate_id, cached.version)
                if not self.deepcopy_from_cache:
                    return cached
                lock = self._use_fastforward_lock(aggregate_id)  # not copied while a reader fast-forwards it
                try:
                    with lock:
                        return deepcopy(cached)
                finally:
                    self._disuse_fastforward_lock(aggregate_id)
        try:
            aggregate = self._get(aggregate_id, None, projector_func, **kwargs)
        except AggregateNotFoundError:
            reads.setdefault(aggregate_id, 0)
            raise
        reads.setdefault(aggregate_id, aggregate.version)
        return aggregate

    def remember(self, aggregates: Iterable[Any]) -> None:
        """Keep just-saved aggregates in the cache as the latest state (the library does so only
        without fast-forward). With copies handed out (``deepcopy_from_cache``) the cache keeps a
        copy too: the command goes on holding its own object (it may record more on it, and a
        later save of it may be refused), so that a cached aggregate is always one that no
        command holds, exactly a version of the store (:meth:`refresh` relies on it)."""
        cache = self.cache
        if cache is None or not self.fastforward:
            return
        for aggregate in aggregates:
            cache.put(aggregate.id, deepcopy(aggregate) if self.deepcopy_from_cache else aggregate)

    @property
    def _refresh(self) -> set[Any]:
        return self.__dict__.setdefault("_refresh_ids", set())

    def refresh(self, ids: Iterable[Any]) -> bool:
        """After a save refused because another process changed what a command read (ADR 0021):
        the next command to read one of ``ids`` brings the cached aggregate forward by the events
        recorded after it (one short read, under the aggregate's fast-forward lock), instead of the
        cache dropping it and the next read rebuilding it from its snapshot and every event since.
        Only where the cache hands out copies and fast-forwards (the ordinary wiring): there a
        cached aggregate is never one a command holds (:meth:`remember`), so it is a version of
        the store whatever the refused command did to its own copy. Returns False (nothing done)
        elsewhere: the caller then drops the aggregates from the cache."""
        if self.cache is None or not (self.fastforward and self.deepcopy_from_cache):
            return False
        if len(self._refresh) >= self.SEEN_MAX:
            # a bound, not a loss: a stale copy read after this is refused at its save again
            self._refresh.clear()
        self._refresh.update(ids)
        return True

    def hint_unsnapshotted(self, aggregate_id: Any) -> None:
        """``aggregate_id`` is of a type never snapshotted: read its events without asking the
        snapshot table first."""
        seen = self.__dict__.setdefault("_no_snapshot_yet", {})
        if len(seen) >= self.SEEN_MAX:
            seen.clear()
        seen[aggregate_id] = True

    def _get(self, aggregate_id: Any, version: int | None, projector_func: Any, **kwargs: Any) -> Any:
        # The library copies a cached aggregate after it has let go of the aggregate's
        # fast-forward lock, so another thread fast-forwarding the same cached object (events
        # another process saved) could be applying an event while the copy is made: a copy with
        # the state of one version and the number of another. The copy is made here instead,
        # under that lock, as ``_get_for_command`` makes its own.
        wanted = kwargs.pop("deepcopy_from_cache", True)
        if version is None:
            self._refresh.discard(aggregate_id)  # read from the store now (whole, or brought forward)
        copy = version is None and self.cache is not None and self.deepcopy_from_cache and wanted
        aggregate = super().get(aggregate_id, version=version, projector_func=projector_func, deepcopy_from_cache=False, **kwargs)
        if copy:
            lock = self._use_fastforward_lock(aggregate_id)
            try:
                with lock:
                    aggregate = deepcopy(aggregate)
            finally:
                self._disuse_fastforward_lock(aggregate_id)
        if version is None:
            seen = self.__dict__.setdefault("_no_snapshot_yet", {})
            if len(seen) >= self.SEEN_MAX:
                seen.clear()
            interval = self.snapshot_intervals.get(type(aggregate))
            seen[aggregate_id] = interval is None or aggregate.version < interval
        return aggregate

    def _reconstruct_aggregate(self, aggregate_id: Any, version: int | None, projector_func: Any) -> Any:
        if self.snapshot_store is None or version is not None:
            return super()._reconstruct_aggregate(aggregate_id, version, projector_func)
        if not self.__dict__.get("_no_snapshot_yet", {}).get(aggregate_id):
            return self._latest(aggregate_id, projector_func)
        aggregate = projector_func(None, self.event_store.get(originator_id=aggregate_id))
        if aggregate is None:
            raise AggregateNotFoundError(f"Aggregate {aggregate_id!r} version None not found.")
        return aggregate

    def _latest(self, aggregate_id: Any, projector_func: Any) -> Any:
        """The latest snapshot and the events after it (3.): in one statement when the recorder
        reads both at once (``select_latest``, PostgreSQL), else as the library reads them."""
        select_latest = getattr(self.event_store.recorder, "select_latest", None)
        if select_latest is None:
            return super()._reconstruct_aggregate(aggregate_id, None, projector_func)
        prefetch = getattr(self.event_store.mapper, "prefetch", None)  # the data key decoding needs: same round trip
        found = select_latest(aggregate_id, self.snapshot_store.recorder, also=prefetch(aggregate_id) if prefetch is not None else None)
        if found is None:
            return super()._reconstruct_aggregate(aggregate_id, None, projector_func)
        snapshot, stored = found
        events: Iterable[Any] = map(self.event_store.mapper.to_domain_event, stored)
        if snapshot is not None:
            events = itertools.chain((self.snapshot_store.mapper.to_domain_event(snapshot),), events)
        aggregate = projector_func(None, events)
        if aggregate is None:
            raise AggregateNotFoundError(f"Aggregate {aggregate_id!r} version None not found.")
        return aggregate


class Kept:
    """What a reading process keeps between requests (the HTTP service's rendered clearing rows and
    answers, snapshot rows per cut), each under a key naming everything it depends on: equal keys,
    equal values. The library's thread-safe LRU cache, bounded to ``limit`` entries; ``get`` gives
    None for a key not kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cache: LRUCache[Any, Any] = LRUCache(maxsize=limit)

    def get(self, key: Any) -> Any:
        try:
            return self._cache.get(key)
        except KeyError:
            return None

    def put(self, key: Any, value: Any) -> None:
        self._cache.put(key, value)


def upgrade(repository: Repository, snapshot_intervals: dict[type, int] | None) -> LedgerRepository:
    """The library's repository (as ``Application.construct_repository`` built it from the
    settings: cache, fast-forward, deep copies) turned into a :class:`LedgerRepository`."""
    repository.__class__ = LedgerRepository
    repository.snapshot_intervals = dict(snapshot_intervals or {})
    return repository  # type: ignore[return-value]


class LargeStateCompressor(Compressor):
    """zlib for the stored states that are worth it (ADR 0017, issue 16).

    Measured on the project's scenarios (``bench/event_size.py``): a v2 ``AidDecided`` stores
    ~3.5 kB of JSON that zlib takes to ~1.1 kB (0.32), while the small events (a payment, an
    enrolment, a claim's signature: a few hundred bytes) gain little and keep their state as plain
    JSON, which the integrity chain's per-field diagnosis (ADR 0016) reads. So a state is stored
    compressed only from ``THRESHOLD`` bytes on. Reading tells the two apart by the first byte: a
    JSON state starts with ``{``, a zlib stream with ``x`` (0x78). States stored before the
    compressor was installed are plain JSON, so old stores read as before.
    """

    THRESHOLD = 1024

    def compress(self, data: bytes) -> bytes:
        if len(data) < self.THRESHOLD:
            return data
        packed = zlib.compress(data)
        return packed if len(packed) < len(data) else data

    def decompress(self, data: bytes) -> bytes:
        if data[:1] != b"x":
            return data
        return zlib.decompress(data)


#: The application setting that installs it (``LedgerCore.env``).
COMPRESSOR_TOPIC = f"{__name__}:LargeStateCompressor"
