"""Sampling a trained generator: load results/generator/model.pt, draw seeded images, encode them.

Used by ``fid`` and ``sample`` (and by the training loop for its per-epoch grids); it imports no
training code, so those stages do not depend on the training loop. Checkpoints hold only tensors,
dicts, lists, numbers and strings and are read with ``weights_only=True``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.utils import save_image

from core.errors import InputError, MissingInputError
from generator.data import to_uint8
from models.generator import GeneratorArch, build_generator

MODEL_FORMAT = "deepfake-pipeline/generator/v1"


@torch.no_grad()
def generate(
    sampler: nn.Module, n: int, noise_dim: int, seed: int, batch_size: int = 64, device: torch.device | None = None
) -> torch.Tensor:
    """n images as uint8 (n, 3, S, S) from seeded N(0, I) noise vectors of length ``noise_dim``
    (``GeneratorArch.noise_dim``); the sampler is left in eval mode."""
    device = device or next(sampler.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    sampler.eval()
    parts = [
        to_uint8(sampler(torch.randn((min(batch_size, n - i), noise_dim), generator=rng).to(device)).float())
        for i in range(0, n, batch_size)
    ]
    return torch.cat(parts) if parts else torch.empty((0, 3, 1, 1), dtype=torch.uint8)


def grid_png(images: torch.Tensor, nrow: int) -> bytes:
    """A PNG grid of float [-1, 1] images."""
    buf = io.BytesIO()
    save_image(images.detach().cpu(), buf, format="png", nrow=nrow, padding=2, normalize=True, value_range=(-1.0, 1.0))
    return buf.getvalue()


def png_bytes(image: torch.Tensor) -> bytes:
    """One uint8 (3, H, W) image as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_generator(path: Path, device: torch.device) -> tuple[nn.Module, GeneratorArch, dict[str, Any]]:
    """Rebuild the sampling network (EMA weights) from a model.pt written by train_generator."""
    if not path.is_file():
        raise MissingInputError(f"{path}: no generator checkpoint", "run stage train_generator first")
    try:
        payload = load_torch(path)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise InputError(f"{path}: not a readable torch checkpoint ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise InputError(
            f"{path}: not a generator checkpoint of this project (format "
            f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}, "
            f"expected {MODEL_FORMAT!r})"
        )
    arch = GeneratorArch(**payload["arch"])
    net = build_generator(arch)
    net.load_state_dict(payload["state_dict"])
    return net.to(device).eval(), arch, payload
