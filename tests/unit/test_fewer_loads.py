"""The savings the benchmark's profile led to (ADR 0017) change no result: the monthly 免申即享
batch loads only recipients who ever gave consent (R-PH-3), and the decision engine's cheaper
copy of its pass state is a deep copy."""

from __future__ import annotations

import copy
from datetime import date, datetime
from decimal import Decimal

from commands import models as m
from commands.app import LedgerApp
from infra.demo import resident_id
from infra.wiring import memory_app
from ledger.engine import PassState
from ledger.values import CST

TERTIARY = {"kind": "hospital", "level": 3, "code": "SH-H3-RUIJIN"}


def t(day: str, hm: str = "10:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{hm}:00+08:00")


def person(app: LedgerApp, n: int, consent: list[bool]) -> tuple[str, str]:
    """A dibao recipient with one April 2026 receipt at a city hospital (post-hoc: no one-stop)."""
    number = resident_id("310105", date(1950, 1, 1 + n), 100 + n, male=n % 2 == 0)
    rid = app.run(m.Enrol(id_number=number, name=f"测试{n}", street="华阳路街道", at=t("2026-04-02", f"09:0{n}"))).ids["recipient"]
    app.run(m.GrantCategory(recipient=rid, category="dibao", valid_from=date(2020, 1, 1), at=t("2026-04-02", f"10:0{n}")))
    app.run(m.Insure(recipient=rid, scheme="resident", valid_from=date(2015, 1, 1), at=t("2026-04-02", f"11:0{n}")))
    for i, signed in enumerate(consent):
        app.run(m.ConsentAutoClaim(recipient=rid, signed=signed, at=t("2026-04-03", f"1{i}:0{n}")))
    res = app.run(
        m.RecordExpense(
            recipient=rid, visit_type="outpatient", facility=TERTIARY, service_date=date(2026, 4, 8), invoice_date=date(2026, 4, 8),
            invoice_no=f"RJ26000{n}", total=Decimal("600.00"), in_scope=Decimal("500.00"), basic_insurance_paid=Decimal("250.00"),
            at=t("2026-04-08", f"15:0{n}"),
        )
    )
    return rid, res.ids["expense"]


def test_the_auto_claims_batch_loads_only_recipients_who_gave_consent() -> None:
    app = memory_app("shanghai.changning", published_at=datetime(2026, 1, 1, 8, tzinfo=CST))
    consenting, e1 = person(app, 1, [True])
    never, e2 = person(app, 2, [])
    withdrawn, e3 = person(app, 3, [True, False])
    loaded: list[str] = []
    get = app.recipient

    def spy(rid, version=None):  # type: ignore[no-untyped-def]
        loaded.append(str(rid))
        return get(rid, version)

    app.recipient = spy  # type: ignore[method-assign]
    result = app.run(m.AutoClaims(month="2026-04", at=t("2026-05-11")))
    app.recipient = get  # type: ignore[method-assign]

    assert result.status == "accepted"
    assert len(result.ids["claims"]) == 1
    assert never not in loaded
    assert withdrawn in loaded  # it has a consent event: loaded, then left out (consent withdrawn)
    [cid] = result.ids["claims"]
    assert app.claim(cid).channel == "auto" and app.recipient(consenting).expenses[e1].claim_id == cid
    assert app.recipient(never).expenses[e2].claim_id is None
    assert app.recipient(withdrawn).expenses[e3].claim_id is None


def test_pass_state_copy_is_a_deep_copy() -> None:
    st = PassState(
        caps_used={("shanghai.medical_aid", 2026, "outpatient"): Decimal("12.50")},
        caps_value={("shanghai.medical_aid", 2026, "outpatient"): Decimal("10000.00")},
        month={(2026, 4): [Decimal("95.00"), 3]},
        suspension=("r:1", datetime(2026, 4, 9, tzinfo=CST)),
        ma_outpatient={2026: [Decimal("150.00"), Decimal("20.00")]},
        ma_inpatient={2026: Decimal("1000.00")},
        lyg_cumulative={2026: Decimal("7.00")},
    )
    cheap, deep = st.copy(), copy.deepcopy(st)
    assert cheap == deep == st
    cheap.caps_used[("shanghai.medical_aid", 2026, "inpatient")] = Decimal("1.00")
    cheap.month[(2026, 4)][1] = 9
    cheap.ma_outpatient[2026][0] = Decimal("0.00")
    cheap.ma_inpatient[2026] = Decimal("0.00")
    assert st == deep  # the original is untouched
