"""(V, T) snapshots for the HTTP service and the console, from the persisted cuts (R-TIME-3).

R-TIME-3 [RULES.md §1]: the snapshot at (valid date V, known-at time T). A request never replays
the whole log (ADR 0008, ADR 0010): the cuts view (``projections.cuts``) is brought to the log's
head on the service's read-model engine, then ``commands.snapshot.snapshot_from_cuts`` gives the
rows recipient by recipient and ``write_export`` writes them, row by row, into files in a
temporary directory; the response streams a file from there and the directory is removed when
the stream ends (or is abandoned). Memory stays bounded whatever the district's size; the bytes
are those of the full-replay ``take_snapshot`` render for the same (V, T)."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

from starlette.background import BackgroundTask

CHUNK = 64 * 1024
#: A file up to this size is sent in one piece, read by the thread that wrote it; a larger one
#: is streamed in chunks (each chunk a turn of the worker's thread pool).
WHOLE = 1024 * 1024


@dataclasses.dataclass
class Written:
    head: Any  # commands.snapshot.Snapshot, rows left empty
    manifest: dict[str, Any]
    directory: Path
    preview: list[dict[str, Any]]  # the first rows, money as text

    def path(self, format: str) -> Path:
        return self.directory / f"{self.head.stem}.{format}"

    def manifest_path(self) -> Path:
        return self.directory / f"{self.head.stem}.manifest.json"


def write(service: Any, valid: date | None, known_at: datetime | None, formats: Iterable[str], out: Path, *, preview: int = 0) -> Written:
    """Bring the cuts view up to date (``Service.read_model``: one catch-up per process at a
    time), then write the snapshot's files and manifest into ``out``; ``preview`` first rows are
    kept for display."""
    from commands import snapshot

    engine, status = service.read_model("cuts")
    if status.position < status.head:  # stopped at an event it could not apply: no snapshot from a stale view
        raise RuntimeError(f"the cuts view stopped at position {status.position} of {status.head}: see `ledger projections status`")
    head, rows = snapshot.snapshot_from_cuts(service.ledger, engine, valid, known_at, catch_up=False, kept=getattr(service, "rows", None))
    first: list[dict[str, Any]] = []

    def kept(source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for row in source:
            if len(first) < preview:
                first.append(row)
            yield row

    manifest = snapshot.write_export(head, kept(rows), formats, out)
    return Written(head, manifest, out, dataclasses.replace(head, rows=first).plain_rows())


def temporary_directory() -> Path:
    return Path(tempfile.mkdtemp(prefix="ledger-snapshot-"))


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def whole(path: Path, directory: Path) -> bytes | None:
    """The file's bytes when it is at most ``WHOLE`` bytes long, ``directory`` then removed;
    None for a larger file (left for :func:`stream`)."""
    if path.stat().st_size > WHOLE:
        return None
    try:
        return path.read_bytes()
    finally:
        remove(directory)


def stream(path: Path, directory: Path) -> tuple[Iterator[bytes], BackgroundTask, int]:
    """The file's bytes in chunks, a task removing ``directory`` after the response, and the
    file's size. The directory also goes when the stream is closed early (a client that left)."""
    size = path.stat().st_size

    def chunks() -> Iterator[bytes]:
        try:
            with path.open("rb") as f:
                while block := f.read(CHUNK):
                    yield block
        finally:
            remove(directory)

    return chunks(), BackgroundTask(remove, directory), size
