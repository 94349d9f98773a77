"""Aggregate snapshots whose state survives the JSON transcoder exactly (issue 16, ADR 0017).

The library's ``Snapshot`` stores ``vars(aggregate)`` through the JSON transcoder, which carries
str, numbers, lists, str-keyed dicts and the registered types (UUID, Decimal, datetime), and
quietly turns a tuple into a list. A Recipient's state also holds dataclasses (facts, accounts,
cases), enums, dates, tuples and tuple-keyed maps (receipts). :class:`StateSnapshot` takes the
state through an explicit conversion into that vocabulary and back, so that a recipient rebuilt
from a snapshot equals the one rebuilt from its events:

- a dataclass of the ledger's own modules → ``{"__dc": topic, "f": {field: value}}`` (every field,
  ``init=False`` ones too; rebuilt without calling ``__init__``, frozen or not);
- an enum of the ledger's own modules → ``{"__en": topic, "v": value}``;
- a tuple → ``{"__tu": [...]}``; a date (not a datetime) → ``{"__da": iso}``;
- a dict with a key that is not a str → ``{"__map": [[key, value], ...]}``;
- a str-keyed dict whose only key starts with ``__`` (none does today) → ``{"__dict": {...}}``;
- a list or dict with nothing to convert inside → ``{"__raw": ...}``, taken back as the
  transcoder decoded it, without a walk; a dataclass field holding the same dict or list as an earlier field (an
  expense's first decision and its latest assessment, until a reassessment) → ``{"__same": name}``.

Only classes of modules under ``ledger.`` are rebuilt from a stored name. Top-level attributes
stay top-level keys, so the personal-data mapper (ADR 0015) still finds and seals ``id_number``
and ``name`` in the snapshot's state.

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Snapshot
from eventsourcing.utils import get_topic, resolve_topic

_TAGS = ("__dc", "__en", "__tu", "__da", "__map", "__dict", "__raw", "__same")
_OWN = "ledger."
_NATIVE = (str, int, float, bool)  # JSON's own scalars
_TRANSCODED = (datetime, Decimal, UUID)  # the transcoder's registered types
_resolved: dict[str, Any] = {}
#: Levels of what a value needs: JSON's own data, the transcoder's types, conversion (tags).
NATIVE, TRANSCODED, TAGGED = 2, 1, 0


def encode(value: Any) -> Any:
    """``value`` in the transcoder's vocabulary (see the module's docstring)."""
    return _wrap(*_enc(value))


def _wrap(encoded: Any, level: int) -> Any:
    """A container with nothing to convert inside is taken back as the transcoder decodes it,
    without a walk (``{"__raw": ...}``: decision summaries, most of a state). (Measured: storing
    them as JSON text for the C decoder alone was slower, the text being parsed twice.)"""
    if level and type(encoded) in (list, dict) and encoded:
        return {"__raw": encoded}
    return encoded


def _enc(value: Any) -> tuple[Any, int]:
    """(encoded, the level ``value`` needs)."""
    t = type(value)
    if value is None or t in _NATIVE:
        return value, NATIVE
    if t in _TRANSCODED:
        return value, TRANSCODED
    if t is list:
        parts = [_enc(v) for v in value]
        level = min((p for _, p in parts), default=NATIVE)
        if level:
            return value, level
        return [_wrap(e, p) for e, p in parts], TAGGED
    if t is dict:
        if all(type(k) is str for k in value):
            parts = {k: _enc(v) for k, v in value.items()}
            escaped = len(value) == 1 and next(iter(value)).startswith("__")
            level = min((p for _, p in parts.values()), default=NATIVE)
            if level and not escaped:
                return value, level
            out = {k: _wrap(e, p) for k, (e, p) in parts.items()}
            return ({"__dict": out} if escaped else out), TAGGED
        return {"__map": [[encode(k), encode(v)] for k, v in value.items()]}, TAGGED
    if t is tuple:
        return {"__tu": [encode(v) for v in value]}, TAGGED
    if t is date:
        return {"__da": value.isoformat()}, TAGGED
    if isinstance(value, Enum):
        return {"__en": _topic(t), "v": value.value}, TAGGED
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields: dict[str, Any] = {}
        seen: dict[int, str] = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if type(v) in (dict, list) and id(v) in seen:  # the same object under two names
                fields[f.name] = {"__same": seen[id(v)]}
                continue
            if type(v) in (dict, list):
                seen[id(v)] = f.name
            fields[f.name] = encode(v)
        return {"__dc": _topic(t), "f": fields}, TAGGED
    raise TypeError(f"{t.__qualname__}: not carried by a snapshot's state (ledger.snapshots)")


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`."""
    t = type(value)
    if t is list:
        return [decode(v) for v in value]
    if t is not dict:
        return value
    if len(value) <= 2 and value:
        tag = next(iter(value))
        if tag in _TAGS:
            if tag == "__raw":
                return value["__raw"]
            if tag == "__tu":
                return tuple(decode(v) for v in value["__tu"])
            if tag == "__da":
                return date.fromisoformat(value["__da"])
            if tag == "__map":
                return {decode(k): decode(v) for k, v in value["__map"]}
            if tag == "__dict":
                return {k: decode(v) for k, v in value["__dict"].items()}
            if tag == "__en":
                return _class(value["__en"])(value["v"])
            if tag == "__dc":
                cls = _class(value["__dc"])
                obj = object.__new__(cls)
                for name, v in value["f"].items():
                    if type(v) is dict and len(v) == 1 and "__same" in v:
                        object.__setattr__(obj, name, getattr(obj, v["__same"]))
                    else:
                        object.__setattr__(obj, name, decode(v))
                return obj
    return {k: decode(v) for k, v in value.items()}


def _topic(cls: type) -> str:
    topic = get_topic(cls)
    if not topic.startswith(_OWN):
        raise TypeError(f"{topic}: only the ledger's own classes go into a snapshot's state")
    return topic


def _class(topic: str) -> Any:
    cls = _resolved.get(topic)
    if cls is None:
        if not topic.startswith(_OWN):
            raise TypeError(f"{topic}: a snapshot names a class outside the ledger")
        cls = _resolved[topic] = resolve_topic(topic)
    return cls


class StateSnapshot(Snapshot):
    """A snapshot whose state goes through :func:`encode` and comes back through :func:`decode`."""

    @classmethod
    def take(cls, aggregate: Any) -> Any:
        snapshot = super().take(aggregate)
        state = {k: encode(v) for k, v in snapshot.state.items()}
        return cls(
            originator_id=snapshot.originator_id,
            originator_version=snapshot.originator_version,
            timestamp=snapshot.timestamp,
            topic=snapshot.topic,
            state=state,
        )

    def mutate(self, _: None) -> Any:
        decoded = {k: decode(v) for k, v in self.state.items()}
        plain = Snapshot(
            originator_id=self.originator_id,
            originator_version=self.originator_version,
            timestamp=self.timestamp,
            topic=self.topic,
            state=decoded,
        )
        return plain.mutate(None)
