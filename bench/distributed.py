"""Benchmark: the training stages in one process against data-parallel processes (torchrun).

    python -m bench.distributed [--processes 1,2] [--n 256] [--epochs 2]

Runs ``python -m stages.train_classifier`` (MobileNetV2, 128 px; ImageNet weights when installed)
and ``python -m stages.train_generator`` (DCGAN, 64 px) in a temporary project on synthetic crops,
once per entry of ``--processes`` (threads 0: the available cores are shared by the processes), the
process counts interleaved (bench/interleave.py: a warm-up round, then ``--rounds`` rounds, ``--quick``
for 2), and prints each stage's own training throughput and its wall time (including torchrun
start-up) as median [min–max], with the per-round ratio to the first count.
On a CPU-only machine this shows what data parallelism costs or gains against intra-op threads;
on a GPU machine, pass the GPU count. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.interleave import Figures, add_rounds_arguments, interleaved, rounds_from
from bench.train import synthetic_split
from core.io import write_json
from core.pretrained import find_weights

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def make_project(root: Path, n: int) -> None:
    shutil.copyfile(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    splits = root / "data" / "splits"
    splits.mkdir(parents=True)
    synthetic_split(root / "crops-train", n, 128, seed=0).replace(splits / "train.csv")
    synthetic_split(root / "crops-val", max(16, n // 4), 128, seed=1).replace(splits / "val.csv")
    write_json(root / "data" / "faces" / "params.json", {"crop_size": 128})


def set_block(root: Path, block: str, values: dict[str, object]) -> None:
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    params[block].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(root: Path, stage: str) -> float:
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{stage} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def stage_path(root: Path, stage: str, n_proc: int, blocks: dict[str, dict[str, object]]) -> Callable[[], Figures]:
    """One run of ``stage`` with ``n_proc`` processes: its own training images/s and its wall time."""

    def run() -> Figures:
        for block, values in blocks.items():
            set_block(root, block, {**values, "processes": n_proc})
        shutil.rmtree(root / "data" / "cache" / "generator", ignore_errors=True)  # no resuming across runs
        wall = run_stage(root, stage)
        summary, key = SUMMARIES[stage]
        return {"images_per_s": json.loads((root / summary).read_text())[key], "wall_s": wall}

    return run


SUMMARIES = {
    "train_classifier": ("results/classifier/metrics.json", "train_images_per_s"),
    "train_generator": ("results/generator/summary.json", "train_images_per_second"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", default="1,2", help="comma-separated process counts to compare")
    ap.add_argument("--n", type=int, default=256, help="synthetic training crops")
    ap.add_argument("--epochs", type=int, default=2)
    add_rounds_arguments(ap)
    args = ap.parse_args()
    rounds = rounds_from(args)
    try:
        find_weights("mobilenet_v2")
        pretrained = "imagenet"
    except FileNotFoundError:
        pretrained = "none"
    print(
        f"{args.n} synthetic crops, {args.epochs} epochs; "
        f"classifier mobilenet_v2 ({pretrained}) 128px, generator dcgan 64px"
    )
    common = {"threads": 0, "device": "auto", "epochs": args.epochs, "max_minutes": 0}
    blocks: dict[str, dict[str, dict[str, object]]] = {
        "train_classifier": {
            "classifier": {**common, "arch": "mobilenet_v2", "init": pretrained, "early_stopping_patience": 0}
        },
        "train_generator": {"generator": {**common, "model": "dcgan", "image_size": 64, "train_on": "all"}},
    }
    counts = [int(x) for x in args.processes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, args.n)
        for stage, stage_blocks in blocks.items():
            paths = {f"{n} process{'es' if n > 1 else ''}": stage_path(root, stage, n, stage_blocks) for n in counts}
            comparison = interleaved(paths, rounds)
            print(f"\n{stage}; {comparison.header()}")
            print(comparison.table(["images_per_s", "wall_s"], next(iter(paths)), "images_per_s"), flush=True)


if __name__ == "__main__":
    main()
