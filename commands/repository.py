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
"""

from __future__ import annotations

import zlib
from typing import Any, Iterable

from eventsourcing.application import Repository
from eventsourcing.persistence import Compressor


def mutate_all(aggregate: Any, events: Iterable[Any]) -> Any:
    """Apply ``events`` in order (``project_aggregate`` without the per-event Protocol check)."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


class LedgerRepository(Repository):
    #: The application's ``snapshotting_intervals`` (set by the application): a type missing from
    #: it is never snapshotted.
    snapshot_intervals: dict[type, int] = {}
    #: Remember at most this many aggregates (then start again: it is only a hint).
    SEEN_MAX = 500_000

    def get(self, aggregate_id: Any, *, version: int | None = None, projector_func: Any = mutate_all, **kwargs: Any) -> Any:
        aggregate = super().get(aggregate_id, version=version, projector_func=projector_func, **kwargs)
        if version is None:
            seen = self.__dict__.setdefault("_no_snapshot_yet", {})
            if len(seen) >= self.SEEN_MAX:
                seen.clear()
            interval = self.snapshot_intervals.get(type(aggregate))
            seen[aggregate_id] = interval is None or aggregate.version < interval
        return aggregate

    def _reconstruct_aggregate(self, aggregate_id: Any, version: int | None, projector_func: Any) -> Any:
        if self.snapshot_store is None or version is not None or not self.__dict__.get("_no_snapshot_yet", {}).get(aggregate_id):
            return super()._reconstruct_aggregate(aggregate_id, version, projector_func)
        from eventsourcing.application import AggregateNotFoundError

        aggregate = projector_func(None, self.event_store.get(originator_id=aggregate_id))
        if aggregate is None:
            raise AggregateNotFoundError(f"Aggregate {aggregate_id!r} version None not found.")
        return aggregate


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
