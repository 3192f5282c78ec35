"""CLI: the web app (Gradio) on the trained classifier and generator of this workspace (not a DAG stage).

    python -m stages.app [--classifier results/classifier/model.pt] [--generator results/generator/model.pt]
                         [--host 127.0.0.1] [--port 7860]

Detect tab: photos or a zip of photos → face box, calibrated p(fake), every further column predict writes
(uncertainty, prediction set when the classifier provides them), a Grad-CAM overlay, the table as CSV.
Generate tab: seeded samples and a seed-to-seed interpolation. Serves only localhost unless --host says so.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from app.limits import AppLimits
from app.service import Detector, Sampler, describe_classifier
from app.ui import build_app
from classifier.checkpoint import load_model
from classifier.predict import Predictor, faces_params_for
from core.device import pick_device, set_threads
from core.errors import ArgumentParser, MissingInputError, positive_int, run_cli
from faces.crop import FaceCropper
from generator.sampling import load_generator
from uncertainty.score import load_scorer

FIRST = (
    "run the pipeline first: make run (dvc repro), or offline make demo and then dvc exp apply <its name, "
    "see dvc exp show> (make demo runs in a temporary copy and leaves the workspace as it was)"
)
EPILOG = (
    "Reads no params block (the faces params come from the checkpoint; params.yaml's data.source is only shown).\n"
    "Writes nothing into the project: uploads and results live in a temporary folder removed at exit.\n"
    "A problem you can fix is one line on stderr and exit code 2."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = ArgumentParser("app", __doc__, EPILOG)
    ap.add_argument("--classifier", type=Path, default=Path("results/classifier/model.pt"), help="default: %(default)s")
    ap.add_argument("--generator", type=Path, default=Path("results/generator/model.pt"), help="default: %(default)s")
    ap.add_argument("--eval-metrics", type=Path, default=Path("results/eval/metrics.json"), help="default: %(default)s")
    ap.add_argument("--host", default=os.environ.get("APP_HOST", "127.0.0.1"), help="default: $APP_HOST or 127.0.0.1")
    port = int(os.environ.get("APP_PORT", "7860"))
    ap.add_argument("--port", type=int, default=port, help="default: $APP_PORT or 7860")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: %(default)s")
    ap.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads (default %(default)s: requests run side by side, and on a busy 2-core machine "
        "2 threads per request measured 10x slower than 1; README 'Performance')",
    )
    defaults = AppLimits()
    for name, help_text in (
        ("max_upload_mb", "largest uploaded file, MB"),
        ("max_pixels", "largest image, width x height"),
        ("max_files", "images per request (zip members included)"),
        ("concurrency", "requests of one kind processed at once"),
        ("queue_size", "requests waiting beyond which new ones are refused"),
    ):
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        ap.add_argument(flag, type=positive_int, default=default, help=f"{help_text} (default %(default)s)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the app phones nowhere
    limits = AppLimits(args.max_upload_mb, args.max_pixels, args.max_files, args.concurrency, args.queue_size)
    if not args.classifier.is_file():
        raise MissingInputError(f"no classifier checkpoint at {args.classifier}", FIRST)
    device = pick_device(args.device)
    set_threads(args.threads)
    model, ckpt = load_model(args.classifier, device)
    faces, _ = faces_params_for(ckpt)
    scorer = load_scorer(model, ckpt, args.classifier, device, 16)  # evaluate's conformal.json when it fits
    predictor = Predictor(model, ckpt, FaceCropper(faces, device=device), device, scorer=scorer, every_face=True)
    detector = Detector(predictor, limits)
    about = describe_classifier(args.classifier, ckpt, args.eval_metrics, Path("params.yaml"))
    sampler = None
    if args.generator.is_file():
        net, arch, _ = load_generator(args.generator, device)
        sampler = Sampler(net, arch.latent_dim, device)
        about += f"\n\n**Generator** `{args.generator}` — {arch.model}, {arch.size} px, latent {arch.latent_dim}."
    else:
        about += f"\n\n**Generator**: none at `{args.generator}` ({FIRST})."
    print(about.replace("**", "").replace("`", ""))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"app: serving on {args.host}, reachable from other machines (--host / APP_HOST)")
    with tempfile.TemporaryDirectory(prefix="deepfake-app-") as scratch:
        page = build_app(detector, sampler, about, Path(scratch))
        page.launch(
            server_name=args.host,
            server_port=args.port,
            max_file_size=limits.max_upload_bytes,
            share=False,
            show_error=False,
        )
    return 0


if __name__ == "__main__":
    run_cli("app", main)
