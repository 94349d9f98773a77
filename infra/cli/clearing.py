"""``ledger clearing …``: individual clearing 个人清算 for clearing officers (RULES.md §7, ADR 0009).

Adapters over :mod:`commands.clearing_runs` (population runs), :mod:`commands.clearing_views`
(list / show) and the ledger's own ``Repay`` and ``WriteOff`` commands, on the store named by
``LEDGER_DATABASE_URL``. A recipient is named by ledger id or resident id number.

``ledger clearing run --since T`` recomputes only the recipients with events recorded after T
(all of them when the policy changed after T); without it, everyone. Either way the run is
idempotent: a second run finds nothing new.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from decimal import Decimal
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.cli import app

clearing_app = typer.Typer(help="Individual clearing (个人清算): runs, cases, repayments, write-offs (R-CLR-1..3).", no_args_is_help=True)
app.add_typer(clearing_app, name="clearing")

out = Console(soft_wrap=True)  # lines stay whole (ids, amounts); tables still fit the terminal
err = Console(stderr=True)
TRIGGERS = ("parameter_change", "category_change", "late_insurance", "cap_overrun", "duplicate")


def _ledger():
    from infra.settings import get_settings
    from infra.wiring import build_app

    return build_app(get_settings())


def _fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _dump(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def _since(text: Optional[str]) -> Optional[datetime]:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"--since: {text!r} is not an ISO 8601 time or date (e.g. 2026-06-01T00:00:00+08:00)")
    if moment.tzinfo is None:
        from ledger.values import CST

        moment = moment.replace(tzinfo=CST)  # a bare date or time is read in China Standard Time
    return moment


def _report_error(exc: Exception) -> None:
    from ledger import errors

    if isinstance(exc, errors.LedgerError):  # 4: not found (README "Operating it")
        _fail(f"{exc.code}{' (' + exc.rule + ')' if exc.rule else ''}: {exc.message}", 4 if isinstance(exc, errors.UnknownEntity) else 2)
    raise exc


# --------------------------------------------------------------------------- run


@clearing_app.command("run")
def clearing_run(
    since: Optional[str] = typer.Option(None, "--since", help="only recipients with events recorded after this time (ISO 8601)"),
    trigger: Optional[str] = typer.Option(None, "--trigger", help=f"the trigger cited on what the run opens: {', '.join(TRIGGERS)} (default: each recipient's own, from what changed)"),
    everyone: bool = typer.Option(False, "--all", help="look at every recipient, not only what changed since the last run"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Recompute decided expenses with today's knowledge and open cases / supplementary payouts
    for the differences (R-CLR-2). By default only what changed since the last run, each
    recipient's trigger named by what changed (R-CLR-1); idempotent."""
    from commands import clearing_runs

    if trigger is not None and trigger not in TRIGGERS:
        _fail(f"--trigger: one of {', '.join(TRIGGERS)}")
    if everyone and since is not None:
        _fail("--all and --since: choose one scope")
    moment = _since(since)
    ledger = _ledger()
    try:
        city = _city_conflicts(ledger) if trigger == "duplicate" or (trigger is None and since is None and not everyone) else None
        usage = _city_usage(ledger) if trigger == "cap_overrun" or (trigger is None and since is None and not everyone) else None
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True
        )
        with progress:
            task = progress.add_task("clearing recipients", total=None)
            summary = clearing_runs.run(
                ledger,
                since=moment,
                trigger=trigger,
                everyone=everyone,
                on_scope=lambda n: progress.update(task, total=n),
                progress=lambda n: progress.advance(task, n),
                city=city,
                city_usage=usage,
            )
    finally:
        port = getattr(ledger, "city", None)
        if port is not None and hasattr(port, "close"):
            port.close()
        ledger.close()
    if as_json:
        _dump(summary.as_dict())
        return
    by_trigger = ", ".join(f"{t} {n}" for t, n in (summary.triggers or {}).items()) or "none"
    out.print(
        f"clearing run ({summary.scope}, trigger {summary.trigger}: {by_trigger}): {summary.recipients_seen} recipients looked at, "
        f"{summary.recipients_changed} changed; {summary.cases_opened} clearing cases and "
        f"{summary.supplementary_opened} supplementary payouts opened"
        + (f"; next run starts after log position {summary.position}" if summary.position is not None else "")
        + (f"; {summary.city_conflicts} receipts paid second in the city looked at (as of the city view at "
           + ", ".join(f"{d} {p}" for d, p in sorted(city.positions.items())) + ")" if city is not None and summary.city_conflicts else "")
        + (f"; {summary.city_usage} persons aided here and in another district had their decisions' city reads checked (as of the city view at "
           + ", ".join(f"{d} {p}" for d, p in sorted(usage.positions.items())) + ")" if usage is not None and summary.city_usage else "")
    )


