"""Benchmark: the training stages in one process against data-parallel processes (torchrun).

    python -m bench.distributed [--processes 1,2] [--n 256] [--epochs 2]

Runs ``python -m stages.train_classifier`` (MobileNetV2, 128 px; ImageNet weights when installed)
and ``python -m stages.train_generator`` (DCGAN, 64 px) in a temporary project on synthetic crops,
once per entry of ``--processes`` (threads 0: the available cores are shared by the processes), and
prints each stage's own training throughput and its wall time (including torchrun start-up).
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
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", default="1,2", help="comma-separated process counts to compare")
    ap.add_argument("--n", type=int, default=256, help="synthetic training crops")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    try:
        find_weights("mobilenet_v2")
        pretrained = "imagenet"
    except FileNotFoundError:
        pretrained = "none"
    print(
        f"load average {os.getloadavg()[0]:.1f}; {args.n} synthetic crops, {args.epochs} epochs; "
        f"classifier mobilenet_v2 ({pretrained}) 128px, generator dcgan 64px"
    )
    print(f"{'stage':18s} {'processes':>9s} {'train img/s':>12s} {'wall s':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, args.n)
        for n_proc in (int(x) for x in args.processes.split(",")):
            common = {"processes": n_proc, "threads": 0, "device": "auto", "epochs": args.epochs, "max_minutes": 0}
            set_block(
                root,
                "classifier",
                {**common, "arch": "mobilenet_v2", "init": pretrained, "early_stopping_patience": 0},
            )
            set_block(root, "generator", {**common, "model": "dcgan", "image_size": 64, "train_on": "all"})
            wall = run_stage(root, "train_classifier")
            rate = json.loads((root / "results/classifier/metrics.json").read_text())["train_images_per_s"]
            print(f"{'train_classifier':18s} {n_proc:9d} {rate:12.1f} {wall:8.1f}", flush=True)
            shutil.rmtree(root / "data" / "cache" / "generator", ignore_errors=True)  # no resuming across runs
            wall = run_stage(root, "train_generator")
            rate = json.loads((root / "results/generator/summary.json").read_text())["train_images_per_second"]
            print(f"{'train_generator':18s} {n_proc:9d} {rate:12.1f} {wall:8.1f}", flush=True)


if __name__ == "__main__":
    main()
