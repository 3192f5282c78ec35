"""What the app serves, apart from its page: score uploaded photos, sample and interpolate generated faces.

Scoring is ``classifier.predict``'s path (the same crops, calibration, threshold and CSV columns as
``python -m stages.predict``), plus a Grad-CAM overlay of every scored face. Every face found in a photo
is scored (predict's ``--every-face``: one row per face, ``face`` 0 = the most probable), each with its
box drawn on the photo (the other faces' boxes in grey), its own Grad-CAM panel and caption. Every column
a predict row carries is shown, so columns added to ``Prediction.row`` appear in the app without changes here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image, ImageDraw
from torch import nn

from app.limits import AppLimits, pixel_count
from classifier.checkpoint import ClassifierCheckpoint
from classifier.predict import COLUMNS, FACE_COLUMNS, Prediction, Predictor
from core.images import decode_rgb
from core.params import DataParams, load_block
from generator.data import to_uint8
from generator.sampling import generate

PANEL = 256  # side of each picture in the results gallery
SHOWN = ("prob_fake", "predicted")  # the head of each face's caption; every other new column follows


@dataclass
class Scored:
    """One request's answer: the predict table, a picture per file, and a line per file without a score."""

    table: pd.DataFrame
    gallery: list[tuple[Image.Image, str]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


@dataclass
class Detector:
    predictor: Predictor  # the app scores every face of a photo by default (every_face), with its scorer if any
    limits: AppLimits

    def score(self, files: list[Path], names: list[str]) -> Scored:
        """Score ``files`` (shown as ``names``); images over the pixel cap are reported, not decoded."""
        preds: list[list[Prediction] | None] = []
        todo: list[Path] = []
        for f in files:
            pixels = pixel_count(f)
            if pixels is not None and pixels > self.limits.max_pixels:
                reason = f"{pixels:,} pixels, over the app's cap of {self.limits.max_pixels:,} (--max-pixels)"
                preds.append([Prediction(str(f), "unreadable", reason)])
            else:
                preds.append(None)
                todo.append(f)
        scored = iter(self.predictor.file_groups(todo) if todo else [])
        groups = [g if g is not None else next(scored) for g in preds]
        for group, name in zip(groups, names):
            for p in group:
                p.file = name
        done = [p for group in groups for p in group]
        overlays = {id(p): im for p, im in self.predictor.explain(done, PANEL)}
        known = FACE_COLUMNS if self.predictor.every_face else COLUMNS
        rows = [p.row() for p in done]
        columns = known + [k for k in rows[0] if k not in FACE_COLUMNS] if rows else known
        out = Scored(pd.DataFrame(rows, columns=columns))
        for group, f in zip(groups, files):
            boxes = [p.box for p in group if p.box is not None and p.status == "ok"]
            for p in group:
                if id(p) in overlays:
                    out.gallery.append((panel(f, p.box, overlays[id(p)], boxes), caption(p.row())))
                if p.status != "ok":
                    out.messages.append(f"{p.file}: {message(p)}")
        return out


SHOWN_IN_CAPTION = ("uncertainty", "prediction_set")  # predict's uncertainty columns, when scored with them


def caption(row: dict[str, Any]) -> str:
    """``name: p(fake) 0.87 → fake`` (``name face 1: ...`` for a photo's second face), the uncertainty columns
    and every further column the row has."""
    face = "" if row.get("face") in ("", None) else f" face {row['face']}"
    head = f"{Path(row['file']).name}{face}: p(fake) {row['prob_fake']} → {row['predicted']}"
    keys = [*SHOWN_IN_CAPTION, *(k for k in row if k not in FACE_COLUMNS)]
    extra = [f"{k} {row[k]}" for k in keys if row.get(k) not in ("", None)]
    return "; ".join([head, *extra])


def message(p: Prediction) -> str:
    if p.status == "no_face":
        return f"no face found ({p.reason})" + ("; scored on a centred crop" if p.prob_fake is not None else "")
    if p.status == "too_small":
        return p.reason
    return f"could not be read: {p.reason}"


Box = tuple[float, float, float, float]


def panel(path: Path, box: Box | None, heat: Image.Image, others: list[Box] | None = None) -> Image.Image:
    """The photo with its face box in green (the photo's ``others`` in grey; left) beside the Grad-CAM overlay
    of the scored crop (right)."""
    photo = decode_rgb(path).image  # as predict decoded it (EXIF orientation applied), so the box fits
    scale = PANEL / max(photo.size)
    photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))))
    draw = ImageDraw.Draw(photo)
    for other in others or []:
        if other != box:
            draw.rectangle([v * scale for v in other], outline=(160, 160, 160), width=2)
    if box is not None:
        draw.rectangle([v * scale for v in box], outline=(0, 255, 0), width=3)
    out = Image.new("RGB", (PANEL * 2 + 8, PANEL), (255, 255, 255))
    out.paste(photo, ((PANEL - photo.width) // 2, (PANEL - photo.height) // 2))
    out.paste(heat.resize((PANEL, PANEL)), (PANEL + 8, 0))
    return out


def sheet(gallery: list[tuple[Image.Image, str]]) -> Image.Image | None:
    """All face pictures of a request, one under the other, each under its caption; None when none."""
    if not gallery:
        return None
    band = 22  # caption height, px
    width = max(im.width for im, _ in gallery)
    out = Image.new("RGB", (width, sum(im.height + band for im, _ in gallery)), (255, 255, 255))
    draw, y = ImageDraw.Draw(out), 0
    for image, text in gallery:
        draw.text((4, y + 5), text.replace("→", "->"), fill=(0, 0, 0))  # the default font has no arrow
        out.paste(image, (0, y + band))
        y += image.height + band
    return out


def describe_classifier(path: Path, ckpt: ClassifierCheckpoint, eval_metrics: Path, params_file: Path) -> str:
    """Which model this is: checkpoint, MLflow run, DVC experiment, data set, test ROC-AUC (Markdown)."""
    info = ckpt.info
    run = info.get("mlflow_run_id") or "not recorded (checkpoint from before run ids were saved)"
    exp = info.get("dvc_exp_name") or "workspace (no DVC experiment)"
    try:
        source = load_block("data", DataParams, params_file).source
    except Exception:  # a display detail: an unreadable params file must not stop the app
        source = f"unknown ({params_file} unreadable)"
    auc = f"not evaluated yet: no {eval_metrics} (dvc repro evaluate; an applied experiment's is in dvc exp show)"
    if eval_metrics.is_file():
        stale = eval_metrics.stat().st_mtime < path.stat().st_mtime
        value = json.loads(eval_metrics.read_text()).get("test", {}).get("roc_auc")
        auc = "n/a" if value is None else f"{value:.4f}"
        auc += " (older than this checkpoint: rerun evaluate)" if stale else ""
    return (
        f"**Classifier** `{path}` — arch `{ckpt.arch.get('arch')}`, trained {info.get('trained_at', '?')}; "
        f"MLflow run `{run}`; DVC experiment `{exp}`; data source `{source}`; test ROC-AUC {auc}; "
        f"threshold {ckpt.threshold:.4f} ({ckpt.threshold_rule}, validation), temperature {ckpt.temperature:.3f}."
    )


@dataclass
class Sampler:
    net: nn.Module
    latent_dim: int
    device: torch.device

    def sample(self, seed: int, n: int) -> list[Image.Image]:
        images = generate(self.net, n, self.latent_dim, seed, device=self.device)
        return [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]

    @torch.no_grad()
    def interpolate(self, seed_a: int, seed_b: int, steps: int) -> list[Image.Image]:
        """Faces along the great circle between the first latents of ``seed_a`` and ``seed_b`` (as ``sample``)."""
        a, b = (torch.randn((1, self.latent_dim), generator=torch.Generator().manual_seed(s)) for s in (seed_a, seed_b))
        ts = torch.linspace(0.0, 1.0, max(steps, 2))
        z = torch.cat([slerp(a, b, float(t)) for t in ts]).to(self.device)
        self.net.eval()
        images = to_uint8(self.net(z))
        return [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation: Gaussian latents keep their norm, unlike on the straight line."""
    cos = torch.nn.functional.cosine_similarity(a, b).clamp(-1 + 1e-7, 1 - 1e-7)
    omega = torch.arccos(cos).view(-1, 1)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
