"""Small charts as inline SVG, drawn on the server for the browser console (ADR 0018).

Every chart is readable on paper: each series is told apart by a fill pattern as well as a colour
(hatch, dots, cross, ...), every bar and line carries its figure as text, and every chart has a
``<title>`` and a ``<desc>`` for screen readers. Money is formatted here (``¥1,234.56``) from
Decimals and never recomputed: the charts draw what the ledger already decided.

No dependency: strings are built from escaped parts and returned as :class:`markupsafe.Markup`
so Jinja2 inserts them as they are.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from html import escape
from typing import Any, Iterable, Sequence

from markupsafe import Markup

FONT = "'Noto Sans CJK SC','Noto Sans SC','Source Han Sans SC','WenQuanYi Micro Hei',sans-serif"
INK = "#222222"
GRID = "#bbbbbb"

#: Series styles: (colour, pattern). Colour helps on screen; the pattern carries the difference
#: on a black-and-white print and for readers who do not see the colours.
STYLES: tuple[tuple[str, str], ...] = (
    ("#1f4e79", "solid"),
    ("#c55a11", "hatch"),
    ("#548235", "dots"),
    ("#7f6000", "cross"),
    ("#7030a0", "vertical"),
    ("#595959", "horizontal"),
    ("#2e75b6", "backhatch"),
    ("#bf9000", "grid"),
)
PATTERN_ZH = {
    "solid": "实心",
    "hatch": "斜线",
    "dots": "圆点",
    "cross": "交叉线",
    "vertical": "竖线",
    "horizontal": "横线",
    "backhatch": "反斜线",
    "grid": "方格",
}

_ids = itertools.count(1)


def yuan(value: Decimal | str | int | None) -> str:
    """``¥1,234.56`` (no rounding: the ledger's amounts are already in fen)."""
    if value is None:
        return "—"
    d = Decimal(str(value))
    sign = "−" if d < 0 else ""
    return f"{sign}¥{abs(d):,.2f}"


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def _t(text: object) -> str:
    return escape(str(text), quote=True)


@dataclass
class _Canvas:
    """One SVG document: patterns in ``<defs>``, then the elements in drawing order."""

    width: int
    height: int
    title: str
    desc: str
    uid: str = field(default_factory=lambda: f"c{next(_ids)}")
    parts: list[str] = field(default_factory=list)
    patterns: dict[str, str] = field(default_factory=dict)

    def fill(self, style: tuple[str, str]) -> str:
        """A fill reference for a (colour, pattern) style, defining the pattern once."""
        colour, pattern = style
        if pattern == "solid":
            return colour
        pid = f"{self.uid}-{pattern}-{colour.lstrip('#')}"
        if pid not in self.patterns:
            self.patterns[pid] = _pattern(pid, colour, pattern)
        return f"url(#{pid})"

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(self, x: float, y: float, text: object, *, size: int = 12, anchor: str = "start", weight: str = "normal",
             fill: str = INK, cls: str = "", halo: bool = False) -> None:
        c = f' class="{_t(cls)}"' if cls else ""
        h = ' stroke="#ffffff" stroke-width="3" paint-order="stroke"' if halo else ""
        self.add(f'<text x="{_num(x)}" y="{_num(y)}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}" fill="{fill}"{h}{c}>{_t(text)}</text>')

    def rect(self, x: float, y: float, w: float, h: float, fill: str, *, stroke: str = INK, label: str = "", dash: str = "") -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        title = f"<title>{_t(label)}</title>" if label else ""
        self.add(f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(max(w, 0.0))}" height="{_num(h)}" fill="{fill}" stroke="{stroke}" stroke-width="0.8"{d}>{title}</rect>')

    def line(self, x1: float, y1: float, x2: float, y2: float, *, stroke: str = INK, width: float = 1, dash: str = "") -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<line x1="{_num(x1)}" y1="{_num(y1)}" x2="{_num(x2)}" y2="{_num(y2)}" stroke="{stroke}" stroke-width="{_num(width)}"{d}/>')

    def render(self) -> Markup:
        tid, did = f"{self.uid}-title", f"{self.uid}-desc"
        defs = f"<defs>{''.join(self.patterns.values())}</defs>" if self.patterns else ""
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-labelledby="{tid} {did}" '
            f'width="{self.width}" height="{self.height}" viewBox="0 0 {self.width} {self.height}" font-family="{_t(FONT)}">'
            f'<title id="{tid}">{_t(self.title)}</title><desc id="{did}">{_t(self.desc)}</desc>{defs}'
            f'<rect x="0" y="0" width="{self.width}" height="{self.height}" fill="#ffffff"/>'
        )
        return Markup(head + "".join(self.parts) + "</svg>")