def _city_conflicts(ledger: Any) -> Any:
    """The receipts this district paid second in the city, from the city view (R-CAP-4,
    R-CLR-1(b); ADR 0020): when ``LEDGER_CITY_DATABASE_URL`` names the view and the process is a
    district (``ledger --district X``); otherwise None."""
    from commands.clearing_runs import CityConflictReads, city_conflicts, city_conflicts_from

    return _city_read(ledger, CityConflictReads, city_conflicts_from, "conflicts_for", city_conflicts)


def _city_usage(ledger: Any) -> Any:
    """The persons aided in this district and in another, with the city view's usage rows, for
    the run's cap check (R-CAP-4, R-CLR-1(e); ADR 0020); None as for :func:`_city_conflicts`."""
    from commands.clearing_runs import CityUsageReads, city_usage_from, usage_overlap

    return _city_read(ledger, CityUsageReads, city_usage_from, "usage_overlaps_for", usage_overlap)


def _city_read(ledger: Any, port_type: type, from_port: Any, read: str, build: Any) -> Any:
    """Through the ledger's city port when the wiring gave it one (``from_port``), else from the
    view that ``LEDGER_CITY_DATABASE_URL`` names, as district ``LEDGER_DISTRICT``: the view's
    ``read`` (rows, positions) for this district, given to ``build``."""
    import os

    port = getattr(ledger, "city", None)
    if isinstance(port, port_type):
        return from_port(port)
    url, code = os.environ.get("LEDGER_CITY_DATABASE_URL"), os.environ.get("LEDGER_DISTRICT")
    if not url or not code:
        return None
    from infra.city import CityView

    view = CityView(url)
    try:
        rows, positions = getattr(view, read)(code)
    finally:
        view.close()
    return build(code, rows, positions)


# --------------------------------------------------------------------------- list / show


