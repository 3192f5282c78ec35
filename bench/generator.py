"""Benchmark of the generator track on this machine (prints figures; nothing is asserted).

    python -m bench.generator [--models vae,dcgan,wgan_gp,ddpm] [--threads 2,1] [--size 64] [--n-train 256]
                              [--n-fid 500] [--rounds 5 | --quick]
    python -m bench.generator --table [--set hardfakevsreal] [--models dcgan,ddpm] [--budgets 5,10,20]

``--table``: model x time budget -> fd_mobilenet_matched, its ratio to the reference row (a real
generator's fakes scored against the same real test faces in the same fid run) and training images/s,
through the real stages in a scratch project (bench.quality's: ``data.source: folder:<set>``,
``data.per_source: all``; -S block.key=value overrides). Budgets are cumulative: each model trains
for the first budget, is scored, then resumes from its checkpoint for the difference (max_minutes is
not part of the run's identity), so a 20-minute cell costs 20 minutes, not 5 + 10 + 20; checkpoints
of an earlier --table run in the same workdir are removed first. Set ``-S generator.epochs=100000`` for
cells that the budget, not the epoch count, ends.
Without --table:

1. generator training throughput (real images through the model per second) per model, with the
   params.yaml generator block (widths, batch size, DiffAugment, n_critic) at --size, each --threads
   count in turn (bench/interleave.py: a warm-up round, then --rounds rounds; median [min–max] and the
   per-round ratio to the first count);
2. wall time of the fid stage's computations for --n-fid generated vs --n-fid real images:
   fd_mobilenet (feature extraction + Fréchet distance) and, for Inception, extraction + FID + KID.
   Without the real Inception weights the Inception timing uses a randomly initialised state dict
   of the same shapes (same cost, meaningless values; labelled "random weights").
Results also go to bench/out/generator.json.
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
from typing import Any
from unittest import mock

import torch
from torch_fidelity import feature_extractor_inceptionv3 as inception_module
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from bench.interleave import Figures, add_rounds_arguments, interleaved, rounds_from, thread_counts
from core.device import pick_device, set_threads
from core.params import GENERATOR_MODELS, FidParams, GeneratorParams, as_dict, load_block, parse_block
from generator import extractors as ex
from generator import fidelity as fd
from generator.trainers import build_trainer

OUT = Path("bench/out/generator.json")
PREP_STAGES = ("download", "faces", "split")


def run_stage(workdir: Path, stage: str, env: dict[str, str], tag: str) -> float:
    t0 = time.perf_counter()
    with (workdir / f"{stage}-{tag}.log").open("w") as f:
        proc = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=workdir, env=env, stdout=f, stderr=f)
    if proc.returncode != 0:
        raise SystemExit(f"{workdir}: stage {stage} failed (exit {proc.returncode}); see {stage}-{tag}.log")
    return time.perf_counter() - t0


def budget_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train each model for the cumulative budgets and score each through the fid stage."""
    from bench.quality import ROOT, SHARED, parse_override, prepare

    workdir = Path(args.workdir) / args.set
    overrides = [parse_override(o) for o in args.override]
    budgets = [float(b) for b in args.budgets.split(",")]
    rows: list[dict[str, Any]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir.resolve()}/mlflow.db"}
    prepare(workdir, SHARED / args.set, overrides)
    for stage in PREP_STAGES:
        run_stage(workdir, stage, env, "prep")
    # a checkpoint left by an earlier --table run has the same params hash (max_minutes is not part of it)
    # and would be resumed: every model starts from scratch
    shutil.rmtree(workdir / "data/cache/generator", ignore_errors=True)
    for model in args.models.split(","):
        done = 0.0
        for budget in budgets:
            set_generator(workdir, model=model, max_minutes=budget - done)
            train_s = run_stage(workdir, "train_generator", env, f"{model}-{budget:g}")
            run_stage(workdir, "fid", env, f"{model}-{budget:g}")
            done = budget
            fid = json.loads((workdir / "results/fid/metrics.json").read_text())
            summary = json.loads((workdir / "results/generator/summary.json").read_text())
            ref_name, ref = min(fid["references"].items(), key=lambda kv: kv[1]["fd_mobilenet"] or float("inf"))
            gen = fid["generator"]
            matched = gen.get("fd_mobilenet_matched", gen["fd_mobilenet"])
            row = {
                "model": model,
                "budget_min": budget,
                "epochs": summary["epochs_done"],
                "fd_mobilenet_matched": matched,
                "reference": ref_name,
                "reference_fd_mobilenet": ref["fd_mobilenet"],
                "ratio": matched / ref["fd_mobilenet"],
                "images_per_s": summary["train_images_per_second"],
                "train_s": round(train_s, 1),
                "load_average": os.getloadavg()[0],
            }
            rows.append(row)
            print(
                f"{model:8s} {budget:5g} min  epochs {row['epochs']:4d}  fd_mobilenet_matched {matched:7.1f}  "
                f"{ref_name} {ref['fd_mobilenet']:7.1f}  ratio {row['ratio']:.2f}  {row['images_per_s']:.1f} img/s",
                flush=True,
            )
            grid = workdir / f"grid-{model}-{budget:g}.png"
            grid.write_bytes(max((workdir / "results/generator/samples").glob("epoch_*.png")).read_bytes())
    return rows