def _pattern(pid: str, colour: str, kind: str) -> str:
    size = 6
    base = f'<pattern id="{pid}" patternUnits="userSpaceOnUse" width="{size}" height="{size}"><rect width="{size}" height="{size}" fill="#ffffff"/>'
    marks = {
        "hatch": f'<path d="M0,{size} L{size},0 M-1,1 L1,-1 M{size - 1},{size + 1} L{size + 1},{size - 1}" stroke="{colour}" stroke-width="1.6"/>',
        "backhatch": f'<path d="M0,0 L{size},{size} M-1,{size - 1} L1,{size + 1} M{size - 1},-1 L{size + 1},1" stroke="{colour}" stroke-width="1.6"/>',
        "dots": f'<circle cx="3" cy="3" r="1.6" fill="{colour}"/>',
        "cross": f'<path d="M0,0 L{size},{size} M{size},0 L0,{size}" stroke="{colour}" stroke-width="1.2"/>',
        "vertical": f'<path d="M3,0 L3,{size}" stroke="{colour}" stroke-width="1.8"/>',
        "horizontal": f'<path d="M0,3 L{size},3" stroke="{colour}" stroke-width="1.8"/>',
        "grid": f'<path d="M3,0 L3,{size} M0,3 L{size},3" stroke="{colour}" stroke-width="1.1"/>',
    }
    return base + marks.get(kind, "") + "</pattern>"


def style(index: int) -> tuple[str, str]:
    return STYLES[index % len(STYLES)]


def _nice_max(value: Decimal | float) -> float:
    """A round upper bound for an axis (1, 2, 2.5, 5 × 10^n)."""
    v = float(value)
    if v <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(v))) - 1) if v >= 1 else 1
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if v <= step * magnitude:
            return step * magnitude
    return 10.0 * magnitude


def text_width(text: str, size: int) -> float:
    """A generous estimate of a label's width: CJK characters are square, Latin ones narrower."""
    return sum(size if ord(ch) > 0x2E7F else size * 0.6 for ch in text)


def _legend(c: _Canvas, x: float, y: float, items: Sequence[tuple[str, tuple[str, str]]], **_: Any) -> None:
    """Swatches with their names and the pattern's name, flowing left to right."""
    lx = x
    for label, st in items:
        text = f"{label}（{PATTERN_ZH[st[1]]}）"
        w = 19 + text_width(text, 11) + 18
        if lx > x and lx + w > c.width:
            lx, y = x, y + 18
        c.rect(lx, y - 10, 14, 12, c.fill(st))
        c.text(lx + 19, y, text, size=11)
        lx += w


def legend_rows(c_width: float, x: float, items: Sequence[tuple[str, tuple[str, str]]]) -> int:
    rows, lx = 1, x
    for label, st in items:
        w = 19 + text_width(f"{label}（{PATTERN_ZH[st[1]]}）", 11) + 18
        if lx > x and lx + w > c_width:
            rows, lx = rows + 1, x
        lx += w
    return rows


# ------------------------------------------------------------------------------- waterfall
@dataclass(frozen=True)
class Step:
    """One row of a waterfall: ``total`` and ``subtotal`` are drawn from zero, ``minus`` floats
    down from the running level, ``result`` is drawn from zero in its own pattern."""

    label: str
    key: str
    amount: Decimal
    kind: str  # total | minus | subtotal | result
    note: str = ""


