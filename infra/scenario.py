"""The scenario runner (``ledger scenario run FILE --json``, SCENARIOS.md): an adapter.

It reads the file, turns each step into one command for the application's handlers (mapping the
file's handles to the ledger's own ids) and reports what the ledger then says. No rule lives here.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any

import yaml
from pydantic import ValidationError

from commands import models as m
from commands import queries
from commands.app import LedgerApp, Result
from infra.wiring import memory_app
from ledger import errors
from ledger.policy.packs import JURISDICTIONS
from ledger.values import CST
from projections.report import scenario_views


class ScenarioError(Exception):
    """A malformed scenario file (exit code 2), naming the step."""


_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    # do: (required, optional)
    "enrol": ({"recipient", "id_number", "name"}, {"street"}),
    "grant_category": (
        {"recipient", "category", "from"},
        {"to", "subtype", "determined_on", "means_test_expenses_from", "household_medical_spending_12m", "household_annual_disposable_income"},
    ),
    "revoke_category": ({"recipient", "category", "from"}, {"reason"}),
    "insure": ({"recipient", "scheme", "from"}, {"to"}),
    "end_insurance": ({"recipient", "scheme", "to"}, set()),
    "join_mutual_aid": ({"recipient", "year", "has_home_insurance"}, {"home_insurance_deductible"}),
    "consent_auto_claim": ({"recipient", "signed"}, set()),
    "record_expense": (
        {"expense", "recipient", "visit_type", "facility", "service_date", "invoice_date", "invoice_no", "total", "in_scope", "basic_insurance_paid"},
        {"referred", "dispensing_only", "critical_illness_related", "critical_illness_evidence", "basic_insurance_settled", "source"},
    ),
    "settle_insurance": ({"expense", "scheme", "amount"}, set()),
    "one_stop": ({"expense"}, set()),
    "claim": ({"claim", "recipient", "expenses", "handler"}, {"channel", "proxy_id_number", "deadline_override"}),
    "review": ({"claim", "reviewer"}, set()),
    "approve": ({"claim", "approver"}, set()),
    "pay": ({"claim"}, {"payer"}),
    "aid": ({"claim", "recipient", "expenses"}, set()),
    "auto_claims": ({"month"}, set()),
    "set_parameter": ({"name", "value", "effective_from"}, {"effective_to", "reference"}),
    "lift_suspension": ({"recipient", "reviewer"}, set()),
    "social_help": ({"recipient", "amount"}, {"organisation"}),
    "pay_supplementary": ({"recipient"}, set()),
    "repay": ({"recipient", "amount"}, set()),
    "write_off": ({"recipient", "officer", "approver"}, {"reason"}),
}


class Runner:
    def __init__(self, jurisdiction: str, first_at: datetime):
        self.app: LedgerApp = memory_app(jurisdiction, published_at=first_at - timedelta(seconds=1))
        self.recipients: dict[str, str] = {}
        self.expenses: dict[str, str] = {}
        self.claims: dict[str, str] = {}
        self.steps: list[dict[str, Any]] = []

    # -- handles -------------------------------------------------------------------------
    @staticmethod
    def _handle(value: Any, field: str) -> str:
        """A handle as the file wrote it: a text or a whole number (``R1``, ``1``), never a list,
        a mapping, a truth value or a blank."""
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
            raise ScenarioError(f"{field}: expected a handle (a name such as R1 or E1), got {value!r}")
        return str(value)

    def _r(self, step: dict, key: str = "recipient") -> str:
        handle = self._handle(step[key], key)
        if handle not in self.recipients:
            raise ScenarioError(f"unknown recipient handle {handle!r}")
        return self.recipients[handle]

    def _e(self, handle: Any) -> str:
        if self._handle(handle, "expense") not in self.expenses:
            raise ScenarioError(f"unknown expense handle {handle!r}")
        return self.expenses[str(handle)]

    def _c(self, step: dict) -> str:
        handle = self._handle(step["claim"], "claim")
        if handle not in self.claims:
            raise ScenarioError(f"unknown claim handle {handle!r}")
        return self.claims[handle]

    def named(self, text: str) -> str:
        """``text`` with the ledger's own ids of this file's recipients, expenses and claims shown
        as the file's handles (``expense 'E1'``), longest ids first."""
        ids = {**{v: k for k, v in self.recipients.items()}, **{v: k for k, v in self.claims.items()},
               **{v: k for k, v in self.expenses.items()}}
        for own in sorted(ids, key=len, reverse=True):
            if own in text:
                text = text.replace(own, ids[own])
        return text

    # -- one step ------------------------------------------------------------------------
    def step(self, index: int, step: dict) -> None:
        do = step.get("do")
        if not isinstance(do, str) or do not in _FIELDS:
            raise ScenarioError(f"unknown command {do!r}")
        required, optional = _FIELDS[do]
        missing = sorted(required - set(step))
        if missing:
            raise ScenarioError(f"{do}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(step) - required - optional - {"at", "do"})
        if unknown:
            raise ScenarioError(f"{do}: unknown field(s) {', '.join(map(repr, unknown))}")
        empty = sorted(k for k in required if step[k] is None and (do, k) not in _NULL_MEANS_UNSET)
        if empty:  # YAML's null (``~``, nothing after the colon) is no value, never the text "None"
            raise ScenarioError(f"{do}: {', '.join(empty)}: a required field has no value (null)")
        at = _parse_at(step.get("at"))
        # an optional field given as null is an optional field not given
        fields = {k: v for k, v in step.items() if k not in ("at", "do") and (v is not None or k in required)}
        result = getattr(self, f"_do_{do}")(fields, at)
        entry: dict[str, Any] = {"index": index, "do": do, "status": result.status}
        if result.status != "accepted":
            entry.update({"code": result.code, "rule": result.rule, "message": self.named(result.message) if result.message else result.message})
        self.steps.append(entry)

    def _run(self, cmd_cls: type[m.Command], at: datetime, **fields: Any) -> Result:
        cmd = cmd_cls.model_validate({**fields, "at": at})
        return self.app.run(cmd)

    def _do_enrol(self, f: dict, at: datetime) -> Result:
        handle = self._handle(f.pop("recipient"), "recipient")
        if handle in self.recipients:
            raise ScenarioError(f"recipient handle {handle!r} is already enrolled")
        res = self._run(m.Enrol, at, **{k: (str(v) if k == "id_number" else v) for k, v in f.items()})
        if res.status == "accepted":
            self.recipients[handle] = res.ids["recipient"]
        return res

    def _with_recipient(self, cmd_cls: type[m.Command]):
        def run(f: dict, at: datetime) -> Result:
            return self._run(cmd_cls, at, **{**f, "recipient": self._r(f)})

        return run

    def __getattr__(self, name: str):
        simple = {
            "_do_grant_category": m.GrantCategory,
            "_do_revoke_category": m.RevokeCategory,
            "_do_insure": m.Insure,
            "_do_end_insurance": m.EndInsurance,
            "_do_join_mutual_aid": m.JoinMutualAid,
            "_do_consent_auto_claim": m.ConsentAutoClaim,
            "_do_lift_suspension": m.LiftSuspension,
            "_do_social_help": m.SocialHelp,
            "_do_pay_supplementary": m.PaySupplementary,
            "_do_repay": m.Repay,
            "_do_write_off": m.WriteOff,
        }
        if name in simple:
            return self._with_recipient(simple[name])
        raise AttributeError(name)

    def _do_record_expense(self, f: dict, at: datetime) -> Result:
        handle = self._handle(f.pop("expense"), "expense")
        if handle in self.expenses:
            raise ScenarioError(f"expense handle {handle!r} is already used")
        invoice_no = f["invoice_no"]
        if isinstance(invoice_no, bool) or not isinstance(invoice_no, (str, int)):
            raise ScenarioError(f"invoice_no: expected the receipt's number as text, got {invoice_no!r}")
        res = self._run(m.RecordExpense, at, **{**f, "recipient": self._r(f), "handle": handle, "invoice_no": str(invoice_no)})
        self.expenses[handle] = res.ids["expense"]
        return res

    def _do_settle_insurance(self, f: dict, at: datetime) -> Result:
        return self._run(m.SettleInsurance, at, **{**f, "expense": self._e(f["expense"])})

    def _do_one_stop(self, f: dict, at: datetime) -> Result:
        return self._run(m.OneStop, at, expense=self._e(f["expense"]))

    def _expense_list(self, f: dict) -> list[str]:
        if not isinstance(f["expenses"], list) or not f["expenses"]:
            raise ScenarioError("expenses: expected a non-empty list of expense handles")
        return [self._e(h) for h in f["expenses"]]

    def _do_claim(self, f: dict, at: datetime) -> Result:
        handle = self._handle(f.pop("claim"), "claim")
        if handle in self.claims:
            raise ScenarioError(f"claim handle {handle!r} is already used")
        if isinstance(f.get("proxy_id_number"), int) and not isinstance(f["proxy_id_number"], bool):
            f["proxy_id_number"] = str(f["proxy_id_number"])  # an unquoted number, as enrol's id_number
        res = self._run(m.LodgeClaim, at, **{**f, "recipient": self._r(f), "expenses": self._expense_list(f)})
        if "claim" in res.ids:
            self.claims[handle] = res.ids["claim"]
        return res

    def _do_review(self, f: dict, at: datetime) -> Result:
        return self._run(m.Review, at, claim=self._c(f), reviewer=f["reviewer"])

    def _do_approve(self, f: dict, at: datetime) -> Result:
        return self._run(m.Approve, at, claim=self._c(f), approver=f["approver"])

    def _do_pay(self, f: dict, at: datetime) -> Result:
        return self._run(m.Pay, at, claim=self._c(f), **({"payer": f["payer"]} if f.get("payer") is not None else {}))

    def _do_aid(self, f: dict, at: datetime) -> Result:
        handle = self._handle(f["claim"], "claim")
        if handle in self.claims:
            raise ScenarioError(f"claim handle {handle!r} is already used")
        recipient, expenses = self._r(f), self._expense_list(f)
        m.LodgeClaim.model_validate({"recipient": recipient, "expenses": expenses, "handler": "h", "at": at})
        res = self.app.aid(recipient, expenses, at)
        if "claim" in res.ids:
            self.claims[handle] = res.ids["claim"]
        return res

    def _do_auto_claims(self, f: dict, at: datetime) -> Result:
        m.AutoClaims.model_validate({"month": str(f["month"]), "at": at})
        return self.app.auto_claims_signed(str(f["month"]), at)

    def _do_set_parameter(self, f: dict, at: datetime) -> Result:
        return self._run(m.SetParameter, at, **f)

    # -- the report ------------------------------------------------------------------------
    def report(self, name: str) -> dict[str, Any]:
        app = self.app
        handle_of_r = {v: k for k, v in self.recipients.items()}
        handle_of_e = {v: k for k, v in self.expenses.items()}
        expenses: dict[str, Any] = {}
        cases, supplementary = [], []
        for rid, rh in self.recipients.items() and sorted(self.recipients.items(), key=lambda kv: list(self.recipients).index(kv[0])):
            r = app.recipient(rh)
            for eid in r.expenses:
                view = queries.expense_view(r, eid)
                eh = handle_of_e.get(eid, eid)
                out = {"recipient": rid, **{k: v for k, v in view.items() if k not in ("id", "duplicate_of")}}
                expenses[eh] = out
            for c in r.cases.values():
                v = queries.case_view(c)
                cases.append({"recipient": rid, "expense": handle_of_e.get(c.expense_id), **{k: v[k] for k in ("trigger", "amount", "balance", "status", "by_fund")}})
            for s in r.supplementary.values():
                v = queries.supplementary_view(s)
                supplementary.append({"recipient": rid, "expense": handle_of_e.get(s.expense_id), **{k: v[k] for k in ("trigger", "amount", "status", "by_fund")}})
        # annual, suspensions, duplicates and funds come from the read models (projections/, ADR 0008).
        views = scenario_views(app.recorder, app.mapper)
        order = {rh: i for i, rh in enumerate(self.recipients.values())}
        annual = [{**row, "recipient": handle_of_r[row["recipient"]]} for row in sorted(views["annual"], key=lambda row: order[row["recipient"]])]
        suspensions = [
            {**s, "recipient": handle_of_r[s["recipient"]], "expense": handle_of_e.get(s["expense"])}
            for s in sorted(views["suspensions"], key=lambda s: order[s["recipient"]])
        ]
        duplicates = [
            {"expense": handle_of_e.get(d["expense"], d["expense"]), "duplicate_of": handle_of_e.get(d["duplicate_of"], d["duplicate_of"])}
            for d in sorted(views["duplicates"], key=lambda d: order.get(d["expense"].split(":", 1)[0], 0))
        ]
        return {
            "scenario": name,
            "steps": self.steps,
            "expenses": expenses,
            "clearing_cases": cases,
            "annual": annual,
            "supplementary": supplementary,
            "duplicates": duplicates,
            "suspensions": suspensions,
            "funds": views["funds"],
        }


#: Required fields where null is a value: a parameter published as unset (docs/policy-parameters.md).
_NULL_MEANS_UNSET = {("set_parameter", "value")}


def _parse_at(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ScenarioError(f"at: {value!r} is not an ISO 8601 time") from None
    else:
        raise ScenarioError(f"at: expected an ISO 8601 time with an offset, got {value!r}")
    if moment.tzinfo is None:
        raise ScenarioError(f"at: {value!r} has no UTC offset")
    if not 1900 <= moment.year <= 2199:
        raise ScenarioError(f"at: {value!r}: a recorded time falls in the years 1900–2199")
    return moment


def _stringify_dates(obj: Any) -> Any:
    """YAML reads 2026-01-05 as a date; the commands parse ISO strings the same way."""
    if isinstance(obj, dict):
        return {str(k): _stringify_dates(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_stringify_dates(v) for v in obj]
    if isinstance(obj, (date, datetime)):
        return obj.isoformat()
    return obj


class _Loader(yaml.SafeLoader):
    """YAML with numbers read strictly, as people write amounts in a scenario: a plain decimal
    integer (``150``) or decimal fraction (``85.50``) is a number; anything else that YAML 1.1 would
    turn into a number behind the writer's back (``1_000``, ``1:30`` in base 60, ``0x10``, ``010``
    as octal, ``1e3``) stays the text it was, for the command's own validation to refuse by name."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^-?(?:0|[1-9][0-9]*)$"), list("-0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^-?(?:0|[1-9][0-9]*)\.[0-9]+$"), list("-0123456789"))
# A decimal fraction is kept as the text written (``85.50``, ``100.0000000000000001``), never a binary
# float: an amount with more than two decimals is then refused by name instead of rounded on reading.
_Loader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: loader.construct_scalar(node))


def load(text: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader with stricter numbers
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ScenarioError(f"not valid YAML{where}: {what}") from None
    except RecursionError:
        raise ScenarioError("not a scenario: the file nests too deeply, or an anchor refers to itself") from None
    if not isinstance(data, dict):
        raise ScenarioError("a scenario is a mapping with name, jurisdiction and steps")
    for key in ("name", "jurisdiction", "steps"):
        if key not in data:
            raise ScenarioError(f"missing top-level field {key!r}")
    if not isinstance(data["jurisdiction"], str) or data["jurisdiction"] not in JURISDICTIONS:
        raise ScenarioError(f"unknown jurisdiction {data['jurisdiction']!r} (known: {', '.join(JURISDICTIONS)})")
    if not isinstance(data["steps"], list):
        raise ScenarioError("steps: expected a list")
    return data


def replay(text: str) -> tuple[str, Runner]:
    """Replay a scenario into a fresh in-memory ledger (raises ScenarioError); its name and the
    runner, whose ``app`` and handle maps adapters such as ``ledger explain --scenario`` read."""
    data = load(text)
    try:
        steps = [_stringify_dates(s) for s in data["steps"]]
    except RecursionError:
        raise ScenarioError("steps: nested too deeply, or an anchor refers to itself") from None
    first = None
    for i, s in enumerate(steps, start=1):
        if not isinstance(s, dict):
            raise ScenarioError(f"step {i}: expected a mapping")
        try:
            first = first or _parse_at(s.get("at"))
        except ScenarioError as exc:
            raise ScenarioError(f"step {i}: {exc}") from None
    runner = Runner(data["jurisdiction"], first or datetime.fromisoformat("2000-01-01T00:00:00+08:00"))
    previous: datetime | None = None
    # Steps are numbered from 1 in reports and errors, as the published expected outputs number
    # them (SCENARIOS.md calls the index 0-based; the acceptance files count the first step as 1).
    for i, s in enumerate(steps, start=1):
        try:
            at = _parse_at(s.get("at"))
            if previous is not None and at < previous:
                raise ScenarioError(f"at: {s.get('at')} ({at.astimezone(CST).isoformat()}) is earlier than the step before "
                                    f"({previous.astimezone(CST).isoformat()}): recorded times never go back (RULES.md §1: one clock)")
            previous = at
            runner.step(i, s)
        except ScenarioError as exc:
            raise ScenarioError(f"step {i}: {exc}") from None
        except ValidationError as exc:
            raise ScenarioError(f"step {i} ({s.get('do')}): {_validation_message(exc)}") from None
        except errors.InvalidInput as exc:
            message = runner.named(exc.message)
            raise ScenarioError(f"step {i} ({s.get('do')}): {exc.field + ': ' if exc.field and not message.startswith(exc.field) else ''}{message}") from None
    return str(data["name"]), runner


def run_scenario(text: str, snapshot: tuple[date | None, datetime | None] | None = None) -> dict[str, Any]:
    """Replay a scenario into a fresh in-memory ledger and report (raises ScenarioError).
    ``snapshot=(V, T)`` adds the snapshot at (V, T) under ``snapshot`` (R-TIME-3, ADR 0010)."""
    name, runner = replay(text)
    report = runner.report(name)
    if snapshot is not None:
        from commands.snapshot import take_snapshot

        report["snapshot"] = take_snapshot(runner.app, *snapshot).as_report()
        report["snapshot"]["handles"] = {rid: handle for handle, rid in runner.recipients.items()}
    return report


def _validation_message(exc: ValidationError) -> str:
    """Each problem as ``field: what is wrong [the rule]``, as ``ledger do`` describes it
    (``infra.input_errors``); a rule the message already cites is not repeated."""
    from commands import models as m
    from infra.input_errors import describe_validation

    model = getattr(m, exc.title, None)
    model = model if isinstance(model, type) and issubclass(model, m.BaseModel) else None
    parts = []
    for p in describe_validation(exc, model):
        rule = "" if p["rule"] in p["message"] else f" [{p['rule']}]"
        parts.append(f"{p['field']}: {p['message']}{rule}")
    return "; ".join(parts)
