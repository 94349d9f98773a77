"""Python's cyclic collector in a service worker (ADR 0023).

A worker's heap grows with what it keeps between requests (the followed read models' runners and
the recipients the cuts view holds folded, decoded names, compiled statements, the imported
modules), while every request makes objects that outlive a young collection or two and then die.
The collector counts those as long-lived, and each time they reach a quarter of the long-lived
heap it walks the whole heap while holding the interpreter: measured under the mixed load of
``bench/http_load.py``, a full collection every 3–4 s per worker, each 100–340 ms and growing with
the heap, and every request of that worker stalled behind it (the periodic bursts of slow reads).

Here what is alive is frozen (``gc.freeze``) once a second: the collector's passes then walk
only what was allocated since. Reference counting still frees a frozen object the moment it is
dropped; only reference cycles among frozen objects wait, for the full collection that runs every
``http_gc_full_seconds`` (``LEDGER_HTTP_GC_FULL_SECONDS``, 60 s by default: the heap stays bounded
and the pause comes once a minute instead of every few seconds). 0 leaves the collector alone.
The collector is the process's, so only a worker process's own application runs this
(``create_app(worker=True)``: ``ledger serve`` and its workers); an application served inside
another process (a test client, an embedding) leaves that process's collector and its frozen heap
as they were.
"""

from __future__ import annotations

import gc
import threading
import time


class WorkerCollector:
    FREEZE_EVERY = 1.0

    def __init__(self, full_every: float) -> None:
        self.full_every = full_every
        self.full = 0  # full collections run
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.full_every <= 0 or self._thread is not None:
            return
        gc.collect()
        gc.freeze()
        self._thread = threading.Thread(target=self._run, name="ledger-gc", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_full = time.monotonic() + self.full_every
        while not self._stop.wait(self.FREEZE_EVERY):
            if time.monotonic() >= next_full:
                gc.unfreeze()
                gc.collect()
                self.full += 1
                next_full = time.monotonic() + self.full_every
            gc.freeze()

    def stop(self) -> None:
        """Stop the thread and unfreeze what it froze; a collector that never started (0) touches
        nothing."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout=5)
        self._thread = None
        gc.unfreeze()