def waterfall(steps: Sequence[Step], *, title: str, desc: str = "", width: int = 760) -> Markup:
    """R-INS-3's insurance-first order drawn as a waterfall: from the receipt's total down to the
    self-pay the aid is computed on, and the aid beside it."""
    label_w, value_w, row_h, top = 250, 120, 30, 34
    height = top + row_h * len(steps) + 40
    c = _Canvas(width, height, title, desc or title)
    c.text(8, 20, title, size=14, weight="bold")
    top_value = max([s.amount for s in steps if s.kind in ("total", "subtotal", "result")] + [Decimal("0.01")])
    plot_w = width - label_w - value_w - 16
    scale = plot_w / float(top_value)
    x0 = label_w + 8
    level = Decimal(0)
    previous_edge: float | None = None
    for i, s in enumerate(steps):
        y = top + i * row_h
        c.text(8, y + 14, s.label, size=13)
        c.text(8, y + 27, s.key, size=9, fill="#555555")
        if s.kind == "minus":
            start, end = max(level - s.amount, Decimal(0)), level  # self-pay is never below zero (R-INS-3)
            st, text = ("#c55a11", "hatch"), f"− {yuan(s.amount)}"
            level = start
        else:
            start, end = Decimal(0), s.amount
            st = ("#548235", "dots") if s.kind == "result" else ("#1f4e79", "solid")
            text = yuan(s.amount)
            if s.kind in ("total", "subtotal"):
                level = s.amount
        bx, bw = x0 + float(start) * scale, float(end - start) * scale
        c.rect(bx, y + 6, bw, row_h - 12, c.fill(st), label=f"{s.label} {s.key}: {text}")
        if previous_edge is not None:
            c.line(previous_edge, y - 6, previous_edge, y + 6, stroke="#777777", dash="2,2")
        previous_edge = x0 + float(level) * scale
        c.text(width - 8, y + 19, text, size=13, anchor="end", weight="bold" if s.kind in ("subtotal", "result") else "normal")
        if s.note:  # beside the bar where it fits, else left of it; the table below always has it
            room = len(s.note) * 6 + 8
            if bx + bw + room < width - value_w:
                c.text(bx + bw + 6, y + 19, s.note, size=10, fill="#555555")
            elif bx - room > x0:
                c.text(bx - 6, y + 19, s.note, size=10, fill="#555555", anchor="end")
    _legend(c, 8, height - 12, [("金额 amount", ("#1f4e79", "solid")), ("扣除 deducted", ("#c55a11", "hatch")), ("救助 aid", ("#548235", "dots"))])
    return c.render()


# ------------------------------------------------------------------------------- columns
def columns(x_labels: Sequence[str], series: Sequence[tuple[str, Sequence[Decimal]]], *, title: str, desc: str = "",
            width: int = 760, height: int = 300, label_every: int = 1) -> Markup:
    """Stacked columns (one per x label), each series in its own pattern, the column's total as
    text above it when there is room, a legend naming each pattern."""
    n = max(len(x_labels), 1)
    left, right, top = 78, 12, 34
    legend_items = [(name, style(j)) for j, (name, _) in enumerate(series)]
    n_rows = legend_rows(width, 78, legend_items)
    bottom = 46 + 18 * n_rows
    c = _Canvas(width, height, title, desc or title)
    c.text(8, 20, title, size=14, weight="bold")
    totals = [sum((s[1][i] for s in series), Decimal(0)) for i in range(len(x_labels))]
    y_max = _nice_max(max(totals + [Decimal(0)]))
    plot_h = height - top - bottom
    plot_w = width - left - right
    slot = plot_w / n
    bar_w = max(2.0, slot * 0.72)
    for k in range(5):
        v = y_max * k / 4
        y = top + plot_h - plot_h * k / 4
        c.line(left, y, width - right, y, stroke=GRID, width=0.6)
        c.text(left - 6, y + 4, yuan(Decimal(str(v)).quantize(Decimal("1"))).removesuffix(".00"), size=10, anchor="end")
    for i, label in enumerate(x_labels):
        x = left + i * slot + (slot - bar_w) / 2
        base = top + plot_h
        for j, (name, values) in enumerate(series):
            v = values[i]
            if v <= 0:
                continue
            h = plot_h * float(v) / y_max
            base -= h
            c.rect(x, base, bar_w, h, c.fill(style(j)), label=f"{label} {name}: {yuan(v)}")
        if totals[i] > 0 and slot >= 34:
            c.text(x + bar_w / 2, base - 4, yuan(totals[i]).removesuffix(".00"), size=9, anchor="middle")
        if i % max(label_every, 1) == 0:
            c.text(x + bar_w / 2, top + plot_h + 14, label, size=10, anchor="middle")
    c.line(left, top + plot_h, width - right, top + plot_h)
    _legend(c, left, height - 14 - 18 * (n_rows - 1), legend_items)
    return c.render()


