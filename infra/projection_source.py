"""The event store opened in a projection worker process (``Runner.rebuild_parallel``, ADR 0008):
a picklable way to say "this store", so that each process opens its own connections."""

from __future__ import annotations

import functools
from typing import Any, Callable


def open_store(database_url: str | None, jurisdiction: str | None = None) -> Any:
    """The application on ``database_url`` (the configured store when None), reading only: it
    publishes nothing. Personal fields decode with the process's ``LEDGER_DATA_KEY`` (ADR 0015)."""
    from infra.settings import Settings, get_settings
    from infra.wiring import build_app

    settings = get_settings() if database_url is None else Settings(database_url=database_url)
    return build_app(settings, jurisdiction=jurisdiction, publish_policy=False)


def store_source(database_url: str | None = None, jurisdiction: str | None = None) -> Callable[[], Any]:
    """A picklable zero-argument callable opening the store (for a worker process)."""
    return functools.partial(open_store, database_url, jurisdiction)
