"""Small charts as inline SVG: the HTML report opens anywhere, with no script and no network.

Every mark (a line, a bar, a point) has class "mark" and a <title> with its value, so a reader
hovering sees the number and a test can count what was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04")
Series = tuple[str, list[float | None]]


def _nice_max(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        top = step * 10**exponent
        if top >= value:
            return float(top)
    return float(10 ** (exponent + 1))


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _frame(kind: str, title: str, width: int, height: int, body: list[str]) -> str:
    return (
        f'<svg class="chart" data-chart="{escape(kind)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>' + "".join(body) + "</svg>"
    )


def _range(values: list[float]) -> tuple[float, float]:
    """(bottom, top) of the value axis: from 0 (or below it, for negative values) up."""
    top = _nice_max(max(values, default=0.0))
    low = min(values, default=0.0)
    return (-_nice_max(-low) if low < 0 else 0.0), top


def _axes(
    bottom: float, top: float, left: int, right: int, upper: int, lower: int, unit: str
) -> list[str]:
    out = []
    for i in range(5):
        value = bottom + (top - bottom) * i / 4
        y = lower - (lower - upper) * i / 4
        out.append(
            f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{escape(_fmt(value))}</text>"
        )
    out.append(f'<text x="{left}" y="{upper - 8}" class="unit">{escape(unit)}</text>')
    return out


def _legend(series: list[str], left: int, y: int) -> list[str]:
    out = []
    x = left
    for index, name in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        out.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{y}" class="legend">{escape(name)}</text>'
        )
        x += 24 + 7 * len(name)
    return out


def _value_axis(
    series: list[Series], bounds: list[tuple[str, float]] | None, upper: int, lower: int
) -> tuple[float, float, Callable[[float], float]]:
    """(bottom, top, y) of the vertical axis that holds every value and bound."""
    values = [v for _, vs in series for v in vs if v is not None]
    values += [b for _, b in bounds or []]
    bottom, top = _range(values)

    def y(v: float) -> float:
        return lower - (lower - upper) * min(max((v - bottom) / (top - bottom), 0.0), 1.05)

    return bottom, top, y


def _bound_lines(
    bounds: list[tuple[str, float]] | None, y: Callable[[float], float], left: int, right: int
) -> list[str]:
    """Dashed horizontal lines for bounds (an SLO, a budget), labelled at the right."""
    out = []
    for label, value in bounds or []:
        at = y(value)
        out.append(
            f'<line class="bound" x1="{left}" x2="{right}" y1="{at:.1f}" y2="{at:.1f}" '
            f'stroke="#dc2626" stroke-dasharray="5 4"/>'
            f'<text x="{right}" y="{at - 4:.1f}" text-anchor="end" class="bound-label">'
            f"{escape(label)} {escape(_fmt(value))}</text>"
        )
    return out


def line_chart(
    kind: str,
    title: str,
    labels: list[str],
    series: list[Series],
    *,
    unit: str = "",
    bounds: list[tuple[str, float]] | None = None,
    width: int = 640,
    height: int = 240,
) -> str:
    """Lines over `labels` (x); None values leave gaps; `bounds` are dashed horizontal lines."""
    left, right, upper, lower = 56, width - 12, 28, height - 44
    bottom, top, y = _value_axis(series, bounds, upper, lower)
    count = max(len(labels), 1)

    def x(i: int) -> float:
        return left + (right - left) * (i / (count - 1) if count > 1 else 0.5)

    body = _axes(bottom, top, left, right, upper, lower, unit)
    for index, (name, vs) in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        run: list[str] = []
        segments: list[list[str]] = []
        for i, v in enumerate(vs):
            if v is None:
                if run:
                    segments.append(run)
                run = []
                continue
            run.append(f"{x(i):.1f},{y(v):.1f}")
            where = labels[i] if i < len(labels) else ""
            body.append(
                f'<circle class="mark point" cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" '
                f'fill="{colour}"><title>{escape(name)} {escape(where)}: {escape(_fmt(v))}'
                "</title></circle>"
            )
        if run:
            segments.append(run)
        for points in segments:
            if len(points) > 1:
                body.append(
                    f'<polyline class="mark line" fill="none" stroke="{colour}" '
                    f'stroke-width="2" points="{" ".join(points)}"/>'
                )
    body += _bound_lines(bounds, y, left, right)
    for i in sorted({0, count // 2, count - 1}):
        if i < len(labels):
            anchor = "start" if i == 0 and count > 1 else "end" if i == count - 1 else "middle"
            body.append(
                f'<text x="{x(i):.1f}" y="{lower + 16}" text-anchor="{anchor}" class="tick">'
                f"{escape(labels[i])}</text>"
            )
    body += _legend([name for name, _ in series], left, height - 8)
    return _frame(kind, title, width, height, body)


def bar_chart(
    kind: str,
    title: str,
    categories: list[str],
    series: list[Series],
    *,
    unit: str = "",
    bounds: list[tuple[str, float]] | None = None,
    width: int = 640,
    height: int = 240,
) -> str:
    """Grouped vertical bars: one group per category, one bar per series."""
    left, right, upper, lower = 56, width - 12, 28, height - 44
    bottom, top, y = _value_axis(series, bounds, upper, lower)
    groups = max(len(categories), 1)
    slot = (right - left) / groups
    bar = min(slot * 0.8 / max(len(series), 1), 48)

    body = _axes(bottom, top, left, right, upper, lower, unit)
    for g, category in enumerate(categories):
        start = left + slot * g + (slot - bar * len(series)) / 2
        for index, (name, vs) in enumerate(series):
            v = vs[g] if g < len(vs) else None
            if v is None:
                continue
            y0, y1 = sorted((y(0.0), y(v)))
            body.append(
                f'<rect class="mark bar" x="{start + index * bar:.1f}" y="{y0:.1f}" '
                f'width="{bar - 2:.1f}" height="{max(y1 - y0, 0.5):.1f}" '
                f'fill="{PALETTE[index % len(PALETTE)]}"><title>{escape(category)} '
                f"{escape(name)}: {escape(_fmt(v))}</title></rect>"
            )
        body.append(
            f'<text x="{left + slot * (g + 0.5):.1f}" y="{lower + 16}" text-anchor="middle" '
            f'class="tick">{escape(category)}</text>'
        )
    body += _bound_lines(bounds, y, left, right)
    body += _legend([name for name, _ in series], left, height - 8)
    return _frame(kind, title, width, height, body)


def hbar_chart(
    kind: str,
    title: str,
    items: list[tuple[str, float | None, bool | None]],
    *,
    threshold: float | None = None,
    unit: str = "",
    width: int = 640,
) -> str:
    """One horizontal bar per item (label, value, flagged): red when flagged."""
    row = 22
    height = 40 + row * max(len(items), 1)
    left, right = 150, width - 60
    values = [v for _, v, _ in items if v is not None] + ([threshold] if threshold else [])
    top = _nice_max(max(values, default=0.0))
    body = [f'<text x="{left}" y="16" class="unit">{escape(unit)}</text>']
    for i, (label, value, flagged) in enumerate(items):
        yv = 28 + i * row
        body.append(
            f'<text x="{left - 8}" y="{yv + 12}" text-anchor="end" class="tick">'
            f"{escape(label)}</text>"
        )
        if value is None:
            body.append(f'<text x="{left + 4}" y="{yv + 12}" class="tick">not enough data</text>')
            continue
        w = (right - left) * min(value / top, 1.05)
        colour = "#dc2626" if flagged else "#16a34a"
        body.append(
            f'<rect class="mark bar" x="{left}" y="{yv}" width="{max(w, 1):.1f}" '
            f'height="{row - 6}" '
            f'fill="{colour}"><title>{escape(label)}: {escape(_fmt(value))}</title></rect>'
            f'<text x="{left + max(w, 1) + 4:.1f}" y="{yv + 12}" class="tick">'
            f"{escape(_fmt(value))}</text>"
        )
    if threshold:
        xv = left + (right - left) * min(threshold / top, 1.05)
        body.append(
            f'<line class="bound" x1="{xv:.1f}" x2="{xv:.1f}" y1="22" y2="{height - 8}" '
            f'stroke="#dc2626" stroke-dasharray="5 4"/>'
        )
    return _frame(kind, title, width, height, body)
