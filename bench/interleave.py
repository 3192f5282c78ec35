"""Interleaved comparisons for the benchmarks: figures that survive a rerun on another day.

Each path of a comparison runs in turn (A, B, A, B, ... after one warm-up round that is not counted), so
a slow spell of the machine hits every path alike; each figure is reported as its median and min–max
over the rounds, and each ratio to the baseline path is taken within a round (A_i / B_i) before its
median and min–max are reported. The 1-minute load average is printed at the start and the end: figures
taken under load say so.

    comparison = interleaved({"naive": run_naive, "stage": run_stage}, rounds=args.rounds)
    print(comparison.table(["images_per_s"], baseline="naive", ratio_of="images_per_s"))
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

ROUNDS = 5  # at least five A/B pairs (issue: medians that hold on a quiet machine)
QUICK_ROUNDS = 2

Figures = dict[str, float]


def add_rounds_arguments(parser: argparse.ArgumentParser, default: int = ROUNDS) -> None:
    parser.add_argument("--rounds", type=int, default=default, help=f"counted rounds of every path (default {default})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds: a smoke run, not a figure")


def rounds_from(args: argparse.Namespace) -> int:
    rounds = QUICK_ROUNDS if args.quick else args.rounds
    if rounds < 1:
        raise SystemExit(f"--rounds: got {rounds}; expected at least 1")
    return rounds


def thread_counts(text: str) -> dict[str, int]:
    """``--threads 2,1`` as path names and torch thread counts: {"2 threads": 2, "1 thread": 1}."""
    return {f"{t} thread{'s' if t != 1 else ''}": t for t in (int(v) for v in text.split(","))}


def load_average() -> float:
    return os.getloadavg()[0]


@dataclass
class Comparison:
    """Figures of every counted round of every path, in the order they ran."""

    runs: dict[str, list[Figures]] = field(default_factory=dict)
    load_start: float = 0.0
    load_end: float = 0.0

    def values(self, path: str, figure: str) -> list[float]:
        return [r[figure] for r in self.runs[path]]

    def ratios(self, path: str, baseline: str, figure: str) -> list[float]:
        """``path``'s figure over ``baseline``'s, round by round."""
        return [a / b for a, b in zip(self.values(path, figure), self.values(baseline, figure), strict=True) if b]

    def table(self, figures: Sequence[str], baseline: str | None = None, ratio_of: str | None = None) -> str:
        """A Markdown table: a row per path, median [min–max] of each figure and of the per-round ratio."""
        head = ["path", *figures] + ([f"{ratio_of} / {baseline}'s (per round)"] if baseline and ratio_of else [])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for path in self.runs:
            cells = [path] + [spread(self.values(path, f)) for f in figures]
            if baseline and ratio_of:
                cells.append("1x" if path == baseline else spread(self.ratios(path, baseline, ratio_of), "x"))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def header(self) -> str:
        rounds = len(next(iter(self.runs.values()), []))
        return (
            f"{rounds} interleaved rounds after a warm-up; median [min–max]; load average (1 min) "
            f"{self.load_start:.2f} at the start, {self.load_end:.2f} at the end ({os.cpu_count()} cores)"
        )


def spread(values: Sequence[float], unit: str = "") -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.3g}{unit} [{min(values):.3g}–{max(values):.3g}]"


def interleaved(paths: Mapping[str, Callable[[], Figures]], rounds: int, warmup: bool = True) -> Comparison:
    """Run every path once per round, in the given order, ``rounds`` times (after one warm-up round)."""
    comparison = Comparison({name: [] for name in paths}, load_start=load_average())
    total = (rounds + int(warmup)) * len(paths)
    with tqdm(total=total, desc="rounds", unit="run", leave=False) as bar:
        for k in range(rounds + int(warmup)):
            for name, run in paths.items():
                figures = run()
                if k or not warmup:
                    comparison.runs[name].append(figures)
                bar.update()
    comparison.load_end = load_average()
    return comparison
