"""The document rendered to self-contained HTML (Jinja2 templates) and to Markdown.

``to_html`` fills ``report/templates/report.html.j2`` (page layout, inline CSS; one macro per block kind
in ``blocks.html.j2``): every figure is embedded as a base64 data URI, no external URL, no script.
Autoescape is on, so text from MLflow (notes, params, run names) is always escaped. The templates are
package data, read through importlib.resources, so an installed package finds them too.
``to_markdown`` refers to the same figures as PNG files in ``figures/`` beside report.md.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

from jinja2 import Environment, FunctionLoader, StrictUndefined
from markupsafe import Markup, escape

from core.io import atomic_write_bytes, atomic_write_text
from report.document import Block, Figure, Heading, Para, Span, Table

PAGE_TEMPLATE = "report.html.j2"


def inline_html(text: str) -> Markup:
    """Escape ``text``, then turn `code`, **bold** and *em* into tags (the Para/caption markup)."""
    out = str(escape(text))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return Markup(re.sub(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])", r"<em>\1</em>", out))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _template_source(name: str) -> str | None:
    path = files("report").joinpath("templates", name)
    return path.read_text(encoding="utf-8") if path.is_file() else None


@functools.cache
def environment() -> Environment:
    """The report's Jinja2 environment: templates from the package, autoescape on, strict undefined."""
    env = Environment(
        loader=FunctionLoader(_template_source),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(inline=inline_html, data_uri=data_uri)
    env.tests.update(
        heading=lambda b: isinstance(b, Heading),
        para=lambda b: isinstance(b, Para),
        table=lambda b: isinstance(b, Table),
        figure=lambda b: isinstance(b, Figure),
    )
    return env


def to_html(doc: Sequence[Block]) -> str:
    return environment().get_template(PAGE_TEMPLATE).render(doc=list(doc))


MD_MARK = {"good": " ✓", "bad": " ✗"}


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _span_md(s: Span) -> str:
    text = _md_escape(s.text)
    if s.kind == "code":
        return f"`{text}`" if text else ""
    if s.kind == "strong":
        return f"**{text}**" if text else ""
    return text + MD_MARK.get(s.kind, "")


def to_markdown(doc: Sequence[Block], figures_dir: str = "figures") -> str:
    out: list[str] = []
    n_table = n_figure = 0
    for block in doc:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}\n")
        elif isinstance(block, Para):
            out.append(block.text + "\n")
        elif isinstance(block, Table):
            n_table += 1
            out.append(f"*Table {n_table}. {block.caption}*\n")
            out.append("| " + " | ".join(_md_escape(h) for h in block.header) + " |")
            out.append("|" + "|".join("---" for _ in block.header) + "|")
            for row in block.rows:
                cells = ["<br>".join("".join(_span_md(s) for s in line) for line in c.lines) for c in row]
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
        elif isinstance(block, Figure):
            n_figure += 1
            out.append(f"![Figure {n_figure}]({figures_dir}/{block.name})\n")
            out.append(f"*Figure {n_figure}. {block.caption}*\n")
    return "\n".join(out)


def write_report(doc: Sequence[Block], out_dir: Path) -> None:
    """index.html (self-contained), report.md and figures/*.png into ``out_dir``."""
    for block in doc:
        if isinstance(block, Figure):
            atomic_write_bytes(out_dir / "figures" / block.name, block.png)
    atomic_write_text(out_dir / "index.html", to_html(doc))
    atomic_write_text(out_dir / "report.md", to_markdown(doc))
