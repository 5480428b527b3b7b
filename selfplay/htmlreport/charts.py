"""Inline SVG charts: per-iteration metric lines with interval bars, and a K×K win-matrix heat map.

Drawn here rather than by matplotlib so the report is one text file that opens anywhere, scales with the
page and has a tooltip (``<title>``) on every point and cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from selfplay.htmlreport.markup import Html, el, fmt_number

# Colours of successive series (runs in a comparison); colour-blind-safe (Okabe–Ito).
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]


@dataclass
class Series:
    """One line: a value per x position (None: no point there) and optional interval bounds."""

    name: str
    values: list[float | None]
    lo: list[float | None] = field(default_factory=list)
    hi: list[float | None] = field(default_factory=list)


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round tick values spanning [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if step * m >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _finite(v: float | None) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def line_chart(title: str, labels: list[str], series: list[Series], *, width: int = 330, height: int = 210,
               xlabel: str = "iteration") -> Html | None:
    """Lines over x = ``labels`` (base, 0, 1, ...), each point with its [lo, hi] bar when given; None if empty."""
    ys = [v for s in series for v in (*s.values, *s.lo, *s.hi) if _finite(v)]
    if not ys or not labels:
        return None
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad
    left, right, bottom = 48, 10, 34
    top = 24 if len(series) < 2 else 40  # room for the legend row under the title
    pw, ph = width - left - right, height - top - bottom
    step = pw / max(1, len(labels) - 1)

    def x(i: int) -> float:
        return left + (i * step if len(labels) > 1 else pw / 2)

    def y(v: float) -> float:
        return top + ph * (1 - (v - lo) / (hi - lo))

    parts = [el("text", title, x=width / 2, y=15, text_anchor="middle", font_size=12, font_weight=600)]
    for t in _ticks(lo, hi):
        parts.append(el("line", x1=left, x2=width - right, y1=f"{y(t):.1f}", y2=f"{y(t):.1f}", stroke="#e5e7eb"))
        parts.append(el("text", fmt_number(t, "{:.3g}"), x=left - 4, y=f"{y(t) + 3:.1f}", text_anchor="end",
                        font_size=10, fill="#6b7280"))
    for i, label in enumerate(labels):
        parts.append(el("text", label, x=f"{x(i):.1f}", y=height - bottom + 14, text_anchor="middle", font_size=10,
                        fill="#6b7280"))
    parts.append(el("text", xlabel, x=left + pw / 2, y=height - 4, text_anchor="middle", font_size=10, fill="#6b7280"))
    for k, s in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        points = [(i, v) for i, v in enumerate(s.values) if _finite(v)]
        if len(points) > 1:
            d = " ".join(f"{'M' if j == 0 else 'L'}{x(i):.1f},{y(v):.1f}" for j, (i, v) in enumerate(points))
            parts.append(el("path", d=d, fill="none", stroke=color, stroke_width=2))
        for i, v in points:
            lo_i = s.lo[i] if i < len(s.lo) else None
            hi_i = s.hi[i] if i < len(s.hi) else None
            tip = f"{s.name + ': ' if s.name else ''}{labels[i]}: {fmt_number(v, '{:.4g}')}"
            if _finite(lo_i) and _finite(hi_i):
                tip += f" [{fmt_number(lo_i, '{:.4g}')}, {fmt_number(hi_i, '{:.4g}')}]"
                parts.append(el("line", x1=f"{x(i):.1f}", x2=f"{x(i):.1f}", y1=f"{y(lo_i):.1f}", y2=f"{y(hi_i):.1f}",
                                stroke=color, stroke_width=1.5, opacity=0.6))
                for b in (lo_i, hi_i):
                    parts.append(el("line", x1=f"{x(i) - 4:.1f}", x2=f"{x(i) + 4:.1f}", y1=f"{y(b):.1f}",
                                    y2=f"{y(b):.1f}", stroke=color, stroke_width=1.5, opacity=0.6))
            parts.append(el("circle", el("title", tip), cx=f"{x(i):.1f}", cy=f"{y(v):.1f}", r=3.5, fill=color))
    if len(series) > 1:  # one legend row under the title, entries side by side
        x0 = left
        for k, s in enumerate(series):
            parts.append(el("rect", x=x0, y=22, width=9, height=9, fill=PALETTE[k % len(PALETTE)]))
            parts.append(el("text", s.name, x=x0 + 12, y=30, font_size=10))
            x0 += 12 + 6.2 * len(s.name) + 10
    return el("svg", parts, xmlns="http://www.w3.org/2000/svg", width=width, height=height,
              viewBox=f"0 0 {width} {height}", role="img", aria_label=title, class_="chart")


def _cell_color(t: float) -> str:
    """White (t = 0) to blue (t = 1)."""
    t = min(1.0, max(0.0, t))
    r, g, b = (round(255 + (c - 255) * t) for c in (33, 102, 172))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(matrix: list[list[float]], marks: dict[int, str], *, cell: int = 34, title: str = "") -> Html | None:
    """A K×K matrix, rows against columns (row i beats column j with P[i][j]); labels of ``marks`` rows in
    colour (chosen green, rejected red). Values outside [0, 1] (raw preference scores) are scaled by their
    largest magnitude around the middle colour."""
    if not matrix or not all(isinstance(r, list) and len(r) == len(matrix) for r in matrix):
        return None
    k = len(matrix)
    flat = [v for r in matrix for v in r if _finite(v)]
    prob = bool(flat) and all(0.0 <= v <= 1.0 for v in flat)
    scale = max((abs(v) for v in flat), default=1.0) or 1.0

    def shade(v: float) -> float:
        return v if prob else 0.5 + v / (2 * scale)

    mark_color = {"chosen": "#1a7f37", "rejected": "#c62828"}
    off = 28
    size = off + cell * k
    parts = [el("title", title)] if title else []
    for i in range(k):
        color = mark_color.get(marks.get(i, ""), "#374151")
        parts.append(el("text", str(i), x=off - 8, y=off + cell * i + cell / 2 + 4, text_anchor="end", font_size=11,
                        fill=color, font_weight=700 if i in marks else 400))
        parts.append(el("text", str(i), x=off + cell * i + cell / 2, y=off - 8, text_anchor="middle", font_size=11,
                        fill=color, font_weight=700 if i in marks else 400))
        for j in range(k):
            v = matrix[i][j]
            ok = _finite(v)
            fill = _cell_color(shade(v)) if ok else "#eeeeee"
            text_fill = "#ffffff" if ok and shade(v) > 0.6 else "#111827"
            tip = f"sample {i} vs {j}: {fmt_number(v, '{:.3f}')}"
            parts.append(el("rect", el("title", tip), x=off + cell * j, y=off + cell * i, width=cell, height=cell,
                            fill=fill, stroke="#ffffff"))
            parts.append(el("text", fmt_number(v, "{:.2f}") if ok else "–", x=off + cell * j + cell / 2,
                            y=off + cell * i + cell / 2 + 4, text_anchor="middle", font_size=10, fill=text_fill))
    return el("svg", parts, xmlns="http://www.w3.org/2000/svg", width=size + 4, height=size + 4,
              viewBox=f"0 0 {size + 4} {size + 4}", role="img", aria_label=title or "win matrix", class_="heatmap")
