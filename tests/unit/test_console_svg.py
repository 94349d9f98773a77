"""The console's SVG charts (ADR 0018): well-formed, drawn to scale, labelled in text, and told
apart by pattern as well as colour."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import date
from decimal import Decimal

import pytest

from infra.http import svg

NS = {"s": "http://www.w3.org/2000/svg"}
D = Decimal


def parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


def bars(root: ET.Element) -> dict[str, ET.Element]:
    """Rectangles that carry a <title> (the data bars), by their title."""
    out = {}
    for r in root.iter("{http://www.w3.org/2000/svg}rect"):
        title = r.find("s:title", NS)
        if title is not None:
            out[title.text] = r
    return out


def test_yuan_formats_fen_with_separators_and_sign():
    assert svg.yuan(D("1234567.5")) == "¥1,234,567.50"
    assert svg.yuan("0") == "¥0.00"
    assert svg.yuan(D("-12.30")) == "−¥12.30"
    assert svg.yuan(None) == "—"


def test_waterfall_is_drawn_to_scale_from_the_total_down_to_the_aid():
    steps = [
        svg.Step("总医疗费用", "total", D("1000.00"), "total"),
        svg.Step("自费", "out_of_scope", D("100.00"), "minus"),
        svg.Step("医保范围内费用", "in_scope", D("900.00"), "subtotal"),
        svg.Step("基本医疗保险支付", "basic_insurance", D("500.00"), "minus"),
        svg.Step("自负医疗费用", "self_pay", D("400.00"), "subtotal"),
        svg.Step("救助金额", "aid", D("360.00"), "result"),
    ]
    root = parse(svg.waterfall(steps, title="先保险后救助"))
    b = bars(root)
    total = b["总医疗费用 total: ¥1,000.00"]
    aid = b["救助金额 aid: ¥360.00"]
    insurance = b["基本医疗保险支付 basic_insurance: − ¥500.00"]
    in_scope = b["医保范围内费用 in_scope: ¥900.00"]
    w = lambda r: float(r.get("width"))  # noqa: E731
    x = lambda r: float(r.get("x"))  # noqa: E731
    assert w(aid) / w(total) == pytest.approx(0.36, abs=0.002)
    # a deduction floats down from the running level: it ends where the in-scope bar ends
    assert x(insurance) + w(insurance) == pytest.approx(x(in_scope) + w(in_scope), abs=0.2)
    assert x(insurance) == pytest.approx(x(total) + w(total) * 0.4, abs=0.2)
    labels = texts(root)
    assert "¥360.00" in labels and "− ¥500.00" in labels and "救助金额" in labels
    # deductions and the aid are told apart by pattern, not by colour alone
    assert insurance.get("fill").startswith("url(#") and aid.get("fill").startswith("url(#") and insurance.get("fill") != aid.get("fill")
    assert any("斜线" in t for t in labels) and any("圆点" in t for t in labels)


def test_waterfall_never_draws_self_pay_below_zero():
    steps = [
        svg.Step("总", "total", D("100.00"), "total"),
        svg.Step("保险", "basic_insurance", D("150.00"), "minus"),
        svg.Step("自负", "self_pay", D("0.00"), "subtotal"),
    ]
    root = parse(svg.waterfall(steps, title="t"))
    for r in bars(root).values():
        assert float(r.get("x")) >= 0 and float(r.get("width")) >= 0


def test_stacked_columns_sum_to_the_totals_and_every_series_has_its_own_pattern():
    series = [("市级财政 city", [D("100"), D("0"), D("50")]), ("区级财政 district", [D("300"), D("200"), D("0")]), ("社会 social", [D("0"), D("0"), D("25")])]
    root = parse(svg.columns(["01", "02", "03"], series, title="每月"))
    b = bars(root)
    h = lambda k: float(b[k].get("height"))  # noqa: E731
    assert h("01 市级财政 city: ¥100.00") * 3 == pytest.approx(h("01 区级财政 district: ¥300.00"), abs=0.05)
    assert h("02 区级财政 district: ¥200.00") == pytest.approx(2 * h("01 市级财政 city: ¥100.00"), abs=0.05)
    assert "02 市级财政 city: ¥0.00" not in b  # nothing is drawn for a zero
    fills = {b["01 市级财政 city: ¥100.00"].get("fill"), b["01 区级财政 district: ¥300.00"].get("fill"), b["03 社会 social: ¥25.00"].get("fill")}
    assert len(fills) == 3
    legend = [t for t in texts(root) if "（" in t]
    assert [t.split("（")[0] for t in legend] == ["市级财政 city", "区级财政 district", "社会 social"]
    assert len({t.split("（")[1] for t in legend}) == 3  # three different pattern names


def test_cap_usage_places_the_cap_and_the_used_share_in_text():
    points = [svg.Point(date(2025, 2, 1), D("2500.00")), svg.Point(date(2025, 7, 1), D("7500.00"))]
    root = parse(svg.cap_usage(points, year=2025, cap=D("10000.00"), title="cap"))
    labels = texts(root)
    assert "限额 cap ¥10,000.00" in labels
    assert "已用 used ¥7,500.00（75.0%）" in labels
    lines = [ln for ln in root.iter("{http://www.w3.org/2000/svg}line") if ln.get("stroke") == "#c00000"]
    assert len(lines) == 1
    path = root.find("s:path", NS).get("d")
    ys = sorted({float(v) for v in re.findall(r",([0-9.]+)", path)})
    y_zero, y_last = max(ys), min(ys)
    y_cap = float(lines[0].get("y1"))
    # the step line ends at three quarters of the way from zero to the cap
    assert (y_zero - y_last) / (y_zero - y_cap) == pytest.approx(0.75, abs=0.01)


def test_periods_mark_revoked_spans_by_pattern_and_dashes_and_escape_text():
    rows = [svg.Row("低保对象 <b>", "dibao", (svg.Span(date(2024, 1, 1), date(2024, 5, 31), "held", "2024-01-01 → 2024-05-31"),
                                               svg.Span(date(2024, 6, 1), None, "revoked", "撤销 2024-06-01 → 至今")))]
    markup = str(svg.periods(rows, start=date(2024, 1, 1), end=date(2025, 12, 31), today=date(2025, 3, 1), title="类别 & <x>"))
    assert "<b>" not in markup and "&lt;b&gt;" in markup
    root = parse(markup)
    b = bars(root)
    revoked = b["低保对象 <b>: 撤销 2024-06-01 → 至今"]
    held = b["低保对象 <b>: 2024-01-01 → 2024-05-31"]
    assert revoked.get("stroke-dasharray") and revoked.get("fill").startswith("url(#")
    assert not held.get("fill").startswith("url(")
    assert float(held.get("x")) + float(held.get("width")) == pytest.approx(float(revoked.get("x")), abs=0.5)
    assert "今天 today 2025-03-01" in texts(root)
    assert root.find("s:title", NS).text == "类别 & <x>"


def test_months_between_and_small_multiples_share_one_scale():
    months = svg.months_between(date(2024, 11, 5), date(2025, 2, 1))
    assert months == ["2024-11", "2024-12", "2025-01", "2025-02"]
    root = parse(svg.small_multiples(months, [("甲街道", [D("10"), D("0"), D("0"), D("40")]), ("乙街道", [D("20"), D("0"), D("0"), D("0")])], title="t"))
    b = bars(root)
    assert float(b["甲街道 2025-02: ¥40.00"].get("height")) == pytest.approx(4 * float(b["甲街道 2024-11: ¥10.00"].get("height")), abs=0.05)
    assert float(b["乙街道 2024-11: ¥20.00"].get("height")) == pytest.approx(2 * float(b["甲街道 2024-11: ¥10.00"].get("height")), abs=0.05)
    assert "甲街道  合计 total ¥50.00" in texts(root)
