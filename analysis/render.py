"""Render a report document as HTML and as Markdown.

The HTML inlines its CSS and every figure's PNG (base64); a figure that also has a
plotly version is drawn interactively by plotly.js, read from ``plotly.min.js`` beside
report.html (:mod:`analysis.embed`), its PNG standing in until then.  The Markdown
links the PNGs by relative path."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import embed

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1150px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
.summary { background: #f5f7fa; border-left: 4px solid #4a78b0; padding: 0.6em 1.2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #d0d0d0; padding: 0.25em 0.5em; text-align: right; }
td { white-space: nowrap; } .notes { font-size: 0.85em; color: #444; }
th { background: #eef1f5; } td.text, th.text { text-align: left; }
.scroll { overflow-x: auto; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
"""


@dataclass(frozen=True)
class FigureRef:
    caption: str
    path: str  # relative to the report directory
    plot: str | None = None         # plotly JSON: report.html draws it in place of the PNG
    plot_caption: str | None = None  # its caption, when it shows more than the PNG


@dataclass(frozen=True)
class Section:
    title: str
    paragraphs: tuple[str, ...] = ()
    table: pd.DataFrame | None = None
    notes: tuple[str, ...] = ()          # shown under the table
    figures: tuple[FigureRef, ...] = ()


@dataclass(frozen=True)
class Document:
    title: str
    summary: tuple[str, ...]
    sections: tuple[Section, ...] = field(default_factory=tuple)


def format_cell(value) -> str:
    """Numbers to 3 significant digits, integers whole, missing values as "—"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.0f}" if float(value).is_integer() and abs(value) < 1e6 else f"{value:.3g}"
    return str(value)


def _is_text_column(values: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(values)


def _cell(tag: str, text: str, is_text: bool) -> str:
    css = ' class="text"' if is_text else ""
    return f"<{tag}{css}>{html.escape(text)}</{tag}>"


def html_table(frame: pd.DataFrame) -> str:
    text_cols = [_is_text_column(frame[c]) for c in frame.columns]
    head = "".join(_cell("th", str(c), is_text) for c, is_text in zip(frame.columns, text_cols))
    rows = []
    for record in frame.itertuples(index=False):
        cells = "".join(_cell("td", format_cell(v), is_text) for v, is_text in zip(record, text_cols))
        rows.append(f"<tr>{cells}</tr>")
    body = "".join(rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        return format_cell(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in record) + " |" for record in frame.itertuples(index=False)]
    return "\n".join(lines)


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure_html(figure: FigureRef, root: Path, div_id: str) -> str:
    src = _png_data_uri(root / figure.path)
    if figure.plot:
        return embed.figure_html(figure.plot, div_id, figure.plot_caption or figure.caption, src, figure.path)
    caption = html.escape(figure.caption)
    return f'<figure><img alt="{caption}" src="{src}"><figcaption>{caption}</figcaption></figure>'


def has_plots(document: Document) -> bool:
    return any(figure.plot for section in document.sections for figure in section.figures)


def render_html(document: Document, root: Path) -> str:
    """The whole report as one HTML string; figure files are read from ``root``.  With
    interactive figures it loads ``plotly.min.js`` from beside itself (write it with
    :func:`analysis.embed.write_plotly_js`)."""
    plots = has_plots(document)
    css = _CSS + (embed.CSS if plots else "")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(document.title)}</title><style>{css}</style></head><body>",
             f"<h1>{html.escape(document.title)}</h1>", '<section class="summary"><h2>Summary</h2>']
    parts += [f"<p>{html.escape(p)}</p>" for p in document.summary]
    parts.append("</section>")
    figures = 0
    for section in document.sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
        if section.table is not None:
            parts.append(html_table(section.table))
        if section.notes:
            items = "".join(f"<li>{html.escape(n)}</li>" for n in section.notes)
            parts.append(f'<ul class="notes">{items}</ul>')
        for figure in section.figures:
            figures += 1
            parts.append(_figure_html(figure, root, f"figure-{figures}"))
        parts.append("</section>")
    if plots:
        parts.append(embed.loader_html())
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(document: Document) -> str:
    lines = [f"# {document.title}", "", "## Summary", ""]
    for paragraph in document.summary:
        lines += [paragraph, ""]
    for section in document.sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        if section.table is not None:
            lines += [markdown_table(section.table), ""]
        if section.notes:
            lines += [f"- {n}" for n in section.notes] + [""]
        for figure in section.figures:
            lines += [f"![{figure.caption}]({figure.path})", "", f"*{figure.caption}*", ""]
    return "\n".join(lines)
