"""CLI: probability that each face image is fake, from the trained classifier (not a DAG stage).

    python -m stages.predict PATH... [--checkpoint results/classifier/model.pt] [--out scores.csv]
                             [--conformal results/eval/conformal.json] [--alpha A] [--abstain] [--explain DIR]
                             [--every-face]

PATHs are image files or folders (searched recursively for image files). Faces are found and
cropped with the faces params the classifier was trained with. Every file gets a status:
ok / no_face / too_small / unreadable (with the reason), and every scored face an ``uncertainty``
(predictive entropy, bits; higher = less certain) and a ``prediction_set`` (real, fake, real|fake =
abstain, or empty) from the conformal calibration evaluate wrote. --abstain lists the abstentions.
--explain DIR writes a Grad-CAM overlay of every scored face (NNNN_<name>.png, NNNN its row in the
table). --every-face scores every face found in a photo (one row per face, ``face`` 0 = the most
probable; a photo without a face keeps its one row); without it, the most probable face only. Runs on
CPU; uses CUDA when present (--device).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pandas as pd

from classifier.checkpoint import load_model
from classifier.predict import (
    COLUMNS,
    FACE_COLUMNS,
    Predictor,
    collect_files,
    faces_params_for,
    min_side_for,
)
from core.device import pick_device
from core.errors import ArgumentParser, InputError, positive_int, run_cli
from core.io import atomic_write_bytes, write_csv
from faces.crop import FaceCropper
from uncertainty.score import load_scorer

DEFAULT_CHECKPOINT = Path("results/classifier/model.pt")
DEFAULT_CONFORMAL = Path("results/eval/conformal.json")
ABSTAIN = "real|fake"
EPILOG = (
    "Reads no params block: the faces params and data.min_side come from the checkpoint (params.yaml's\n"
    "faces block and the data.min_side default only for checkpoints that lack them); MC dropout passes, seed,\n"
    "alpha and the calibration scores from --conformal (only when made for this checkpoint). Writes --out if given.\n"
    "A problem you can fix is one line on stderr and exit code 2."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = ArgumentParser("predict", __doc__, EPILOG)
    ap.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders (recursive)")
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="default: %(default)s")
    ap.add_argument("--out", type=Path, default=None, help="write the results as CSV here (else only printed)")
    ap.add_argument("--explain", type=Path, default=None, metavar="DIR", help="write Grad-CAM overlays here")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: %(default)s")
    ap.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="images per detection/scoring batch (>= 1, default %(default)s)",
    )
    ap.add_argument(
        "--conformal",
        type=Path,
        default=DEFAULT_CONFORMAL,
        help="conformal calibration written by evaluate (default: %(default)s)",
    )
    ap.add_argument("--alpha", type=float, default=None, help="conformal level (default: the one evaluate used)")
    ap.add_argument("--abstain", action="store_true", help="print and count the images whose set is real|fake")
    ap.add_argument(
        "--every-face", action="store_true", help="one row per face found (column face), not just the most probable"
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files, ignored = collect_files(args.paths)
    if not files:
        raise InputError(
            f"no image files under {', '.join(map(str, args.paths))} ({ignored} non-image files ignored)",
            "give image files, or folders that hold some",
        )
    device = pick_device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    faces, faces_from = faces_params_for(ckpt)
    min_side, min_side_from = min_side_for(ckpt)
    cropper = FaceCropper(faces, device=device)
    scorer = load_scorer(model, ckpt, args.checkpoint, device, args.batch_size, args.conformal, args.alpha)
    predictor = Predictor(model, ckpt, cropper, device, args.batch_size, scorer, args.every_face)
    preds = predictor.files(files)
    table = pd.DataFrame([p.row() for p in preds], columns=FACE_COLUMNS if args.every_face else COLUMNS)
    if args.out is not None:
        write_csv(args.out, table)
    if args.explain is not None:
        explained = predictor.explain(preds)
        row_of = {id(p): i for i, p in enumerate(preds)}
        for pred, image in explained:  # file by file: DIR may hold other files, which stay
            buf = io.BytesIO()
            image.save(buf, format="png")
            atomic_write_bytes(args.explain / f"{row_of[id(pred)]:04d}_{Path(pred.file).stem}.png", buf.getvalue())
    shown = ["file", "status", "prob_fake", "predicted", "uncertainty", "prediction_set", "reason"]
    shown = shown[:1] + ["face"] + shown[1:] if args.every_face else shown
    with pd.option_context("display.max_rows", 200, "display.max_colwidth", 60, "display.width", 200):
        print(table[shown].to_string(index=False))
    abstained = table[table["prediction_set"] == ABSTAIN]
    if args.abstain:
        print(f"predict: abstained on {len(abstained)} of {int((table['prob_fake'] != '').sum())} scored faces")
        for f in abstained["file"]:
            print(f"  abstain: {f}")
    counts = table["status"].value_counts().to_dict()
    print(
        f"predict: {len(table)} {'rows' if args.every_face else 'files'}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + (f"; {ignored} non-image files in folders ignored" if ignored else "")
        + f"; faces params from {faces_from}; data.min_side {min_side} ({min_side_from})"
        + f"; threshold {ckpt.threshold:.4f} (validation)"
        + f"; {scorer.note}; {len(abstained)} abstained"
        + (f"; wrote {args.out}" if args.out else "")
        + (f"; Grad-CAM overlays in {args.explain}" if args.explain else "")
    )
    return 0


if __name__ == "__main__":
    run_cli("predict", main)
