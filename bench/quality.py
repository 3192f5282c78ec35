"""Benchmark: ROC-AUC and wall time of the default classifier on each set in ../shared/data.

    python -m bench.quality [--sets hardfakevsreal ciplab_real_and_fake] [--workdir bench/out/quality]
                            [-S classifier.epochs=4 ...]

For each set, a scratch project under ``--workdir/<set>`` (params.yaml = the project's, with
``data.source: folder:<set>``, ``data.per_source: all``, plus any ``-S block.key=value``) runs
download -> faces -> split -> train_classifier -> evaluate as subprocesses, exactly as
``dvc repro`` would. The split is the group-aware one of the split stage (near-duplicate groups
from the set's manifest never cross splits). The faces cache survives in the workdir, so a rerun
only redoes the cheap stages. Prints one table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
STAGES = ("download", "faces", "split", "train_classifier", "evaluate")


def parse_override(text: str) -> tuple[str, str, Any]:
    key, _, value = text.partition("=")
    block, _, name = key.partition(".")
    if not (block and name and _):
        raise SystemExit(f"-S {text!r}: expected block.key=value")
    return block, name, yaml.safe_load(value)


def prepare(workdir: Path, source: Path, overrides: list[tuple[str, str, Any]]) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source=f"folder:{source.resolve()}", per_source="all")
    for block, key, value in overrides:
        params.setdefault(block, {})[key] = value
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for out in ("results", "data/raw", "data/faces", "data/splits"):
        shutil.rmtree(workdir / out, ignore_errors=True)


def run_stages(workdir: Path) -> dict[str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
    }
    seconds: dict[str, float] = {}
    for stage in STAGES:
        t0 = time.perf_counter()
        log = workdir / f"{stage}.log"
        with log.open("w") as f:
            proc = subprocess.run(
                [sys.executable, "-m", f"stages.{stage}"], cwd=workdir, env=env, stdout=f, stderr=subprocess.STDOUT
            )
        seconds[stage] = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{workdir.name}: stage {stage} failed (exit {proc.returncode}); see {log}")
        print(f"  {workdir.name}: {stage} {seconds[stage]:.1f}s", flush=True)
    return seconds


def summarise(name: str, workdir: Path, seconds: dict[str, float]) -> dict[str, Any]:
    ev = json.loads((workdir / "results/eval/metrics.json").read_text())
    tr = json.loads((workdir / "results/classifier/metrics.json").read_text())
    unc_path = workdir / "results/eval/uncertainty.json"
    unc = json.loads(unc_path.read_text()) if unc_path.exists() else {}
    test = ev["test"]
    return {
        "set": name,
        "train/val/calib/test": f"{tr['n_train']}/{tr['n_val']}/{unc.get('n_calib', 0)}/{test['n']}",
        "epochs": f"{tr['best_epoch']}/{tr['epochs_run']}",
        "val_auc": tr["val"]["roc_auc"],
        "test_auc": test["roc_auc"],
        "test_bal_acc": test["balanced_accuracy"],
        "test_eer": test["eer"],
        "ece": test["ece"],
        "jpeg50_auc": next(v["roc_auc"] for k, v in ev["robustness"].items() if k.startswith("jpeg")),
        "meta_auc": ev["shortcut_audit"]["metadata_roc_auc"],
        **counterfactual_columns(ev),
        **audit_columns(ev),
        **uncertainty_columns(unc),
        "T": tr["temperature"],
        "faces_s": seconds["faces"],
        "train_s": seconds["train_classifier"],
        "eval_s": seconds["evaluate"],
        "total_s": sum(seconds.values()),
    }


def counterfactual_columns(ev: dict[str, Any]) -> dict[str, Any]:
    """Per probe: ROC-AUC and TPR at the validation threshold (clean values are the test columns)."""
    out: dict[str, Any] = {}
    for name, probe in ev.get("counterfactual", {}).get("probes", {}).items():
        out[f"{name}_auc"] = probe.get("roc_auc")
        out[f"{name}_tpr"] = probe.get("tpr")
    if "counterfactual" in ev:
        out["test_tpr"] = next(iter(ev["counterfactual"]["probes"].values())).get("clean_tpr")
    return out


def uncertainty_columns(unc: dict[str, Any]) -> dict[str, Any]:
    """Conformal sets and selective prediction of the primary uncertainty method (results/eval/uncertainty.json)."""
    if not unc:
        return {}
    per_gen = unc.get("per_generator", {})
    unseen = unc.get("exchangeability", {}).get("unseen_generators", [])
    return {
        "unc_method": f"{unc['method']}(N={unc['ensemble']},T={unc['mc_dropout_passes']})",
        "coverage": unc.get("coverage"),
        "set_size": unc.get("mean_set_size"),
        "abstain": unc.get("abstain_rate"),
        "aurc": unc.get("aurc"),
        "acc@80": unc.get("accuracy_at_80"),
        "err_det_auc": unc.get("error_detection_auc"),
        "unc_ece": unc.get("ece"),
        "coverage_per_gen": " ".join(f"{g}={fmt(m.get('coverage'))}" for g, m in per_gen.items()),
        "err_det_per_gen": " ".join(f"{g}={fmt(m.get('error_detection_auc'))}" for g, m in per_gen.items()),
        "unseen": ",".join(unseen) or "none",
    }


def audit_columns(ev: dict[str, Any]) -> dict[str, Any]:
    """The crop-level audit's strongest single feature (test ROC-AUC furthest from 0.5) and its warnings."""
    crop = ev["shortcut_audit"].get("crop_features") or {}
    feats = {k: v.get("test_auc") for k, v in crop.get("features", {}).items() if v.get("test_auc") is not None}
    if not feats:
        return {}
    worst = max(feats, key=lambda k: abs(feats[k] - 0.5))
    return {
        "audit_top": f"{worst}={feats[worst]:.2f}",
        "audit_all_auc": crop.get("combined", {}).get("test_auc"),
        "audit_warnings": len(crop.get("warnings", [])),
    }


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if v < 10 else f"{v:.0f}"
    return "n/a" if v is None else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    available = sorted(p.name for p in SHARED.glob("*") if (p / "manifest.csv").exists()) if SHARED.exists() else []
    ap.add_argument("--sets", nargs="+", default=available, help=f"default: {' '.join(available) or '(none found)'}")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench/out/quality")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="block.key=value (repeatable)")
    args = ap.parse_args()
    if not args.sets:
        raise SystemExit(f"no sets: {SHARED} has no <set>/manifest.csv")
    overrides = [parse_override(o) for o in args.overrides]
    rows = []
    for name in args.sets:
        workdir = args.workdir.resolve() / name
        prepare(workdir, SHARED / name, overrides)
        rows.append(summarise(name, workdir, run_stages(workdir)))
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(fmt(r[c])) for r in rows)) for c in columns}
    print("\nbench.quality (default classifier params" + (f" + {' '.join(args.overrides)}" if overrides else "") + ")")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(fmt(r[c]).ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    main()
