"""Benchmark: the faces stage's detect+crop path vs a naive per-image full-size MTCNN loop.

    .venv/bin/python -m bench.faces                       # 200 images (100 + 100), params.yaml faces block
    .venv/bin/python -m bench.faces --configs 256x16,320x16,320x32   # detect_side x batch_size sweep
    .venv/bin/python -m bench.faces --real-rate hardfakevsreal   # + stage detection rate on all its reals

Images are read in place from ../shared/data (never copied). Both paths decode, detect, crop,
resize and encode each image; they differ only in detection: the stage letterboxes a copy with
longer side ``detect_side`` into equal canvases and runs MTCNN on ``batch_size`` of them at once;
the naive loop calls ``MTCNN().detect`` once per full-size image, as notebooks do; the stage spreads
its batches over ``faces.workers`` processes (one torch thread each) and resamples the pyramid and every
candidate box from one integral image per batch (faces/mtcnn.py; same boxes as facenet-pytorch's loop).
A naive detection (most probable face, prob >= min_prob) counts as found when the stage also has a face
>= min_prob whose box has IoU >= 0.5 with it.

The paths run interleaved (bench/interleave.py: a warm-up round, then ``--rounds`` rounds of every
path in turn, ``--quick`` for 2); each figure is printed as median [min–max] over the rounds, the
speed-up as the median of the per-round ratios, with the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.interleave import Figures, add_rounds_arguments, interleaved, rounds_from  # noqa: E402
from core.device import pick_device, set_threads  # noqa: E402
from core.images import decode_rgb, encode  # noqa: E402
from core.params import FacesParams, load_block  # noqa: E402
from faces.cache import FaceCache  # noqa: E402
from faces.crop import FaceCropper, crop_resize, face_square  # noqa: E402
from faces.detect import Box, best_detection  # noqa: E402
from faces.pipeline import Job, process_on_workers, worker_count  # noqa: E402

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
    cpu: float  # CPU seconds of this process and its finished worker processes


def cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes, once the pool has shut down
    return time.process_time() + children.ru_utime + children.ru_stime


def run_stage(paths: list[Path], params: FacesParams) -> tuple[Timing, Found]:
    """Time the stage's own code path (decode prefetch, batched detect, crop, encode, cache write)."""
    set_threads(params.threads)
    cropper = FaceCropper(params, device=pick_device(params.device))
    cropper.crop([decode_rgb(paths[0]).image])  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        cache = FaceCache(Path(tmp), cropper.extension)
        todo = {f"{i:04d}": Job(p) for i, p in enumerate(paths)}
        workers = worker_count(params.workers)
        desc = f"stage side={params.detect_side} bs={params.batch_size} workers={workers}"
        with tqdm(total=len(todo), desc=desc, leave=False) as bar:
            start, cpu = time.perf_counter(), cpu_seconds()
            process_on_workers(todo, cropper, cache, workers, progress=bar.update)
            timing = Timing(time.perf_counter() - start, cpu_seconds() - cpu)
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
    start, cpu = time.perf_counter(), cpu_seconds()
    for path in tqdm(paths, desc="naive", leave=False):
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
    return Timing(time.perf_counter() - start, cpu_seconds() - cpu), found


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
    parser.add_argument("--workers", type=int, help="detection processes of the stage path (default: faces.workers)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-naive", action="store_true", help="stage path only (no comparison)")
    parser.add_argument(
        "--naive-threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads of the naive loop (default: torch's own default, as in notebooks)",
    )
    parser.add_argument("--real-rate", metavar="SET", help="also report the detection rate on SET/real/*.jpg")
    add_rounds_arguments(parser)
    args = parser.parse_args()

    params = load_block("faces", FacesParams)
    changes = (("min_face", args.min_face), ("threads", args.threads), ("workers", args.workers))
    params = dataclasses.replace(params, **{k: v for k, v in changes if v is not None})
    configs = parse_configs(args.configs) if args.configs else [(params.detect_side, params.batch_size)]
    paths = pick_images(args.seed)
    n = len(paths)
    print(
        f"{n} images from {SHARED}; torch threads: naive {args.naive_threads}, stage {params.threads or 'all'} "
        f"x {worker_count(params.workers)} workers; params {params}"
    )

    found: dict[str, Found] = {}

    def timed(name: str, run: Callable[[], tuple[Timing, Found]]) -> Callable[[], Figures]:
        def figures() -> Figures:
            timing, found[name] = run()
            return {"images_per_s": n / timing.wall, "wall_s": timing.wall, "cpu_s": timing.cpu}

        return figures

    runs: dict[str, Callable[[], Figures]] = {}
    naive = f"naive ({args.naive_threads} threads)"
    if not args.skip_naive:
        runs[naive] = timed(naive, lambda: run_naive(paths, params, args.naive_threads))
    for side, bs in configs:
        config = dataclasses.replace(params, detect_side=side, batch_size=bs)
        name = f"stage side={side} batch={bs}"
        runs[name] = timed(name, functools.partial(run_stage, paths, config))
    comparison = interleaved(runs, rounds_from(args))
    baseline = None if args.skip_naive else naive

    print("\n" + comparison.header())
    print(comparison.table(["images_per_s", "wall_s", "cpu_s"], baseline, "images_per_s" if baseline else None))
    print("\n| path | faces >= min_prob | naive detections the path also finds (IoU >= 0.5) |\n|---|---|---|")
    for name in runs:
        share = "-"
        if baseline and name != baseline:
            hits, total = compare(found[baseline], found[name])
            share = f"{hits}/{total} = {hits / total:.2%}" if total else "-"
        print(f"| {name} | {sum(1 for f in found[name] if f)} | {share} |")
    if args.real_rate:
        real_rate(args.real_rate, params)


if __name__ == "__main__":
    main()
