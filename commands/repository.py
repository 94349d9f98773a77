"""The ledger's repository: eventsourcing's own, with a cheaper projector (ADR 0017).

``eventsourcing.application.project_aggregate`` asserts ``isinstance(event, CanMutateProtocol)``
for every event it applies. That is a ``runtime_checkable`` Protocol check, which on Python 3.11
walks the protocol's attributes each time: profiled on the benchmark's ingest it was about a
quarter of all CPU time (``typing._get_protocol_attrs``), more than the decision engine. Every
event the ledger stores is an ``eventsourcing.domain`` event with ``mutate``, so the check proves
nothing here. The repository below is the library's, with the same cache, fast-forward and
snapshot behaviour; only the default projector differs.
"""

from __future__ import annotations

from typing import Any, Iterable

from eventsourcing.application import Repository


def mutate_all(aggregate: Any, events: Iterable[Any]) -> Any:
    """Apply ``events`` in order (``project_aggregate`` without the per-event Protocol check)."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


class LedgerRepository(Repository):
    def get(self, aggregate_id: Any, *, version: int | None = None, projector_func: Any = mutate_all, **kwargs: Any) -> Any:
        return super().get(aggregate_id, version=version, projector_func=projector_func, **kwargs)
