"""Plotly figures in report.html.

plotly.js is written once, as ``plotly.min.js`` beside report.html, and loaded with a
relative ``<script src>``: no CDN, so the report opens offline, and one copy serves
every figure instead of several megabytes inlined per page.  Each figure is a div,
its plotly JSON in a ``<script type="application/json">`` block, and its PNG, which
stays shown until plotly.js has drawn the figure: a report.html opened without
plotly.min.js beside it, or with scripts off, still shows every figure.
"""

from __future__ import annotations

import html
from pathlib import Path

PLOTLY_JS = "plotly.min.js"
CSS = """
figure.live img.fallback { display: none; }
.plotly-graph-div { width: 100%; }
"""
# the PNG goes once plotly.js has drawn the figure, and only then
_LOADER = """<script>
document.querySelectorAll("script[data-plot]").forEach(function (block) {
  if (!window.Plotly) { return; }
  var figure = JSON.parse(block.textContent), div = document.getElementById(block.dataset.plot);
  Plotly.newPlot(div, figure.data, figure.layout, {responsive: true, displaylogo: false})
    .then(function () { div.parentNode.classList.add("live"); });
});
</script>"""


def write_plotly_js(out: Path) -> Path:
    """plotly.js, as shipped with the plotly package, into ``out``."""
    from plotly.offline import get_plotlyjs

    path = Path(out) / PLOTLY_JS
    path.write_text(get_plotlyjs(), encoding="utf-8")
    return path


def script_safe(json_text: str) -> str:
    """JSON that cannot end its ``<script>`` block: every ``<`` (only ever inside a JSON
    string) as its ``\\u003c`` escape, which JSON.parse reads back as ``<``."""
    return json_text.replace("<", "\\u003c")


def figure_html(plot: str, div_id: str, caption: str, png_src: str, png_path: str) -> str:
    """The figure drawn from ``plot`` (plotly JSON), its PNG (``png_src``) until then, and a
    caption linking the PNG file (``png_path``, relative to report.html)."""
    text = html.escape(caption)
    return (f'<figure class="interactive"><div class="plotly-graph-div" id="{div_id}"></div>'
            f'<script type="application/json" data-plot="{div_id}">{script_safe(plot)}</script>'
            f'<img class="fallback" alt="{text}" src="{png_src}">'
            f'<figcaption>{text} (<a href="{html.escape(png_path)}">PNG</a>)</figcaption></figure>')


def loader_html() -> str:
    """plotly.js, then the script that draws every figure; at the end of the body, after
    the figures' blocks."""
    return f'<script src="{PLOTLY_JS}" charset="utf-8"></script>\n{_LOADER}'
