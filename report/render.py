"""The document rendered to self-contained HTML and to Markdown.

``to_html`` embeds every figure as a base64 data URI with inline CSS (no external URL, no script), and
``to_markdown`` refers to the same figures as PNG files in ``figures/`` beside report.md.
"""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from core.io import atomic_write_bytes, atomic_write_text
from report.document import Block, Cell, Figure, Heading, Para, Span, Table


def inline_html(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])", r"<em>\1</em>", out)


CSS = """
body{font-family:Georgia,'Times New Roman',serif;color:#1d1d1f;max-width:1180px;margin:2rem auto;padding:0 1.2rem;
line-height:1.5;background:#fff}
h1{font-size:1.9rem;border-bottom:2px solid #1d1d1f;padding-bottom:.3rem}
h2{font-size:1.4rem;margin-top:2.2rem;border-bottom:1px solid #bbb}
h3{font-size:1.1rem;margin-top:1.4rem}
nav{font-family:Helvetica,Arial,sans-serif;font-size:.9rem}
nav a{margin-right:1rem;color:#1f5fa8}
table{border-collapse:collapse;margin:.2rem 0 1.4rem;font-family:Helvetica,Arial,sans-serif;font-size:.82rem}
.caption{font-style:italic;margin:.8rem 0 .2rem;font-size:.9rem}
div.table{overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25rem .5rem;vertical-align:top;text-align:left}
th{background:#f0f0f0}
tr.best td{background:#fff8dc}
code{font-family:Menlo,Consolas,monospace;font-size:.85em;background:#f4f4f4;padding:0 .2em}
.good{color:#1a7f37;font-weight:bold}
.bad{color:#c62828;font-weight:bold}
.muted{color:#777}
.star{color:#a56a00;font-weight:bold}
figure{margin:1rem 0 1.6rem}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-style:italic;font-size:.9rem}
"""


def _span_html(s: Span) -> str:
    text = html.escape(s.text)
    if s.kind == "code":
        return f"<code>{text}</code>"
    if s.kind == "strong":
        return f"<strong>{text}</strong>"
    return f'<span class="{s.kind}">{text}</span>' if s.kind else text


def _cell_html(cell: Cell, tag: str = "td") -> str:
    return f"<{tag}>" + "<br>".join("".join(_span_html(s) for s in line) for line in cell.lines) + f"</{tag}>"


def to_html(doc: Sequence[Block]) -> str:
    title = next((b.text for b in doc if isinstance(b, Heading)), "Report")
    body: list[str] = []
    n_table = n_figure = 0
    nav = [b for b in doc if isinstance(b, Heading) and b.level == 2 and b.anchor]
    for block in doc:
        if isinstance(block, Heading):
            anchor = f' id="{html.escape(block.anchor)}"' if block.anchor else ""
            body.append(f"<h{block.level}{anchor}>{html.escape(block.text)}</h{block.level}>")
            if block.level == 1 and nav:
                body.append("<nav>" + "".join(f'<a href="#{html.escape(h.anchor)}">{html.escape(h.text)}</a>'
                                              for h in nav) + "</nav>")
        elif isinstance(block, Para):
            body.append(f"<p>{inline_html(block.text)}</p>")
        elif isinstance(block, Table):
            n_table += 1
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            rows = []
            for k, row in enumerate(block.rows):
                cls = block.row_classes[k] if k < len(block.row_classes) else ""
                rows.append((f'<tr class="{cls}">' if cls else "<tr>") + "".join(_cell_html(c) for c in row)
                            + "</tr>")
            body.append(f'<div class="table"><p class="caption">Table {n_table}. {inline_html(block.caption)}</p>'
                        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
        elif isinstance(block, Figure):
            n_figure += 1
            data_uri = "data:image/png;base64," + base64.b64encode(block.png).decode("ascii")
            body.append(f'<figure><img src="{data_uri}" alt="{html.escape(block.caption)}">'
                        f"<figcaption>Figure {n_figure}. {inline_html(block.caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


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
