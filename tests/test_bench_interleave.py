"""bench/interleave.py: the rounds alternate, the warm-up is not counted, ratios are taken per round."""

from __future__ import annotations

import argparse

import pytest

from bench.interleave import QUICK_ROUNDS, add_rounds_arguments, interleaved, rounds_from, spread


def test_paths_alternate_and_the_warm_up_round_is_not_counted() -> None:
    calls: list[str] = []
    speeds = {"a": iter([100.0, 1.0, 2.0, 3.0]), "b": iter([100.0, 2.0, 2.0, 12.0])}

    def path(name: str):  # type: ignore[no-untyped-def]
        def run() -> dict[str, float]:
            calls.append(name)
            return {"images_per_s": next(speeds[name])}

        return run

    comparison = interleaved({"a": path("a"), "b": path("b")}, rounds=3)
    assert calls == ["a", "b"] * 4  # warm-up + 3 rounds, A B A B ...
    assert comparison.values("a", "images_per_s") == [1.0, 2.0, 3.0]
    assert comparison.ratios("b", "a", "images_per_s") == [2.0, 1.0, 4.0]  # within each round
    table = comparison.table(["images_per_s"], baseline="a", ratio_of="images_per_s")
    assert "| b | 2 [2–12] | 2x [1–4] |" in table
    assert "load average" in comparison.header()


def test_quick_means_fewer_rounds_and_zero_rounds_is_refused() -> None:
    parser = argparse.ArgumentParser()
    add_rounds_arguments(parser)
    assert rounds_from(parser.parse_args(["--quick"])) == QUICK_ROUNDS
    assert rounds_from(parser.parse_args([])) >= 5
    with pytest.raises(SystemExit, match="at least 1"):
        rounds_from(parser.parse_args(["--rounds", "0"]))


def test_spread_is_median_and_range() -> None:
    assert spread([3.0, 1.0, 2.0], "x") == "2x [1–3]"
    assert spread([]) == "-"
