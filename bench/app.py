"""Benchmark: latency of the app's Detect request for one photo with one face, heatmap included.

    python -m bench.app [--checkpoint results/classifier/model.pt] [--photo PATH] [--side 512] [--threads 1,2]
                        [--rounds 20 | --quick]

Times the handler behind the Detect button (pixel check, decode, MTCNN detection, crop, calibrated
score, Grad-CAM, the box + heatmap picture, the CSV), in this process, on CPU, for each ``--threads``
count of torch threads in turn (bench/interleave.py: a request per count per round after a warm-up round;
the app's default is 1); the browser and HTTP transfer are not included. The photo is
``--photo`` (default: the first real face of ``../shared/data/hardfakevsreal``) resized so its longer
side is ``--side``. Without ``--checkpoint`` the network is params.yaml's classifier (arch, image_size)
with untrained weights: latency does not depend on the weights. Prints the median (p50) [min–max] and
p95 per thread count and the per-round ratio; nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from app.limits import AppLimits
from app.service import Detector
from app.ui import detect_handler
from bench.interleave import Figures, add_rounds_arguments, interleaved, rounds_from, thread_counts
from classifier.checkpoint import ClassifierCheckpoint, load_model
from classifier.predict import Predictor, faces_params_for
from core.params import ClassifierParams, FacesParams, as_dict, load_block
from faces.crop import FaceCropper
from models.classifier import ArchSpec, DeepfakeClassifier, build_classifier

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def untrained(params_file: Path) -> tuple[DeepfakeClassifier, ClassifierCheckpoint]:
    p = load_block("classifier", ClassifierParams, params_file)
    faces = load_block("faces", FacesParams, params_file)
    spec = ArchSpec.from_params(p)
    model = build_classifier(spec).eval()
    mean, std = spec.normalisation
    ckpt = ClassifierCheckpoint({}, spec.to_dict(), 1.0, 0.5, "youden", list(mean), list(std), p.image_size)
    return model, ClassifierCheckpoint(**{**ckpt.__dict__, "faces": as_dict(faces)})


def request_path(handler: Callable[[list[str]], Any], photo: Path, threads: int) -> Callable[[], Figures]:
    """One Detect request on ``threads`` torch threads, timed."""

    def run() -> Figures:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        handler([str(photo)])
        return {"latency_s": time.perf_counter() - start}

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--photo", type=Path, default=None)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--threads", default="1,2", help="torch thread counts compared (the app's --threads: 1)")
    add_rounds_arguments(ap, default=20)
    args = ap.parse_args()
    torch.set_flush_denormal(True)  # the untrained network's tiny activations would be denormals: not a trained one's
    device = torch.device("cpu")
    if args.checkpoint is not None:
        model, ckpt = load_model(args.checkpoint, device)
        origin = str(args.checkpoint)
    else:
        model, ckpt = untrained(Path("params.yaml"))
        origin = f"untrained {ckpt.arch['arch']} (params.yaml)"
    faces, _ = faces_params_for(ckpt)
    predictor = Predictor(model, ckpt, FaceCropper(faces, device=device), device, every_face=True)
    detector = Detector(predictor, AppLimits())
    source = args.photo or sorted((SHARED / "hardfakevsreal" / "real").glob("*.jpg"))[0]
    counts = thread_counts(args.threads)
    names = list(counts)
    with tempfile.TemporaryDirectory() as tmp:
        image = Image.open(source).convert("RGB")
        scale = args.side / max(image.size)
        photo = Path(tmp) / "photo.jpg"
        image.resize((round(image.width * scale), round(image.height * scale))).save(photo, quality=95)
        handler = detect_handler(detector, Path(tmp))
        picture, table, _, _ = handler([str(photo)])
        paths = {name: request_path(handler, photo, t) for name, t in counts.items()}
        comparison = interleaved(paths, rounds_from(args))
    row = table.iloc[0]
    print(
        f"bench.app: {origin}, {ckpt.image_size} px input; photo {source.name} at {args.side} px; "
        f"status {row['status']}, face_prob {row['face_prob']}, "
        f"box + heatmap picture {picture.size if picture else None}"
    )
    print(f"Detect request latency, s ({comparison.header()}; one request per path per round)")
    print(comparison.table(["latency_s"], baseline=names[0], ratio_of="latency_s"))
    for name in names:
        print(f"{name}: p95 {np.percentile(comparison.values(name, 'latency_s'), 95):.3f} s")


if __name__ == "__main__":
    main()
