"""The read models for the scenario runner (SCENARIOS.md ``annual``, ``suspensions``,
``duplicates``, ``funds``): the same projection code, fed from an application's notification log
into an in-memory SQLite database."""

from __future__ import annotations

from typing import Any

from projections import caps, community, duplicates, funds
from projections.common import make_engine
from projections.runner import Runner


def scenario_views(recorder: Any, mapper: Any) -> dict[str, Any]:
    """Project the whole log of ``recorder`` (decoded with ``mapper``) and read the four views.

    Ids are the ledger's own (recipient uuids, expense ids); the caller maps them to handles."""
    engine = make_engine("sqlite://")
    try:
        runner = Runner(engine, recorder, mapper, [caps.Caps(), community.CommunityMonths(), duplicates.Duplicates(), funds.FundBooks()])
        runner.setup()
        runner.catch_up()
        with engine.connect() as conn:
            return {
                "annual": caps.annual(conn),
                "suspensions": community.suspensions(conn),
                "duplicates": duplicates.receipt_duplicates(conn),
                "funds": funds.outflow(conn),
            }
    finally:
        engine.dispose()
