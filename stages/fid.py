"""Stage `fid`: FID / KID / precision-recall (Inception, when its weights are here) and fd_mobilenet (always)
of the trained generator's samples against the real test faces, plus the same numbers for every fake
generator in the data as reference rows (see README "FID").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mlflow
import torch

from core.device import pick_device
from core.errors import InputError, require, run_stage
from core.io import read_csv, write_json
from core.params import FidParams, load_block
from core.tracking import stage_run
from generator.data import load_image_cache
from generator.extractors import mobilenet_weights, resolve_inception_weights
from generator.fidelity import (
    ImageSet,
    MetricConfig,
    build_extractors,
    extract_all,
    flat_metrics,
    report_rows,
)
from generator.sampling import generate, load_generator

CHECKPOINT = Path("results/generator/model.pt")
TEST_SPLIT = Path("data/splits/test.csv")
OUT = Path("results/fid/metrics.json")
GENERATED = "generated"
REAL = "real"


def main() -> None:
    fp = load_block("fid", FidParams)
    require(CHECKPOINT, "train_generator")  # before the MLflow run: a missing input opens none
    require(TEST_SPLIT, "split")
    with stage_run("fid", "fid", fp, manifest=TEST_SPLIT):
        report = compute(fp, CHECKPOINT, TEST_SPLIT)
        write_json(OUT, report)
        mlflow.log_metrics(flat_metrics(report))
        mlflow.set_tag("fid.available", str(report["fid_available"]))
        mlflow.log_artifact(str(OUT))
    print_summary(report)


def compute(fp: FidParams, checkpoint: Path, test_split: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    device = pick_device("auto")
    net, arch, payload = load_generator(checkpoint, device)  # the image size comes from the checkpoint
    test = read_csv(require(test_split, "split"))
    reals = test[test["label"] == "real"]
    if len(reals) < 2:
        raise InputError(
            f"{test_split}: {len(reals)} real test faces; FID/fd_mobilenet need at least 2",
            "use more faces (data.per_source) or a larger test split",
        )
    fakes = test[test["label"] == "fake"]
    references = sorted(fakes["generator"].unique()) if fp.references else []
    sets = [
        ImageSet(GENERATED, generate(net, fp.n_samples, arch.noise_dim, fp.seed, fp.batch_size, device)),
        ImageSet(REAL, load_image_cache([Path(x) for x in reals["path"]], arch.size, "real test faces")),
    ]
    for name in references:
        rows = fakes[fakes["generator"] == name]
        sets.append(ImageSet(name, load_image_cache([Path(x) for x in rows["path"]], arch.size, f"fake: {name}")))
    if GENERATED in references or REAL in references:
        raise InputError(f"a fake generator is named {GENERATED!r} or {REAL!r}", "rename it in the data")

    inception = resolve_inception_weights(fp.inception_weights)
    if not inception.available:
        print(inception.instructions)
    mobilenet = mobilenet_weights()
    if not mobilenet.available:
        print(mobilenet.instructions)
    extractors = build_extractors(inception, mobilenet, fp.batch_size, cuda=torch.cuda.is_available())
    feats, seconds = extract_all(sets, extractors)
    cfg = MetricConfig(fp.kid_subset_size, fp.kid_subsets, fp.precision_recall, fp.prc_neighborhood, fp.seed)
    sizes = {s.name: int(s.images.shape[0]) for s in sets}
    generator_row, reference_rows = report_rows(feats, sizes, GENERATED, REAL, references, cfg, inception, mobilenet)
    return {
        "generator": {
            "model": arch.model,
            "image_size": arch.size,
            "epochs_done": payload.get("epochs_done"),
            "params_hash": payload.get("params_hash"),
            **generator_row,
        },
        "references": reference_rows,
        "fid_available": inception.available,
        "fd_mobilenet_available": mobilenet.available,
        "weights": {"inception": inception.as_dict(), "mobilenet_v2": mobilenet.as_dict()},
        "feature_seconds": seconds,
        "seconds": round(time.monotonic() - t0, 2),
    }


def print_summary(report: dict[str, Any]) -> None:
    def fmt(x: Any) -> str:
        return "null" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)

    print(f"{'set':<24} {'n':>6} {'fd_mobilenet':>13} {'fid':>10} {'kid_mean':>10}")
    rows = {f"generator ({report['generator']['model']})": report["generator"], **report["references"]}
    for name, row in rows.items():
        print(
            f"{name:<24} {fmt(row.get('n')):>6} {fmt(row.get('fd_mobilenet')):>13} {fmt(row.get('fid')):>10} "
            f"{fmt(row.get('kid_mean')):>10}"
        )
    if not report["fid_available"]:
        print(f"fid: null ({report['weights']['inception']['reason']}); fd_mobilenet is the offline proxy, not FID")


if __name__ == "__main__":
    run_stage("fid", main, __doc__, "fid", ["results/fid/metrics.json"])
