"""Benchmark: the faces stage's detect+crop path vs a naive per-image full-size MTCNN loop.

    .venv/bin/python -m bench.faces                       # 200 images (100 + 100), params.yaml faces block
    .venv/bin/python -m bench.faces --configs 256x16,320x16,320x32   # detect_side x batch_size sweep
    .venv/bin/python -m bench.faces --real-rate hardfakevsreal   # + stage detection rate on all its reals

Images are read in place from ../shared/data (never copied). Both paths decode, detect, crop,
resize and encode each image; they differ only in detection: the stage letterboxes a copy with
longer side ``detect_side`` into equal canvases and runs MTCNN on ``batch_size`` of them at once;
the naive loop calls ``MTCNN().detect`` once per full-size image, as notebooks do. A naive
detection (most probable face, prob >= min_prob) counts as found when the stage also has a face
>= min_prob whose box has IoU >= 0.5 with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from core.device import pick_device, set_threads  # noqa: E402
from core.images import decode_rgb, encode  # noqa: E402
from core.params import FacesParams, load_block  # noqa: E402
from faces.cache import FaceCache, Job, process  # noqa: E402
from faces.crop import FaceCropper, crop_resize, face_square  # noqa: E402
from faces.detect import Box, best_detection  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = (("hardfakevsreal", 100), ("ciplab_real_and_fake", 100))
IOU_FOUND = 0.5


def pick_images(seed: int) -> list[Path]:
    """``n`` images per set, half real half fake, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    for name, n in SETS:
        manifest = pd.read_csv(SHARED / name / "manifest.csv")
        for label, k in (("real", n // 2), ("fake", n - n // 2)):
            files = sorted(manifest.loc[manifest["label"] == label, "file"])
            paths += [SHARED / name / f for f in rng.choice(files, size=k, replace=False)]
    return paths


Found = list[tuple[Box, float] | None]


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds
    cpu: float  # process CPU seconds (less sensitive to other load on the machine)


def run_stage(paths: list[Path], params: FacesParams) -> tuple[Timing, Found]:
    """Time the stage's own code path (decode prefetch, batched detect, crop, encode, cache write)."""
    set_threads(params.threads)
    cropper = FaceCropper(params, device=pick_device(params.device))
    cropper.crop([decode_rgb(paths[0]).image])  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        cache = FaceCache(Path(tmp), cropper.extension)
        todo = {f"{i:04d}": Job(p) for i, p in enumerate(paths)}
        with tqdm(total=len(todo), desc=f"stage side={params.detect_side} bs={params.batch_size}") as bar:
            start, cpu = time.perf_counter(), time.process_time()
            process(todo, cropper, cache, progress=bar.update)
            timing = Timing(time.perf_counter() - start, time.process_time() - cpu)
        found: list[tuple[Box, float] | None] = []
        for key in todo:
            entry = cache.load(key)
            if entry is not None and entry.status == "ok" and entry.box is not None:
                found.append((Box(*entry.box), entry.prob))
            else:
                found.append(None)
    return timing, found


def run_naive(paths: list[Path], params: FacesParams, threads: int) -> tuple[Timing, Found]:
    """One MTCNN.detect per full-size image (notebook style), same crop/resize/encode afterwards."""
    torch.set_num_threads(threads)
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(device=pick_device(params.device))  # library defaults, as in notebooks
    mtcnn.detect(decode_rgb(paths[0]).image)  # warm-up
    found: list[tuple[Box, float] | None] = []
    start, cpu = time.perf_counter(), time.process_time()
    for path in tqdm(paths, desc="naive"):
        image = decode_rgb(path).image
        boxes, probs = mtcnn.detect(image)
        det = best_detection(boxes, probs, (1.0, 1.0))
        if det is not None and det.prob >= params.min_prob:
            encode(
                crop_resize(image, face_square(det.box, params.margin, *image.size), params.crop_size), params.encoding
            )
            found.append((det.box, det.prob))
        else:
            found.append(None)
    return Timing(time.perf_counter() - start, time.process_time() - cpu), found


def compare(naive: Found, stage: Found) -> tuple[int, int]:
    hits = sum(1 for n, s in zip(naive, stage) if n and s and n[0].iou(s[0]) >= IOU_FOUND)
    return hits, sum(1 for n in naive if n)


def real_rate(name: str, params: FacesParams) -> None:
    paths = sorted((SHARED / name / "real").glob("*.jpg"))
    _, found = run_stage(paths, params)
    hits = sum(1 for f in found if f)
    print(
        f"\nstage detection rate on {name}/real: {hits}/{len(paths)} = {hits / len(paths):.4f} "
        f"(detect_side={params.detect_side}, min_face={params.min_face}, min_prob={params.min_prob})"
    )


def parse_configs(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(a), int(b)) for a, b in (c.lower().split("x") for c in text.split(","))]
    except ValueError:
        raise SystemExit(f"--configs: got {text!r}; expected e.g. 256x16,320x16 (detect_side x batch_size)") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configs", help="detect_side x batch_size list, e.g. 256x16,320x32 (default: the params.yaml values)"
    )
    parser.add_argument("--min-face", type=int)
    parser.add_argument("--threads", type=int, help="torch threads of the stage path (default: faces.threads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-naive", action="store_true", help="stage path only (no comparison)")
    parser.add_argument(
        "--naive-threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads of the naive loop (default: torch's own default, as in notebooks)",
    )
    parser.add_argument("--real-rate", metavar="SET", help="also report the detection rate on SET/real/*.jpg")
    args = parser.parse_args()

    params = load_block("faces", FacesParams)
    overrides = {k: v for k, v in (("min_face", args.min_face), ("threads", args.threads)) if v is not None}
    params = dataclasses.replace(params, **overrides)
    configs = parse_configs(args.configs) if args.configs else [(params.detect_side, params.batch_size)]
    paths = pick_images(args.seed)
    print(
        f"{len(paths)} images from {SHARED}; torch threads: naive {args.naive_threads}, "
        f"stage {params.threads or 'all'}; params {params}"
    )

    naive_t, naive_found = run_naive(paths, params, args.naive_threads) if not args.skip_naive else (None, [])
    rows = []
    for side, bs in configs:
        timing, found = run_stage(paths, dataclasses.replace(params, detect_side=side, batch_size=bs))
        rows.append((f"stage side={side} batch={bs} threads={params.threads}", timing, found))

    n = len(paths)
    print(
        "\n| path | images | wall s | images/s | CPU s | faces >= min_prob | speed-up (wall / CPU) "
        "| naive detections found |\n|---|---|---|---|---|---|---|---|"
    )
    if naive_t:
        print(
            f"| naive: MTCNN.detect per full-size image, {args.naive_threads} threads | {n} | {naive_t.wall:.1f} "
            f"| {n / naive_t.wall:.2f} "
            f"| {naive_t.cpu:.1f} | {sum(1 for f in naive_found if f)} | 1x | - |"
        )
    for name, t, found in rows:
        speed = found_share = "-"
        if naive_t:
            hits, total = compare(naive_found, found)
            speed = f"{naive_t.wall / t.wall:.2f}x / {naive_t.cpu / t.cpu:.2f}x"
            found_share = f"{hits}/{total} = {hits / total:.2%}" if total else "-"
        print(
            f"| {name} | {n} | {t.wall:.1f} | {n / t.wall:.2f} | {t.cpu:.1f} | {sum(1 for f in found if f)} "
            f"| {speed} | {found_share} |"
        )
    if args.real_rate:
        real_rate(args.real_rate, params)


if __name__ == "__main__":
    main()