@clearing_app.command("list")
def clearing_list(
    status: Optional[str] = typer.Option(None, "--status", help="open, settled or written_off"),
    recipient: Optional[str] = typer.Option(None, "--recipient", help="one recipient (ledger id or resident id number)"),
    supplementary: bool = typer.Option(False, "--supplementary", help="list supplementary payouts instead (status pending or paid)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Clearing cases (or supplementary payouts), population-wide or for one recipient."""
    from commands import clearing_views as views

    ledger = _ledger()
    try:
        if supplementary:
            rows = list(views.supplementary_payouts(ledger, status=status, recipient=recipient))
        else:
            if status is not None and status not in views.STATUSES:
                _fail(f"--status: one of {', '.join(views.STATUSES)}")
            rows = list(views.clearing_cases(ledger, status=status, recipient=recipient))
    except Exception as exc:  # noqa: BLE001 - ledger errors become a message, others propagate
        _report_error(exc)
    if as_json:
        _dump(rows if supplementary else {"cases": rows, "totals": views.totals(rows)})
        return
    if not rows:
        out.print("nothing to list")
        return
    # One block per item, the id first and whole: it is what `ledger clearing show` takes.
    if supplementary:
        for x in rows:
            out.print(f"[bold]{x['supplementary']}[/bold]  {x['status']}")
            out.print(f"    {x['name']} · expense {x['handle'] or x['expense']} · {x['trigger']} ({x['rule']}) · "
                      f"amount {x['amount']} · due since {x['created_at'][:10]}" + (f" · paid {x['paid_at'][:10]}" if x["paid_at"] else ""))
        return
    for c in rows:
        out.print(f"[bold]{c['case']}[/bold]  {c['status']}")
        out.print(f"    {c['name']} · expense {c['handle'] or c['expense']} · {c['trigger']} ({c['rule']}) · amount {c['amount']} · "
                  f"recovered {c['recovered']} · written off {c['written_off']} · balance {c['balance']} · opened {c['opened_at'][:10]}")
    for st, t in views.totals(rows).items():
        out.print(f"{st}: {t['cases']} cases, amount {t['amount']}, balance {t['balance']}")


@clearing_app.command("show")
def clearing_show(
    case: str = typer.Argument(..., help="a clearing case id (or a supplementary payout id), or an expense handle/id or a recipient with one case"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """One case: the trigger and its cause, and the decision before and now, side by side."""
    from commands import clearing_views as views

    from commands.lookup import resolve_case

    ledger = _ledger()
    try:  # the case id, or an expense (handle or id) or a recipient with one case (ADR 0019)
        d = views.case_detail(ledger, resolve_case(ledger, case))
    except Exception as exc:  # noqa: BLE001
        _report_error(exc)
    if as_json:
        _dump(d)
        return
    e = d["expense"]
    out.print(f"[bold]{d['kind'].replace('_', ' ')} {d['id']}[/bold]  status {d['status']}")
    out.print(f"recipient {d['recipient']['name']} ({d['recipient']['id']}), street {d['recipient']['street'] or '-'}")
    out.print(
        f"expense {e.get('handle') or e['id']}: {e.get('visit_type')} served {e.get('service_date')}, "
        f"invoice {e.get('invoice_no')} of {e.get('invoice_date')}"
    )
    out.print(f"trigger {d['trigger']} ({d.get('rules')} {d.get('clause')}): {d.get('means')}")
    if d.get("cause"):
        out.print(f"cause: {d.get('cause_text') or json.dumps(d['cause'], ensure_ascii=False)}  recorded {d['recorded_at']}")
    table = Table("", "previous decision", "current decision", "change")
    for row in d["side_by_side"]:
        table.add_row(row["item"], str(row["previous"] if row["previous"] is not None else "-"),
                      str(row["current"] if row["current"] is not None else "-"), row["change"] or "")
    out.print(table)
    amount_line = f"amount {d['amount']} by fund {d['by_fund']}"
    if d["kind"] == "clearing_case":
        out.print(f"{amount_line}; recovered {d['recovered']}, written off {d['written_off']}, balance {d['balance']} {d['balance_by_fund']}")
        for h in d["history"]:
            out.print(f"  {h['at'][:19]}  {h['kind']}{_history_text(h)}")
    else:
        out.print(f"{amount_line}; paid {d.get('paid_at') or 'not yet'}")


def _history_text(h: dict[str, Any]) -> str:
    kind = h["kind"]
    reason = f", reason: {h['reason']}" if h.get("reason") else ""
    if kind == "write_off_signed":
        return f" officer {h['officer']}, approver {h['approver']}{reason}"
    if kind == "write_off_proposed":
        return f" {h['amount']} by {h['officer']}{reason} ({h['proposal']})"
    if kind == "write_off_refused":
        return f" by {h['officer']}{reason} ({h['proposal']})"
    if kind == "repayment" and h.get("officer"):
        return f" {h['amount']} received {h['received_on']} by {h['officer']}, {h['method']}, voucher {h['voucher']}"
    return f" {h['amount']}"


# --------------------------------------------------------------------------- recoveries


def _command(cmd_cls, **fields: Any) -> Any:
    from pydantic import ValidationError

    from commands import clearing_views as views

    ledger = _ledger()
    try:
        if "recipient" in fields:
            r = views.recipient_for(ledger, fields.pop("recipient"))
            cmd = cmd_cls(recipient=str(r.id), **fields)
        else:
            r = views.proposal_owner(ledger, fields["proposal"])
            cmd = cmd_cls(**fields)
        result = ledger.run(cmd)
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()))
    except Exception as exc:  # noqa: BLE001
        _report_error(exc)
    if result.status != "accepted":
        _fail(f"rejected {result.code} ({result.rule}): {result.message}", 1)
    r = ledger.recipient(r.id)
    if result.ids.get("proposal"):
        out.print(f"write-off proposal {result.ids['proposal']}")
    out.print(f"accepted; open clearing balance of {r.name} now {r.open_balance():.2f}")
    return result


@clearing_app.command("repay")
def clearing_repay(
    recipient: str = typer.Argument(..., help="ledger id or resident id number"),
    amount: str = typer.Argument(..., help="yuan, at most two decimals"),
    officer: str = typer.Option(..., "--officer", help="the officer who received the money"),
    voucher: str = typer.Option(..., "--voucher", help="the receipt or voucher number"),
    method: str = typer.Option(..., "--method", help="cash, bank_transfer or offset"),
    received_on: Optional[str] = typer.Option(None, "--date", help="the day received, YYYY-MM-DD (default: today, +08:00)"),
) -> None:
    """A repayment toward the recipient's open cases, oldest first (R-CLR-3); never more than owed.
    Records who received it, when, on which voucher and how."""
    from datetime import date as _date

    from commands.models import Repay

    try:
        Decimal(amount)
    except Exception:  # noqa: BLE001
        _fail(f"amount: {amount!r} is not an amount in yuan")
    method = method.replace("-", "_")
    if method not in ("cash", "bank_transfer", "offset"):
        _fail("--method: one of cash, bank_transfer, offset")
    day = None
    if received_on is not None:
        try:
            day = _date.fromisoformat(received_on)
        except ValueError:
            _fail(f"--date: {received_on!r} is not a date (YYYY-MM-DD)")
    _command(Repay, recipient=recipient, amount=amount, officer=officer, voucher=voucher, method=method, received_on=day)


@clearing_app.command("write-off")
def clearing_write_off(
    recipient: str = typer.Argument(..., help="ledger id or resident id number"),
    officer: str = typer.Option(..., "--officer", help="the clearing officer"),
    approver: str = typer.Option(..., "--approver", help="the approver: a different person (R-CLR-3)"),
    reason: Optional[str] = typer.Option(None, "--reason", help="why the balance is written off"),
) -> None:
    """Write off the recipient's open clearing balance; the approver must not be the officer."""
    from commands.models import WriteOff

    _command(WriteOff, recipient=recipient, officer=officer, approver=approver, reason=reason)


@clearing_app.command("propose-write-off")
def clearing_propose_write_off(
    recipient: str = typer.Argument(..., help="ledger id or resident id number"),
    officer: str = typer.Option(..., "--officer", help="the clearing officer proposing it"),
    reason: Optional[str] = typer.Option(None, "--reason", help="why the balance should be written off"),
) -> None:
    """Propose writing off the recipient's open clearing balance (R-CLR-3); another officer
    approves (`approve-write-off`) or refuses (`refuse-write-off`)."""
    from commands.models import ProposeWriteOff

    _command(ProposeWriteOff, recipient=recipient, officer=officer, reason=reason)


@clearing_app.command("approve-write-off")
def clearing_approve_write_off(
    proposal: str = typer.Argument(..., help="the proposal id (from `clearing write-offs`)"),
    approver: str = typer.Option(..., "--approver", help="the approver: not the proposing officer (R-CLR-3)"),
) -> None:
    """Approve a proposed write-off (R-CLR-3)."""
    from commands.models import ApproveWriteOff

    _command(ApproveWriteOff, proposal=proposal, approver=approver)


@clearing_app.command("refuse-write-off")
def clearing_refuse_write_off(
    proposal: str = typer.Argument(..., help="the proposal id (from `clearing write-offs`)"),
    officer: str = typer.Option(..., "--officer", help="the deciding officer: not the proposing one (R-CLR-3)"),
    reason: Optional[str] = typer.Option(None, "--reason", help="why it is refused"),
) -> None:
    """Refuse a proposed write-off, with the reason (R-CLR-3); the cases stay open."""
    from commands.models import RefuseWriteOff

    _command(RefuseWriteOff, proposal=proposal, officer=officer, reason=reason)


@clearing_app.command("write-offs")
def clearing_write_offs(
    status: Optional[str] = typer.Option(None, "--status", help="pending, approved or refused"),
    recipient: Optional[str] = typer.Option(None, "--recipient", help="one recipient (ledger id or resident id number)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Write-off proposals with the person's name, masked id number and the amount (R-CLR-3)."""
    from commands import clearing_views as views

    ledger = _ledger()
    try:
        rows = views.write_off_proposals(ledger, status=status, recipient=recipient)
    except Exception as exc:  # noqa: BLE001
        _report_error(exc)
    if as_json:
        _dump(rows)
        return
    if not rows:
        out.print("nothing to list")
        return
    for p in rows:
        out.print(f"[bold]{p['id']}[/bold]  {p['status']}")
        out.print(f"    {p['name']} ({p['id_number']}) · amount {p['amount']} over {len(p['cases'])} case(s) · proposed by "
                  f"{p['officer']} {p['proposed_at'][:10]}" + (f" · reason: {p['reason']}" if p["reason"] else "")
                  + (f" · {p['status']} by {p['decided_by']}" if p["decided_by"] else "")
                  + (f": {p['refusal']}" if p["refusal"] else ""))
