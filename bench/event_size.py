"""Stored bytes per ``AidDecided``: the v1 shape (full parameter versions in every trace and in the
knowledge block) against v2 (parameter keys with the value applied), each plain and zlib-compressed
(what ``COMPRESSOR_TOPIC=eventsourcing.compressor:ZlibCompressor`` would store), and what the ledger
stores with ``commands.repository.LargeStateCompressor`` (issue 16, ADR 0017).

Runs the project's own scenarios (tests/scenarios) in memory twice: once with the v1 shapes put
back, once as the code writes today, and prints the mean stored state per decision event.

    .venv/bin/python -m bench.event_size
"""

from __future__ import annotations

import json
import statistics
import sys
import zlib
from pathlib import Path
from typing import Any

from commands.repository import LargeStateCompressor
from infra import scenario as sc
from ledger import engine, traces
from ledger.aggregates import Recipient

ROOT = Path(__file__).resolve().parent.parent
TOPICS = [f"{Recipient.AidDecided.__module__}:{Recipient.AidDecided.__qualname__}"]


class _V1:
    """The v1 shapes, for the duration of a ``with``."""

    def __enter__(self) -> None:
        self.saved = (engine._pv, Recipient.AidDecided.class_version, Recipient.AidReassessed.class_version, Recipient.trigger_event)  # noqa: SLF001
        real = Recipient.trigger_event

        def trigger_event(r: Any, event_class: Any, **kwargs: Any) -> Any:
            if event_class is Recipient.AidDecided:
                found: dict[str, Any] = {}
                traces.full_parameters(kwargs["decisions"], found)
                kwargs["knowledge"] = {**kwargs["knowledge"], "parameters": [found[k] for k in sorted(found)]}
            return real(r, event_class, **kwargs)

        engine._pv = lambda v: None if v is None else v.as_trace()  # noqa: SLF001
        Recipient.AidDecided.class_version = 1
        Recipient.AidReassessed.class_version = 1
        Recipient.trigger_event = trigger_event  # type: ignore[method-assign]

    def __exit__(self, *exc: Any) -> None:
        engine._pv, Recipient.AidDecided.class_version, Recipient.AidReassessed.class_version, Recipient.trigger_event = self.saved  # noqa: SLF001


def _sizes(text: str, stored: list[int] | None = None) -> list[bytes]:
    """The decision states as plain JSON (``stored`` collects the stored lengths)."""
    _, runner = sc.replay(text)
    plain = LargeStateCompressor()
    out = []
    for n in runner.app.notifications(TOPICS):
        if stored is not None:
            stored.append(len(n.state))
        out.append(plain.decompress(n.state))
    return out


def main() -> dict[str, Any]:
    old: list[bytes] = []
    new: list[bytes] = []
    stored: list[int] = []
    for path in sorted((ROOT / "tests" / "scenarios").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        with _V1():
            old += _sizes(text)
        new += _sizes(text, stored)

    def mean(states: list[bytes], compress: bool = False) -> float:
        return statistics.fmean(len(zlib.compress(s)) if compress else len(s) for s in states)

    figures = {
        "decisions": len(new),
        "v1_bytes": round(mean(old)),
        "v2_bytes": round(mean(new)),
        "v1_zlib_bytes": round(mean(old, True)),
        "v2_zlib_bytes": round(mean(new, True)),
        "v2_stored_bytes": round(statistics.fmean(stored)),  # as the ledger stores them now
    }
    figures["v2_over_v1"] = round(figures["v2_bytes"] / figures["v1_bytes"], 3)
    figures["v2_zlib_over_v2"] = round(figures["v2_zlib_bytes"] / figures["v2_bytes"], 3)
    return figures


if __name__ == "__main__":
    json.dump(main(), sys.stdout, indent=2)
    print()
