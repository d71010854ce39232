"""The console's SVG charts: bounded, escaped, no script."""

from __future__ import annotations

import re

from crm_notify.console.charts import bar_chart, line_chart


def test_bars_scale_to_the_largest_value_and_escape_labels() -> None:
    svg = str(bar_chart(["<b>", "x"], [2, 4], title='a "rule" <script>'))
    assert svg.startswith('<svg class="chart"') and "<script" not in svg
    assert "&lt;b&gt;: 2" in svg and 'aria-label="a &#34;rule&#34; &lt;script&gt;"' in svg
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', svg)]
    assert heights[1] == 2 * heights[0]


def test_lines_skip_days_without_a_value_and_mark_each_day() -> None:
    svg = str(line_chart(["d1", "d2", "d3"], {"open": [0.5, None, 1.0]}, title="rates"))
    assert svg.count("<circle ") == 2
    assert "open d1: 50.0%" in svg and "open d3: 100.0%" in svg
    assert str(line_chart([], {}, title="empty")).count("<circle ") == 0