def set_generator(workdir: Path, **values: Any) -> None:
    import yaml

    path = workdir / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["generator"].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def throughput_path(model: str, size: int, n: int, threads: int, base: GeneratorParams) -> Callable[[], Figures]:
    """One epoch of ``n`` random uint8 images through ``model`` on ``threads`` torch threads, per call."""
    raw = as_dict(base) | {"model": model, "image_size": size, "device": "auto", "n_critic": "auto"}
    p = parse_block("generator", GeneratorParams, raw)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    trainer = build_trainer(p, pick_device(p.device))
    epoch = 0

    def run() -> Figures:
        nonlocal epoch
        epoch += 1
        set_threads(threads)
        t0 = time.perf_counter()
        trainer.train_epoch(epoch, images)
        return {"images_per_s": n / (time.perf_counter() - t0)}

    return run


def throughput_table(args: argparse.Namespace, base: GeneratorParams) -> dict[str, object]:
    """Per model: training images/s on each --threads count, interleaved; ratios to the first count."""
    counts = thread_counts(args.threads)
    names = list(counts)
    out: dict[str, object] = {}
    for model in args.models.split(","):
        paths = {name: throughput_path(model, args.size, args.n_train, t, base) for name, t in counts.items()}
        comparison = interleaved(paths, rounds_from(args))
        print(f"\ntrain {model} at {args.size} px, {args.n_train} images per run ({comparison.header()})")
        print(comparison.table(["images_per_s"], baseline=names[0], ratio_of="images_per_s"))
        out[model] = {name: comparison.values(name, "images_per_s") for name in names}
    return out


def random_inception(path: Path) -> Path:
    with (
        mock.patch.object(inception_module, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(inception_module.FeatureExtractorInceptionV3, "load_state_dict", lambda s, *a, **k: None),
    ):
        net = inception_module.FeatureExtractorInceptionV3(ex.INCEPTION, [ex.INCEPTION_LAYER])
    torch.save(
        {k: torch.full_like(v, 0.15) if k.endswith("running_var") else v for k, v in net.state_dict().items()}, path
    )
    return path


def fid_timings(n: int, size: int, batch_size: int, inception_weights: str, tmp: Path) -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    out: dict[str, object] = {"n": n, "image_size": size}
    mobilenet = ex.mobilenet_weights()
    if mobilenet.path is not None:
        t0 = time.perf_counter()
        feats = fd.Features(ex.MOBILENET, ex.MOBILENET_LAYER, mobilenet.path, batch_size)
        fa, fb = feats(a), feats(b)
        t1 = time.perf_counter()
        fd.frechet_distance(fa, fb)
        t2 = time.perf_counter()
        out["fd_mobilenet"] = {"extract_s": t1 - t0, "frechet_s": t2 - t1, "total_s": t2 - t0}
    else:
        out["fd_mobilenet"] = {"skipped": mobilenet.reason}
    status = ex.resolve_inception_weights(inception_weights)
    path = status.path if status.available else random_inception(tmp / "random-inception.pth")
    t0 = time.perf_counter()
    feats = fd.Features(ex.INCEPTION, ex.INCEPTION_LAYER, path, batch_size)  # type: ignore[arg-type]
    fa, fb = feats(a), feats(b)
    t1 = time.perf_counter()
    fd.frechet_distance(fa, fb)
    t2 = time.perf_counter()
    fd.kernel_distance(fa, fb, 100, 100, 0)
    fd.precision_recall(fa, fb, 3)
    t3 = time.perf_counter()
    fid_statistics_to_metric(fid_features_to_statistics(fa), fid_features_to_statistics(fb), verbose=False)
    t4 = time.perf_counter()
    out["inception"] = {
        "weights": "official" if status.available else "random weights (timing only)",
        "extract_s": t1 - t0,
        "fid_s": t2 - t1,
        "kid_prc_s": t3 - t2,
        "total_s": t3 - t0,
        "torch_fidelity_eigvals_fid_s": t4 - t3,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(GENERATOR_MODELS))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--n-fid", type=int, default=500)
    ap.add_argument("--skip-fid", action="store_true")
    ap.add_argument("--threads", default="2,1", help="torch thread counts compared (interleaved)")
    ap.add_argument("--table", action="store_true", help="model x budget table through the real stages")
    ap.add_argument("--set", default="hardfakevsreal", help="--table: a set under ../shared/data")
    ap.add_argument("--budgets", default="5,10,20", help="--table: cumulative minutes")
    ap.add_argument("--workdir", default="bench/out/generator_table")
    ap.add_argument("-S", dest="override", action="append", default=[], help="--table: block.key=value")
    add_rounds_arguments(ap)
    args = ap.parse_args()
    if args.table:
        rows = budget_table(args)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.with_name("generator_table.json").write_text(json.dumps(rows, indent=2))
        return
    base = load_block("generator", GeneratorParams)
    fid_params = load_block("fid", FidParams)
    results: dict[str, object] = {"cuda": torch.cuda.is_available(), "train_images_per_s": throughput_table(args, base)}
    if not args.skip_fid:
        set_threads(0)
        with tempfile.TemporaryDirectory() as tmp:
            t = fid_timings(args.n_fid, args.size, fid_params.batch_size, fid_params.inception_weights, Path(tmp))
        results["fid"] = t
        print(f"fid stage, {args.n_fid} vs {args.n_fid} images at {args.size}px (one run; not a comparison):")
        for key in ("fd_mobilenet", "inception"):
            timing = t[key]
            assert isinstance(timing, dict)
            print(
                f"  {key:13s} "
                + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in timing.items())
            )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
