"""A small story for the console's tests: two people on two streets, a late 居保大病 settlement
that opens a clearing case (R-CLR-1(a)) and a category revoked from an earlier date (R-TIME-2)."""

from __future__ import annotations

from stdnum.cn import ric

from clearing_story import CHC, HOSPITAL_3, Story

HUAYANG, TIANSHAN = "华阳路街道", "天山路街道"


def id_number(n: int) -> str:
    body = f"31010519600101{n % 1000:03d}"
    return body + ric.calc_check_digit(body + "0")


ID_WANG, ID_LI = id_number(11), id_number(12)


def tell(story: Story) -> Story:
    story("enrol", "2026-01-05T09:00:00+08:00", recipient="R1", id_number=ID_WANG, name="王秀英", street=HUAYANG)
    story("grant_category", "2026-01-05T09:01:00+08:00", recipient="R1", category="dibao", **{"from": "2025-01-01"})
    story("insure", "2026-01-05T09:02:00+08:00", recipient="R1", scheme="resident", **{"from": "2019-01-01"})
    story("enrol", "2026-01-05T10:00:00+08:00", recipient="R2", id_number=ID_LI, name="李建国", street=TIANSHAN)
    story("grant_category", "2026-01-05T10:01:00+08:00", recipient="R2", category="low_income", **{"from": "2025-06-01"})
    story("insure", "2026-01-05T10:02:00+08:00", recipient="R2", scheme="resident", **{"from": "2019-01-01"})
    story.expense("E1", "R1", "2026-01-12T09:00:00+08:00", facility={**CHC, "code": "CN-CHC-HY"}, service="2026-01-10", in_scope="500.00", insurance="200.00")
    story("aid", "2026-01-20T10:00:00+08:00", claim="C1", recipient="R1", expenses=["E1"])
    story.expense("E2", "R1", "2026-02-05T09:00:00+08:00", visit="inpatient", facility={**HOSPITAL_3, "code": "SH-H3-RUIJIN"},
                  service="2026-02-02", in_scope="20000.00", insurance="12000.00", total="21000.00")
    story("aid", "2026-02-10T10:00:00+08:00", claim="C2", recipient="R1", expenses=["E2"])
    story.expense("E3", "R2", "2026-01-16T09:00:00+08:00", facility={**CHC, "code": "CN-CHC-TS"}, service="2026-01-15", in_scope="300.00", insurance="100.00")
    story("aid", "2026-01-25T10:00:00+08:00", claim="C3", recipient="R2", expenses=["E3"])
    story("settle_insurance", "2026-03-02T10:00:00+08:00", expense="E2", scheme="critical_illness", amount="2000.00")
    story("revoke_category", "2026-03-05T10:00:00+08:00", recipient="R2", category="low_income", **{"from": "2026-01-01"})
    return story
