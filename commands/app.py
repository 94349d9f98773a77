"""The ledger application: the one write path.

``LedgerApp`` is the unit of work (``commands.core.LedgerCore``: loading, idempotency, retries,
one transaction per command) with the command handlers registered in ``commands.handlers``.
Every handler gets the aggregates, asks the pure domain (``ledger``) to decide, calls aggregate
methods that record the decision as events, and saves everything the command touched in one
transaction. The CLI, the HTTP API, the subscribers and the scenario runner are adapters over
``LedgerApp.run`` and nothing else.
"""

from __future__ import annotations

from commands.core import (
    DEFAULT_OFFICERS,
    DEFAULT_PAYER,
    LedgerCore,
    Result,
    WriteConflict,
    command_fingerprint,
    expense_ref,
    recipient_of,
    retryable_write_error,
)
from commands.handlers import HANDLERS

__all__ = [
    "DEFAULT_OFFICERS",
    "DEFAULT_PAYER",
    "LedgerApp",
    "Result",
    "WriteConflict",
    "command_fingerprint",
    "expense_ref",
    "recipient_of",
    "retryable_write_error",
]


class LedgerApp(LedgerCore):
    """The ledger: the unit of work with every command's handler."""

    name = "Ledger"  # the library names stores and settings after it: unchanged by the split
    handlers = HANDLERS
