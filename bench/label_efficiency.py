"""Benchmark: the label-efficiency study on a prepared scratch project (data/splits and data/faces present).

    python -m bench.label_efficiency --project DIR [--fractions 0.1 0.25 1.0] [--inits none ssl imagenet]
                                     [--skip-pretrain] [-S block.key=value ...]

In DIR (e.g. a bench.quality workdir of one set, after its split stage) it runs the stages in this process,
as ``dvc exp run`` would run them, each a tracked MLflow run: pretrain once (unless --skip-pretrain),
then for each init x label fraction x (fine-tune, linear probe) train_classifier and evaluate (test split).
The ``-S`` overrides go into DIR/params.yaml first (the study's budget). Prints the table and writes
DIR/results/study/label_efficiency.csv; nothing is asserted. ``make study`` queues the same grid as DVC
experiments instead.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bench.quality import parse_override
from core.io import write_csv


def set_params(path: Path, updates: dict[str, dict[str, Any]]) -> None:
    data = yaml.safe_load(path.read_text()) or {}
    for block, values in updates.items():
        data.setdefault(block, {}).update(values)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def run_grid(args: argparse.Namespace) -> pd.DataFrame:
    from stages import evaluate, pretrain, train_classifier

    params = Path("params.yaml")
    overrides: dict[str, dict[str, Any]] = {}
    for text in args.S:
        block, key, value = parse_override(text)
        overrides.setdefault(block, {})[key] = value
    set_params(params, overrides)
    if not args.skip_pretrain:
        set_params(params, {"tracking": {"note": "label-efficiency study: SimCLR pretrain"}})
        t0 = time.monotonic()
        pretrain.main()
        print(f"pretrain: {time.monotonic() - t0:.0f} s")
    rows = []
    for init in args.inits:
        for fraction in args.fractions:
            for probe in (False, True):
                mode = "linear probe" if probe else "fine-tune"
                note = f"label-efficiency study: init {init}, {fraction:g} of labels, {mode}"
                set_params(
                    params,
                    {
                        "classifier": {"init": init, "label_fraction": fraction, "linear_probe": probe},
                        "tracking": {"note": note},
                    },
                )
                t0 = time.monotonic()
                train_classifier.main()
                evaluate.main()
                train = json.loads(Path("results/classifier/metrics.json").read_text())
                test = json.loads(Path("results/eval/metrics.json").read_text())["test"]
                row = {
                    "init": init,
                    "mode": mode,
                    "label_fraction": fraction,
                    "n_train": train["n_train"],
                    "val_roc_auc": train["val"]["roc_auc"],
                    "test_roc_auc": test["roc_auc"],
                    "seconds": round(time.monotonic() - t0, 1),
                }
                rows.append(row)
                print("STUDY", json.dumps(row))
                write_csv(Path("results/study/label_efficiency.csv"), pd.DataFrame(rows))
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, required=True, help="scratch project folder (params.yaml, data/)")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 1.0])
    ap.add_argument("--inits", nargs="+", default=["none", "ssl", "imagenet"])
    ap.add_argument("--skip-pretrain", action="store_true", help="reuse DIR/results/pretrain/encoder.pt")
    ap.add_argument("-S", action="append", default=[], metavar="block.key=value")
    args = ap.parse_args()
    os.chdir(args.project)
    frame = run_grid(args)
    table = frame.pivot_table(index=["init", "mode"], columns="label_fraction", values="test_roc_auc")
    print(table.round(3).to_markdown())


if __name__ == "__main__":
    main()
