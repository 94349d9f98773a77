"""The ledger's repository: eventsourcing's own, with three savings the benchmark's profile showed
(ADR 0017). None changes what a ``get`` returns.

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

1. is the repository's public ``projector_func``; 2. and 3. live in the repository's stores
(:class:`LatestSnapshots`, :class:`FollowingEvents`: the library's ``EventStore`` and its public
``get``, which is all the library's repository reads through), not in an override of the
repository's private reconstruction. What the repository itself adds (a command's reads noted and
checked at its save, ADR 0021; bringing a stale cached aggregate forward) copies a cached
aggregate under the library's fast-forward lock per aggregate (``_use_fastforward_lock``): the
library has no public way to take it.
"""

from __future__ import annotations

import contextlib
import threading
import zlib
from collections.abc import Callable, Iterator
from copy import deepcopy
from typing import Any, Iterable, cast

from eventsourcing.application import AggregateNotFoundError, Cache, LRUCache, Repository
from eventsourcing.persistence import Compressor, EventStore


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

    def get_from_store(self, aggregate_id: Any) -> Any:
        """The aggregate as the store holds it now, never a cached copy, with the version read noted
        for the command's save (ADR 0021) like any other read: for an aggregate a command reads but
        did not itself load before (another recipient's recording of a receipt), where a cached
        copy would only make the save refuse it and the command run again."""
        aggregate = self._get(aggregate_id, None, mutate_all)
        reads = self.read_set()
        if reads is not None:
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

    def unsnapshotted(self, aggregate_id: Any) -> bool:
        """``aggregate_id`` was last seen here below its type's snapshot interval, or is of a type
        never snapshotted (2.): its latest state is read from its events alone."""
        return bool(self.__dict__.get("_no_snapshot_yet", {}).get(aggregate_id))


class _Following(threading.local):
    """What :class:`LatestSnapshots` read with a snapshot, for the event read that follows it on
    the same thread: (aggregate id, the version after which the events follow), stored events."""

    key: tuple[Any, int | None] | None = None
    stored: list[Any] = []


class LatestSnapshots(EventStore):
    """The repository's snapshot store (2., 3.). The library's repository reads an aggregate's
    latest state by asking its snapshot store for the latest snapshot, then its event store for
    the events after it (``EventStore.get``, the public reads). For the latest snapshot of an
    aggregate the repository knows has none yet, this answers none without a query; otherwise,
    where the event recorder can read both at once (``select_latest``, PostgreSQL), it does, with
    the data key decoding needs in the same round trip, and keeps the events for
    :class:`FollowingEvents`, which answers the event read that follows on this thread from them."""

    def __init__(self, snapshots: EventStore, events: EventStore, unsnapshotted: Callable[[Any], bool]):
        super().__init__(mapper=snapshots.mapper, recorder=snapshots.recorder)
        self.events = events
        self.unsnapshotted = unsnapshotted
        self.following = _Following()

    def get(self, originator_id: Any, *, gt: int | None = None, lte: int | None = None, desc: bool = False, limit: int | None = None) -> Iterator[Any]:
        self.following.key = None
        if not (gt is None and lte is None and desc and limit == 1):
            return super().get(originator_id, gt=gt, lte=lte, desc=desc, limit=limit)
        if self.unsnapshotted(originator_id):
            return iter(())
        select_latest = getattr(self.events.recorder, "select_latest", None)
        prefetch = getattr(self.events.mapper, "prefetch", None)  # the data key decoding needs: same round trip
        found = None
        if select_latest is not None:
            found = select_latest(originator_id, self.recorder, also=prefetch(originator_id) if prefetch is not None else None)
        if found is None:
            return super().get(originator_id, gt=gt, lte=lte, desc=desc, limit=limit)
        snapshot, stored = found
        latest = [self.mapper.to_domain_event(snapshot)] if snapshot is not None else []
        self.following.key = (originator_id, snapshot.originator_version if snapshot is not None else None)
        self.following.stored = stored
        return iter(latest)


class FollowingEvents(EventStore):
    """The repository's event store: the public reads of the application's, except that the read
    of the events after the snapshot :class:`LatestSnapshots` just read on this thread is answered
    from what it read with it (no second round trip). Any other read asks the recorder."""

    def __init__(self, events: EventStore, following: _Following):
        super().__init__(mapper=events.mapper, recorder=events.recorder)
        self.following = following

    def get(self, originator_id: Any, *, gt: int | None = None, lte: int | None = None, desc: bool = False, limit: int | None = None) -> Iterator[Any]:
        key, stored = self.following.key, self.following.stored
        self.following.key, self.following.stored = None, []
        if key is not None and key == (originator_id, gt) and lte is None and not desc and limit is None:
            return map(self.mapper.to_domain_event, stored)
        return super().get(originator_id, gt=gt, lte=lte, desc=desc, limit=limit)


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
    settings: cache, fast-forward, deep copies) turned into a :class:`LedgerRepository`, reading
    through :class:`LatestSnapshots` and :class:`FollowingEvents` (over the same recorders and
    mapper as the application's stores)."""
    repository.__class__ = LedgerRepository
    ledger = cast(LedgerRepository, repository)
    ledger.snapshot_intervals = dict(snapshot_intervals or {})
    if repository.snapshot_store is not None:
        snapshots = LatestSnapshots(repository.snapshot_store, repository.event_store, ledger.unsnapshotted)
        repository.event_store = FollowingEvents(repository.event_store, snapshots.following)
        repository.snapshot_store = snapshots
    return ledger


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
