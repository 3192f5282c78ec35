"""The Gradio page: a Detect tab (photos or a zip → boxes, calibrated p(fake), Grad-CAM, CSV) and a Generate tab."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from app.limits import AppLimits, extract_zip
from app.service import Detector, Sampler, sheet
from core.errors import InputError
from core.io import write_csv

MAX_SAMPLES = 16
MAX_STEPS = 16


def upload_paths(uploads: list[Any] | None, workdir: Path, limits: AppLimits) -> tuple[list[Path], list[str]]:
    """Uploaded files as (paths, display names); a zip is replaced by its images (member paths as names)."""
    files: list[Path] = []
    names: list[str] = []
    for i, up in enumerate(uploads or []):
        path = Path(up if isinstance(up, str) else getattr(up, "name", up))
        if path.suffix.lower() == ".zip":
            dest = workdir / f"zip{i}"
            for member in extract_zip(path, dest, limits):
                files.append(member)
                names.append(f"{path.name}/{member.relative_to(dest.resolve()).as_posix()}")
        else:
            files.append(path)
            names.append(path.name)
    if len(files) > limits.max_files:
        raise InputError(f"{len(files)} images in one request; the app takes {limits.max_files}")
    return files, names


def detect_handler(detector: Detector, scratch: Path) -> Any:
    def detect(uploads: list[Any] | None) -> tuple[Image.Image | None, Any, str | None, str]:
        workdir = Path(tempfile.mkdtemp(prefix="request-", dir=scratch))  # unzipped images, the CSV
        try:
            files, names = upload_paths(uploads, workdir, detector.limits)
        except InputError as e:
            return None, None, None, f"**{e}**" + (f" — {e.hint}" if e.hint else "")
        if not files:
            return None, None, None, "Upload one or more photos (or a zip of photos) first."
        result = detector.score(files, names)
        csv_path = workdir / "predictions.csv"
        write_csv(csv_path, result.table)
        ok = int((result.table["status"] == "ok").sum())
        summary = [f"{len(files)} file(s): {ok} face(s) scored."]
        summary += [f"- {c}" for _, c in result.gallery] + [f"- {m}" for m in result.messages]
        return sheet(result.gallery), result.table, str(csv_path), "\n".join(summary)

    return detect


def build_app(detector: Detector, sampler: Sampler | None, about: str, scratch: Path) -> gr.Blocks:
    """The page; ``scratch``: a folder of the app's own for each request's files (the caller removes it)."""
    limits = detector.limits
    with gr.Blocks(title="deepfake-pipeline") as page:
        gr.Markdown("# deepfake-pipeline: real or fake face?")
        gr.Markdown(about, elem_id="model-info")
        with gr.Tab("Detect"):
            uploads = gr.File(
                file_count="multiple",
                file_types=["image", ".zip"],
                label=f"Photos or a zip of photos (up to {limits.max_upload_mb} MB each, {limits.max_files} images)",
                elem_id="uploads",
            )
            run = gr.Button("Detect", variant="primary", elem_id="detect")
            summary = gr.Markdown(elem_id="summary")
            pictures = gr.Image(
                label="Each face: its box (left) and the Grad-CAM of the decision (right)",
                type="pil",
                format="png",
                interactive=False,
                elem_id="heatmaps",
            )
            table = gr.Dataframe(label="Per file (the columns of predict)", elem_id="table", interactive=False)
            csv = gr.File(label="Download as CSV", elem_id="csv")
            outputs = [pictures, table, csv, summary]
            run.click(detect_handler(detector, scratch), uploads, outputs, concurrency_id="detect")
        with gr.Tab("Generate"):
            if sampler is None:
                gr.Markdown("No generator checkpoint: run `dvc repro train_generator` (or `make demo`) first.")
            else:
                generate_tab(sampler)
    page.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)
    return page


def generate_tab(sampler: Sampler) -> None:
    with gr.Row():
        seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
        n = gr.Slider(1, MAX_SAMPLES, value=8, step=1, label="faces")
    sample = gr.Button("Sample", elem_id="sample")
    samples = gr.Gallery(label="Generated faces", columns=8, elem_id="samples")
    sample.click(lambda s, k: sampler.sample(int(s), int(k)), [seed, n], samples, concurrency_id="generate")
    with gr.Row():
        seed_a = gr.Number(value=0, precision=0, label="from seed")
        seed_b = gr.Number(value=1, precision=0, label="to seed")
        steps = gr.Slider(2, MAX_STEPS, value=8, step=1, label="steps")
    walk = gr.Button("Interpolate", elem_id="interpolate")
    path = gr.Gallery(label="Interpolation (spherical, in latent space)", columns=8, elem_id="walk")
    walk.click(
        lambda a, b, k: sampler.interpolate(int(a), int(b), int(k)),
        [seed_a, seed_b, steps],
        path,
        concurrency_id="generate",
    )
