"""Benchmark: latency of the app's Detect request for one photo with one face, heatmap included.

    python -m bench.app [--checkpoint results/classifier/model.pt] [--photo PATH] [--side 512] [--runs 30]

Times the handler behind the Detect button (pixel check, decode, MTCNN detection, crop, calibrated
score, Grad-CAM, the box + heatmap picture, the CSV), in this process, on CPU with ``--threads`` torch
threads (the app's default: 1); the browser and HTTP transfer are not included. The photo is
``--photo`` (default: the first real face of ``../shared/data/hardfakevsreal``) resized so its longer
side is ``--side``. Without ``--checkpoint`` the network is params.yaml's classifier (arch, image_size)
with untrained weights: latency does not depend on the weights. Prints p50/p95 over ``--runs`` after
3 warm-up requests; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.limits import AppLimits
from app.service import Detector
from app.ui import detect_handler
from classifier.checkpoint import ClassifierCheckpoint, load_model
from classifier.predict import faces_params_for
from core.params import ClassifierParams, FacesParams, as_dict, load_block
from faces.crop import FaceCropper
from models.classifier import ArchSpec, DeepfakeClassifier, build_classifier

WARMUP = 3
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def untrained(params_file: Path) -> tuple[DeepfakeClassifier, ClassifierCheckpoint]:
    p = load_block("classifier", ClassifierParams, params_file)
    faces = load_block("faces", FacesParams, params_file)
    spec = ArchSpec.from_params(p)
    model = build_classifier(spec).eval()
    mean, std = spec.normalisation
    ckpt = ClassifierCheckpoint({}, spec.to_dict(), 1.0, 0.5, "youden", list(mean), list(std), p.image_size)
    return model, ClassifierCheckpoint(**{**ckpt.__dict__, "faces": as_dict(faces)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--photo", type=Path, default=None)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, as the app's --threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # the untrained network's tiny activations would be denormals: not a trained one's
    device = torch.device("cpu")
    if args.checkpoint is not None:
        model, ckpt = load_model(args.checkpoint, device)
        origin = str(args.checkpoint)
    else:
        model, ckpt = untrained(Path("params.yaml"))
        origin = f"untrained {ckpt.arch['arch']} (params.yaml)"
    faces, _ = faces_params_for(ckpt)
    detector = Detector(model, ckpt, FaceCropper(faces, device=device), device, AppLimits())
    source = args.photo or sorted((SHARED / "hardfakevsreal" / "real").glob("*.jpg"))[0]
    with tempfile.TemporaryDirectory() as tmp:
        image = Image.open(source).convert("RGB")
        scale = args.side / max(image.size)
        photo = Path(tmp) / "photo.jpg"
        image.resize((round(image.width * scale), round(image.height * scale))).save(photo, quality=95)
        handler = detect_handler(detector, Path(tmp))
        times = []
        for i in range(WARMUP + args.runs):
            start = time.perf_counter()
            picture, table, _, _ = handler([str(photo)])
            if i >= WARMUP:
                times.append(time.perf_counter() - start)
    row = table.iloc[0]
    p50, p95 = np.percentile(times, [50, 95])
    print(
        f"bench.app: {origin}, {ckpt.image_size} px input; photo {source.name} at {args.side} px; "
        f"{args.threads} torch threads; status {row['status']}, face_prob {row['face_prob']}, "
        f"box + heatmap picture {picture.size if picture else None}"
    )
    print(
        f"Detect request latency over {args.runs} runs: p50 {p50:.3f} s, p95 {p95:.3f} s "
        f"(min {min(times):.3f}, max {max(times):.3f}); load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
