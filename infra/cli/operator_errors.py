"""Operator mistakes answered in one line, with their own exit code, never a traceback.

The ``ledger`` group (``infra.cli.app``) runs every command through :class:`LedgerGroup`, which
catches the mistakes an operator can make and cannot fix from a traceback:

=====  ==========================================================================================
exit   meaning
=====  ==========================================================================================
0      done (a command accepted)
1      a rule rejected the command, or a check found a problem (the output says which)
2      invalid input: a field, a date or time, an id that is not one (nothing recorded)
3      a conflict with concurrent writers outlasted the retries (run it again)
4      not found: no recipient, expense, claim, case or batch with that id
5      the store cannot be opened: PostgreSQL database missing or unreachable, login refused,
       or no store at the SQLite path a reading command was given
6      wrong LEDGER_DATA_KEY: the store's personal data was written with another master key
=====  ==========================================================================================

Reading commands (:data:`READING`) open only a store that exists: a SQLite path with no file is
named, not silently created empty.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import click
from typer.core import TyperGroup

EXIT_INVALID, EXIT_NOT_FOUND, EXIT_STORE, EXIT_DATA_KEY = 2, 4, 5, 6

#: Commands (first word, or "first second") that only read the store.
READING = frozenset(
    {
        "explain",
        "replay",
        "whatif",
        "snapshot",
        "verify",
        "find",
        "projections",
        "relay",
        "clearing list",
        "clearing show",
    }
)

_DATE_ERRORS = re.compile(
    r"^(Invalid isoformat string: .*|month must be in 1\.\.12|day is out of range for month|year \d+ is out of range"
    r"|hour must be in 0\.\.23|minute must be in 0\.\.59|second must be in 0\.\.59)$"
)
_UUID_ERRORS = ("badly formed hexadecimal UUID string",)


def translate(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one line naming the problem and the fix) for an operator mistake, else None."""
    from infra.privacy import PersonalDataError
    from infra.settings import StoreUnavailable
    from ledger import errors

    if isinstance(exc, StoreUnavailable):
        return EXIT_STORE, str(exc)
    if isinstance(exc, PersonalDataError):
        return EXIT_DATA_KEY, f"wrong LEDGER_DATA_KEY: {_one_line(str(exc))}"
    if isinstance(exc, errors.UnknownEntity):
        return EXIT_NOT_FOUND, f"not found: {_one_line(str(exc))} (check the id: `ledger status` and the lists show what the store holds)"
    if isinstance(exc, ValueError):
        text = str(exc)
        if _DATE_ERRORS.match(text):
            value = text.split(": ", 1)[1] if text.startswith("Invalid isoformat string: ") else None
            shown = f"{value} is" if value else "a date or time given is"
            return EXIT_INVALID, (
                f"{shown} not a valid date or time ({text if value is None else 'not ISO 8601'}): "
                "write dates as YYYY-MM-DD and times as 2026-06-30T18:00:00+08:00"
            )
        if text in _UUID_ERRORS:
            return EXIT_INVALID, "an id given is not one: ids are UUIDs (expense ids <recipient uuid>:<n>)"
    from infra.wiring import describe_store_error

    store = describe_store_error(exc)
    if store is not None:
        return EXIT_STORE, store
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _command_words(args: list[str]) -> list[str]:
    return [a for a in args if not a.startswith("-")][:2]


def is_reading(args: list[str]) -> bool:
    words = _command_words(args)
    return bool(words) and (words[0] in READING or " ".join(words) in READING)


class LedgerGroup(TyperGroup):
    """The top-level group: reading commands open only an existing store, and operator mistakes
    end in one line on stderr and their exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        from infra.settings import require_existing_store

        protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args  # click 8.2+ / older
        args = [*protected, *ctx.args]
        require_existing_store(is_reading(args))
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            answer = translate(exc)
            if answer is None:
                raise
            code, line = answer
            click.echo(f"ledger: {line}", err=True)
            sys.stderr.flush()
            ctx.exit(code)
        finally:
            require_existing_store(False)
