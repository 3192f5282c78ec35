"""The report as a small document model: headings, paragraphs, tables of styled cells and figures.

``report.sections`` builds it from the gathered data; ``report.render`` writes it as HTML and Markdown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MISSING = "—"


@dataclass(frozen=True)
class Span:
    text: str
    kind: str = ""  # "" | code | good | bad | muted | strong


@dataclass
class Cell:
    lines: list[list[Span]]

    @classmethod
    def of(cls, text: str, kind: str = "") -> Cell:
        return cls([[Span(text, kind)]])


@dataclass
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass
class Para:
    text: str  # `code` and **bold** are the only inline markup


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[Cell]]
    row_classes: list[str] = field(default_factory=list)


@dataclass
class Figure:
    name: str  # file name in figures/
    png: bytes
    caption: str


Block = Heading | Para | Table | Figure


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt_delta(delta: float) -> str:
    return "±0" if delta == 0 else f"{delta:+.3g}"


def fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
