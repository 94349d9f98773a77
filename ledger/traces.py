"""Parameter references in stored decision traces (R-TIME-1, ADR 0017).

A decision's trace names each parameter version it applied by its identity (the parameter's
``name``, its ``effective_from`` and the moment it was ``published_at``: a later publication with
the same name and start is another version) together with the ``value`` applied, so an auditor
sees the rate or limit without a lookup. What the PolicyLedger already holds (the clause
reference, whether it is a local setting, its end, its source) is not copied into every decision:
the explanation reads it back by key from the PolicyLedger at the decision's recorded policy
version, which is immutable history.

``slim`` turns the full form decisions stored before (``ParameterVersion.as_trace()``) into the
reference form; the ``AidDecided``/``AidReassessed`` upcasters use it, so old stores read the same
as new ones. ``inflate`` does the reverse from a policy book, for explanations.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from ledger.policy.params import ParameterVersion, PolicyBook, _jsonable

#: The keys of a parameter version in the full form (``ParameterVersion.as_trace``).
FULL_KEYS = frozenset(
    {"name", "value", "effective_from", "effective_to", "reference", "local_setting", "source", "published_at"}
)
#: The keys of a parameter reference in a trace.
REF_KEYS = frozenset({"name", "value", "effective_from", "published_at"})


def ref(version: ParameterVersion) -> dict[str, Any]:
    """The reference a trace stores for ``version``: its identity and the value applied."""
    return {
        "name": version.name,
        "value": _jsonable(version.value),
        "effective_from": version.effective_from.isoformat(),
        "published_at": version.published_at.isoformat(),
    }


def key_of(item: dict[str, Any]) -> str:
    """The identity of a parameter version, from its reference or its full form."""
    return f"{item['name']}@{item['effective_from']}@{item['published_at']}"


def version_key(version: ParameterVersion) -> str:
    return f"{version.name}@{version.effective_from.isoformat()}@{version.published_at.isoformat()}"


def is_full(item: Any) -> bool:
    return isinstance(item, dict) and item.keys() == FULL_KEYS


def is_ref(item: Any) -> bool:
    return isinstance(item, dict) and item.keys() == REF_KEYS


def slim(value: Any) -> Any:
    """``value`` with every full parameter version replaced by its reference (a new structure)."""
    if isinstance(value, dict):
        if value.keys() == FULL_KEYS:
            return {k: value[k] for k in ("name", "value", "effective_from", "published_at")}
        return {k: slim(v) for k, v in value.items()}
    if isinstance(value, list):
        return [slim(v) for v in value]
    return value


def keys_in(value: Any, found: set[str] | None = None) -> set[str]:
    """The keys of every parameter reference (or full version) inside ``value``."""
    found = set() if found is None else found
    if isinstance(value, dict):
        if value.keys() == REF_KEYS or value.keys() == FULL_KEYS:
            found.add(key_of(value))
        else:
            for v in value.values():
                keys_in(v, found)
    elif isinstance(value, list):
        for v in value:
            keys_in(v, found)
    return found


def index(book: PolicyBook) -> dict[str, ParameterVersion]:
    """Every version of ``book`` by key."""
    return {version_key(v): v for v in book.versions}


def inflate(value: Any, versions: dict[str, ParameterVersion]) -> Any:
    """``value`` with every reference replaced by the full version it names (as the trace stored it
    before references): the value applied stays the one the trace recorded. A reference the book
    does not hold keeps what it has, with the missing fields empty."""
    if isinstance(value, dict):
        if value.keys() == REF_KEYS:
            found = versions.get(key_of(value))
            full = found.as_trace() if found is not None else dict.fromkeys(FULL_KEYS)
            full.update(value)
            if found is None:
                full["local_setting"] = False
            return full
        return {k: inflate(v, versions) for k, v in value.items()}
    if isinstance(value, list):
        return [inflate(v, versions) for v in value]
    return value


def full_parameters(value: Any, found: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Every full parameter version (``is_full``) anywhere inside a decision's summaries or
    knowledge, by key: what a v1 ``AidDecided`` copied and a v2 one no longer does."""
    found = {} if found is None else found
    if isinstance(value, dict):
        if is_full(value):
            found[key_of(value)] = value
        else:
            for v in value.values():
                full_parameters(v, found)
    elif isinstance(value, list):
        for v in value:
            full_parameters(v, found)
    return found