def small_multiples(x_labels: Sequence[str], panels: Sequence[tuple[str, Sequence[Decimal]]], *, title: str, desc: str = "",
                    width: int = 760, per_row: int = 2, panel_h: int = 120) -> Markup:
    """One small column chart per panel (a street), on one shared scale, each titled with its name,
    its total and its largest month: nothing depends on colour."""
    rows = max(1, (len(panels) + per_row - 1) // per_row)
    top = 30
    height = top + rows * (panel_h + 14) + 8
    c = _Canvas(width, height, title, desc or title)
    c.text(8, 20, title, size=14, weight="bold")
    peak = max([v for _, vs in panels for v in vs] + [Decimal(0)])
    y_max = _nice_max(peak)
    pw = (width - 16) / per_row
    for p, (name, values) in enumerate(panels):
        px = 8 + (p % per_row) * pw
        py = top + (p // per_row) * (panel_h + 14)
        total = sum(values, Decimal(0))
        c.rect(px, py, pw - 10, panel_h, "#ffffff", stroke=GRID)
        c.text(px + 6, py + 15, f"{name}  合计 total {yuan(total)}", size=12, weight="bold")
        if values and max(values) > 0:
            best = max(range(len(values)), key=lambda i: values[i])
            c.text(px + 6, py + 29, f"最高 peak {x_labels[best]}: {yuan(values[best])}", size=10, fill="#444444")
        inner_top, inner_h = py + 36, panel_h - 52
        slot = (pw - 24) / max(len(values), 1)
        for i, v in enumerate(values):
            if v <= 0:
                continue
            h = inner_h * float(v) / y_max
            c.rect(px + 6 + i * slot, inner_top + inner_h - h, max(1.5, slot * 0.7), h, c.fill(style(0)), label=f"{name} {x_labels[i]}: {yuan(v)}")
        c.line(px + 6, inner_top + inner_h, px + pw - 18, inner_top + inner_h)
        if x_labels:
            c.text(px + 6, inner_top + inner_h + 12, x_labels[0], size=9)
            c.text(px + pw - 18, inner_top + inner_h + 12, x_labels[-1], size=9, anchor="end")
    return c.render()


# ------------------------------------------------------------------------------- cap usage
@dataclass(frozen=True)
class Point:
    on: date
    cumulative: Decimal
    label: str = ""


def cap_usage(points: Sequence[Point], *, year: int, cap: Decimal | None, title: str, desc: str = "",
              width: int = 760, height: int = 240) -> Markup:
    """R-CAP-1/R-CAP-2: the aid that counts against an annual cap, accumulated by invoice date
    through the cap year, as a step line, with the cap as a dashed line and both named in text."""
    left, right, top, bottom = 86, 150, 34, 36
    c = _Canvas(width, height, title, desc or title)
    c.text(8, 20, title, size=14, weight="bold")
    start, end = date(year, 1, 1), date(year, 12, 31)
    last = points[-1].cumulative if points else Decimal(0)
    y_max = _nice_max(max([cap or Decimal(0), last, Decimal("0.01")]))
    plot_w, plot_h = width - left - right, height - top - bottom
    span = (end - start).days or 1

    def X(d: date) -> float:
        return left + plot_w * (d - start).days / span

    def Y(v: Decimal) -> float:
        return top + plot_h - plot_h * float(v) / y_max

    for k in range(5):
        v = Decimal(str(y_max * k / 4))
        c.line(left, Y(v), left + plot_w, Y(v), stroke=GRID, width=0.6)
        c.text(left - 6, Y(v) + 4, yuan(v.quantize(Decimal("1"))).removesuffix(".00"), size=10, anchor="end")
    for m in range(1, 13):
        x = X(date(year, m, 1))
        c.line(x, top + plot_h, x, top + plot_h + 4)
        c.text(x + 2, top + plot_h + 16, f"{m}月", size=10)
    c.line(left, top + plot_h, left + plot_w, top + plot_h)
    if cap is not None:
        c.line(left, Y(cap), left + plot_w, Y(cap), stroke="#c00000", width=1.6, dash="7,4")
        c.text(left + plot_w + 6, Y(cap) + 4, f"限额 cap {yuan(cap)}", size=11, weight="bold")
    path = [f"M{_num(X(start))},{_num(Y(Decimal(0)))}"]
    level = Decimal(0)
    for p in points:
        path.append(f"L{_num(X(p.on))},{_num(Y(level))}")
        level = p.cumulative
        path.append(f"L{_num(X(p.on))},{_num(Y(level))}")
    path.append(f"L{_num(X(end))},{_num(Y(level))}")
    c.add(f'<path d="{" ".join(path)}" fill="none" stroke="#1f4e79" stroke-width="2"/>')
    for p in points:
        c.add(f'<circle cx="{_num(X(p.on))}" cy="{_num(Y(p.cumulative))}" r="2.6" fill="#1f4e79"><title>{_t(p.label or p.on.isoformat())}: {_t(yuan(p.cumulative))}</title></circle>')
    used = f"已用 used {yuan(last)}"
    if cap:
        used += f"（{(last / cap * 100).quantize(Decimal('0.1'))}%）"
    c.text(left + plot_w + 6, Y(last) + (16 if cap is not None and abs(Y(last) - Y(cap)) < 14 else 4), used, size=11)
    return c.render()


# ------------------------------------------------------------------------------- periods
@dataclass(frozen=True)
class Span:
    start: date
    end: date | None  # None: still open
    kind: str  # held | revoked | other
    text: str = ""


@dataclass(frozen=True)
class Row:
    label: str
    key: str
    spans: tuple[Span, ...]


SPAN_STYLES = {"held": ("#1f4e79", "solid"), "revoked": ("#c00000", "hatch"), "other": ("#548235", "dots")}
SPAN_ZH = {"held": "有效 held", "revoked": "已撤销（追溯）revoked later", "other": "参保 insured"}


def periods(rows: Sequence[Row], *, start: date, end: date, today: date, title: str, desc: str = "", width: int = 760) -> Markup:
    """Categories (and insurance) held over time, one row each; a period revoked afterwards keeps
    its outline, hatched, so a retroactive revocation shows."""
    label_w, top, row_h = 200, 62, 34
    height = top + row_h * max(len(rows), 1) + 44
    c = _Canvas(width, height, title, desc or title)
    c.text(8, 20, title, size=14, weight="bold")
    plot_w = width - label_w - 16
    days = max((end - start).days, 1)

    def X(d: date) -> float:
        return label_w + plot_w * min(max((d - start).days, 0), days) / days

    for year in range(start.year, end.year + 1):
        d = date(year, 1, 1)
        if start <= d <= end:
            c.line(X(d), top - 8, X(d), top + row_h * len(rows), stroke=GRID, width=0.6)
            c.text(X(d) + 2, top - 10, str(year), size=10)
    if start <= today <= end:
        c.line(X(today), top - 8, X(today), top + row_h * len(rows), stroke=INK, dash="3,3")
        near_left = X(today) < label_w + 160
        c.text(X(today) + (4 if near_left else -4), top - 24, f"今天 today {today.isoformat()}", size=10, anchor="start" if near_left else "end")
    for i, row in enumerate(rows):
        y = top + i * row_h
        c.text(8, y + 14, row.label, size=12)
        c.text(8, y + 27, row.key, size=10, fill="#555555")
        for s in row.spans:
            x1 = X(s.start)
            x2 = X(s.end + timedelta(days=1)) if s.end is not None else X(end)
            c.rect(x1, y + 4, max(x2 - x1, 2.0), row_h - 10, c.fill(SPAN_STYLES.get(s.kind, SPAN_STYLES["other"])),
                   label=f"{row.label}: {s.text}", dash="4,2" if s.kind == "revoked" else "")
            if text_width(s.text, 10) + 8 <= x2 - x1:  # the dates inside the bar when they fit (the page lists them all)
                held = s.kind == "held"
                if not held:  # a white plate keeps the text readable on the hatching
                    c.add(f'<rect x="{_num(x1 + 2)}" y="{_num(y + row_h / 2 - 7)}" width="{_num(text_width(s.text, 10) + 4)}" height="13" fill="#ffffff"/>')
                c.text(x1 + 4, y + row_h / 2 + 3, s.text, size=10, fill="#ffffff" if held else INK)
    kinds = [k for k in SPAN_STYLES if any(s.kind == k for row in rows for s in row.spans)]
    _legend(c, label_w, height - 14, [(SPAN_ZH[k], SPAN_STYLES[k]) for k in kinds])
    return c.render()


def months_between(first: date, last: date) -> list[str]:
    """Every month from ``first`` to ``last`` as ``YYYY-MM``."""
    out, y, m = [], first.year, first.month
    while (y, m) <= (last.year, last.month):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def sparse_labels(labels: Iterable[str], every: int) -> int:
    """How often to print an x label so that they do not overlap (at most ``every`` labels)."""
    n = len(list(labels))
    return max(1, -(-n // max(every, 1)))
