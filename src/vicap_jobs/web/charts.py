"""Line charts as inline SVG, drawn on the server: no chart library, no script, nothing from a CDN.

A model page charts BLEU-4 and ROUGE-L over time from its evaluations (the nightly
re-evaluations add a point each night). Every label goes through ``markupsafe.escape``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True)
class Series:
    """One line: its name and its (time, value) points."""

    name: str
    points: Sequence[tuple[datetime, float]]
    dashed: bool = False


def line_chart(
    series: Sequence[Series], *, width: int = 640, height: int = 260, y_label: str = "score", title: str = ""
) -> Markup:
    """An SVG line chart of ``series`` over time, y from 0 to the largest value (at least 0.1), with a legend."""
    left, right, top, bottom = 48, 16, 24, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [p for s in series for p in s.points]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" aria-label="{escape(title or y_label)}">'
    ]
    if title:
        parts.append(f"<title>{escape(title)}</title>")
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>')
    if not points:
        parts.append(
            f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle" fill="#666">no evaluations yet</text>'
        )
        parts.append("</svg>")
        return Markup("".join(parts))
    times = [p[0].timestamp() for p in points]
    t0, t1 = min(times), max(times)
    y_max = max(0.1, max(p[1] for p in points) * 1.1)

    def x_of(moment: datetime) -> float:
        return left + (plot_w / 2 if t1 == t0 else (moment.timestamp() - t0) / (t1 - t0) * plot_w)

    def y_of(value: float) -> float:
        return top + plot_h - value / y_max * plot_h

    for i in range(5):  # horizontal grid lines with their values
        value = y_max * i / 4
        y = y_of(value)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">{value:.2f}</text>'
        )
    for moment in (min(points)[0], max(points)[0]):
        anchor = "start" if moment == min(points)[0] else "end"
        parts.append(
            f'<text x="{x_of(moment):.1f}" y="{top + plot_h + 16}" text-anchor="{anchor}" font-size="11" fill="#555">'
            f"{escape(moment.strftime('%Y-%m-%d %H:%M'))}</text>"
        )
    parts.append(
        f'<text x="12" y="{top + plot_h / 2:.1f}" font-size="11" fill="#555" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})" text-anchor="middle">{escape(y_label)}</text>'
    )
    for index, line in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        ordered = sorted(line.points)
        coords = " ".join(f"{x_of(t):.1f},{y_of(v):.1f}" for t, v in ordered)
        dash = ' stroke-dasharray="5 4"' if line.dashed else ""
        parts.append(
            f'<polyline class="series" data-series="{escape(line.name)}" points="{coords}" fill="none" '
            f'stroke="{colour}" stroke-width="2"{dash}/>'
        )
        for t, v in ordered:
            parts.append(
                f'<circle cx="{x_of(t):.1f}" cy="{y_of(v):.1f}" r="3" fill="{colour}">'
                f"<title>{escape(line.name)}: {v:.4f} ({escape(t.strftime('%Y-%m-%d %H:%M'))})</title></circle>"
            )
        legend_y = top + plot_h + 32
        legend_x = left + index * 170
        parts.append(f'<rect x="{legend_x}" y="{legend_y - 9}" width="12" height="4" fill="{colour}"/>')
        parts.append(f'<text x="{legend_x + 16}" y="{legend_y - 4}" font-size="11">{escape(line.name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
