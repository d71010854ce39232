"""Small server-rendered SVG charts for the console (no script: the pages allow none).

Every number is formatted by this module and every label escaped, so the markup is safe to
embed as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

#: The chart's size in SVG units (it scales to its container).
WIDTH, HEIGHT = 640, 180
_PAD_LEFT, _PAD_BOTTOM, _PAD_TOP = 44, 22, 10
#: Colours of the rate lines, in order.
PALETTE = ("#1d4ed8", "#067647", "#b54708", "#b42318", "#6941c6")


def bar_chart(labels: Sequence[str], values: Sequence[int], *, title: str) -> Markup:
    """Bars of ``values`` (one per label, e.g. a day), with the largest value on the axis."""
    top = max(values, default=0) or 1
    width = (WIDTH - _PAD_LEFT) / max(len(values), 1)
    plot = HEIGHT - _PAD_BOTTOM - _PAD_TOP
    parts = [_frame(title, f"{top:,}")]
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        height = plot * value / top
        x = _PAD_LEFT + index * width
        y = HEIGHT - _PAD_BOTTOM - height
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(width - 2, 1):.1f}" '
            f'height="{height:.1f}" fill="#1d4ed8"><title>{escape(label)}: {value:,}</title>'
            "</rect>"
        )
    parts.append(_ticks(labels, width))
    return _svg(title, parts)


def line_chart(
    labels: Sequence[str], series: dict[str, Sequence[float | None]], *, title: str
) -> Markup:
    """Rates from 0 to 100 % (``None``: no value that day), one line per series."""
    step = (WIDTH - _PAD_LEFT) / max(len(labels), 1)
    plot = HEIGHT - _PAD_BOTTOM - _PAD_TOP
    parts = [_frame(title, "100%")]
    legend = []
    for number, (name, values) in enumerate(series.items()):
        colour = PALETTE[number % len(PALETTE)]
        points = [
            f"{_PAD_LEFT + (index + 0.5) * step:.1f},{HEIGHT - _PAD_BOTTOM - plot * value:.1f}"
            for index, value in enumerate(values)
            if value is not None
        ]
        if points:
            parts.append(
                f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" '
                f'stroke-width="2"><title>{escape(name)}</title></polyline>'
            )
        for index, value in enumerate(values):  # a dot per day, so a lone day shows too
            if value is not None:
                x = _PAD_LEFT + (index + 0.5) * step
                y = HEIGHT - _PAD_BOTTOM - plot * value
                parts.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                    f"<title>{escape(name)} {escape(labels[index])}: {value:.1%}</title></circle>"
                )
        legend.append(
            f'<tspan fill="{colour}">■ {escape(name)}</tspan>'
            if number == 0
            else f'<tspan fill="{colour}" dx="10">■ {escape(name)}</tspan>'
        )
    keys = "".join(legend)
    parts.append(f'<text x="{_PAD_LEFT + 8}" y="{_PAD_TOP + 2}" font-size="11">{keys}</text>')
    parts.append(_ticks(labels, step))
    return _svg(title, parts)


def _frame(title: str, top_label: str) -> str:
    bottom = HEIGHT - _PAD_BOTTOM
    return (
        f'<line x1="{_PAD_LEFT}" y1="{_PAD_TOP}" x2="{_PAD_LEFT}" y2="{bottom}" stroke="#8891a0"/>'
        f'<line x1="{_PAD_LEFT}" y1="{bottom}" x2="{WIDTH}" y2="{bottom}" stroke="#8891a0"/>'
        f'<text x="{_PAD_LEFT - 4}" y="{_PAD_TOP + 10}" font-size="10" text-anchor="end">'
        f"{escape(top_label)}</text>"
        f'<text x="{_PAD_LEFT - 4}" y="{bottom}" font-size="10" text-anchor="end">0</text>'
    )


def _ticks(labels: Sequence[str], step: float) -> str:
    """The first, middle and last labels under the axis."""
    if not labels:
        return ""
    chosen = sorted({0, len(labels) // 2, len(labels) - 1})
    return "".join(
        f'<text x="{_PAD_LEFT + (index + 0.5) * step:.1f}" y="{HEIGHT - 6}" font-size="10" '
        f'text-anchor="middle">{escape(labels[index])}</text>'
        for index in chosen
    )


def _svg(title: str, parts: Sequence[str]) -> Markup:
    return Markup(  # noqa: S704 - every value above is a formatted number or escaped text
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{''.join(parts)}</svg>"
    )
