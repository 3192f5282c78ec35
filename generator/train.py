"""Training of the image generators (VAE, DCGAN, WGAN-GP): data cache, losses, EMA, DiffAugment, checkpoints.

Randomness: the networks are initialised under ``torch.manual_seed(seed)``; the batch order of epoch
``e`` comes from a generator seeded by (seed, e), and everything else drawn during it (flips, latent
noise, augmentation, interpolation weights, instance noise) from one seeded by (seed, e, rank), so a
run resumed after a kill draws the same numbers it would have drawn.

Data-parallel (``world.size`` > 1, see core.distributed): every rank draws the same global
batches and trains on its share; gradients are averaged by an explicit all-reduce after each backward
(DistributedDataParallel's reducer cannot follow the gradient penalty's double backward or the G step's
backward through D); BatchNorm statistics are taken from rank 0 after each epoch.

Checkpoints hold only tensors, dicts, lists, numbers and strings and are read with ``weights_only=True``.
"""
from __future__ import annotations

import copy
import hashlib
import io
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.utils import save_image
from tqdm import tqdm

from core.distributed import World, seed_for
from core.images import ImageDecodeError, decode_rgb, square_pixels
from core.io import atomic_write_bytes, stable_hash
from core.params import GeneratorParams
from models.generator import (VAE, ConvDiscriminator, ConvGenerator, GeneratorArch, build_generator, discriminator_norm,
                              kl_divergence, reconstruction_loss)

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_FORMAT = "deepfake-pipeline/generator/v1"
# params that change neither what is trained nor how: a checkpoint made under other values is resumed
NOT_HASHED = ("max_minutes", "device", "threads", "processes")


# --- data ----------------------------------------------------------------------------------------

def load_image_cache(paths: Sequence[Path], size: int, desc: str = "loading images",
                     progress: bool = True) -> torch.Tensor:
    """Decode and resize every image once to (N, 3, size, size) uint8; a bad file is an error naming it."""
    if not paths:
        raise ValueError("no images to load: the selection is empty")
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", leave=False, disable=not progress)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: image listed in the split but missing on disk (rerun stage faces)")
        try:
            image = decode_rgb(Path(path)).image
        except ImageDecodeError as e:
            raise ImageDecodeError(f"{path}: {e}") from None
        out[i] = torch.from_numpy(square_pixels(image, size))
    return out


def training_rows(split: pd.DataFrame, train_on: str, split_name: str = "train") -> pd.DataFrame:
    """The faces the generator learns from: real, fake or all rows of the split (an empty pick is an error)."""
    if train_on not in ("real", "fake", "all"):
        raise ValueError(f"generator.train_on: got {train_on!r}; allowed: 'real', 'fake', 'all'")
    rows = split if train_on == "all" else split[split["label"] == train_on]
    if rows.empty:
        labels = ", ".join(f"{k}={v}" for k, v in split["label"].value_counts().items()) or "no rows"
        raise ValueError(f"the {split_name} split has no {train_on!r} faces to train the generator on "
                         f"(generator.train_on={train_on}; the split has {labels})")
    return rows.reset_index(drop=True)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clamped)."""
    return images.detach().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu()


def tensor_fingerprint(images: torch.Tensor) -> str:
    return hashlib.sha1(images.contiguous().numpy().tobytes()).hexdigest()[:12]


# --- DiffAugment (Zhao et al., 2020): differentiable augmentations applied to real AND fake D inputs ----

def augment(x: torch.Tensor, ops: Sequence[str], rng: torch.Generator) -> torch.Tensor:
    """Apply the named differentiable augmentations in a fixed order; gradients flow to ``x``."""
    for op in ("color", "translation", "cutout"):
        if op in ops:
            x = AUGMENTATIONS[op](x, rng)
    return x


def _uniform(shape: Sequence[int], rng: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=rng).to(device=like.device, dtype=like.dtype)


def aug_color(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random brightness (+U(-0.5, 0.5)), saturation (x U(0, 2)) and contrast (x U(0.5, 1.5)) per image."""
    b = x.shape[0]
    x = x + (_uniform((b, 1, 1, 1), rng, x) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform((b, 1, 1, 1), rng, x) * 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform((b, 1, 1, 1), rng, x) + 0.5) + mean


def aug_translation(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by whole pixels, up to ``ratio`` of its side, filling with zeros."""
    b, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (b, 1, 1), generator=rng).to(x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (b, 1, 1), generator=rng).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) - dy  # source row for each output row
    cols = torch.arange(w, device=x.device).view(1, 1, w) - dx
    valid = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)
    idx = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(b, 1, h * w).expand(-1, x.shape[1], -1)
    shifted = x.flatten(2).gather(2, idx).view_as(x)
    return shifted * valid.to(x.dtype)


def aug_cutout(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of side ``ratio`` x image side per image (it may overlap the border)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=rng).to(x.device) - ch // 2
    left = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=rng).to(x.device) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "color": aug_color, "translation": aug_translation, "cutout": aug_cutout}


# --- losses --------------------------------------------------------------------------------------

def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     rng: torch.Generator) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al., 2017): E[(||grad critic(x_hat)||_2 - 1)^2] at x_hat = eps*real + (1-eps)*fake.

    ``eps`` ~ U(0, 1) per sample, drawn from ``rng`` as ``torch.rand((B, 1, 1, 1), generator=rng)``.
    """
    eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), generator=rng).to(real.device, real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


def d_loss_nonsaturating(d_real: torch.Tensor, d_fake: torch.Tensor, smoothing: float) -> torch.Tensor:
    """DCGAN discriminator loss with one-sided label smoothing (real target 1 - smoothing, fake target 0)."""
    return (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, 1.0 - smoothing))
            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))


def g_loss_nonsaturating(d_fake: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))


# --- EMA -----------------------------------------------------------------------------------------

class EMA:
    """Exponential moving average of a module's parameters (buffers are copied as they are).

    The decay ramps up as min(decay, (1 + t) / (10 + t)) so early averages are not dominated by the
    random initialisation on short runs.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.steps = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for p_ema, p in zip(self.module.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])


# --- trainers ------------------------------------------------------------------------------------

class Trainer(Protocol):
    arch: GeneratorArch

    def train_epoch(self, epoch: int, images: torch.Tensor) -> dict[str, float]: ...
    def sampler(self) -> nn.Module: ...
    def modules(self) -> list[nn.Module]: ...
    def sync_from_main(self, buffers_only: bool = False) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def arch_of(p: GeneratorParams) -> GeneratorArch:
    return GeneratorArch(p.model, p.image_size, p.latent_dim, p.g_width, p.g_depth)


def batches(n: int, batch_size: int, rng: torch.Generator) -> list[torch.Tensor]:
    """A shuffled pass over n items in full batches (one short batch only when n < batch_size)."""
    perm = torch.randperm(n, generator=rng)
    if n < batch_size:
        return [perm]
    return list(perm[: n - n % batch_size].split(batch_size))


class _Base:
    def __init__(self, p: GeneratorParams, device: torch.device, world: World) -> None:
        self.p, self.device, self.world = p, device, world
        self.arch = arch_of(p)
        self.order_rng = torch.Generator()
        self.rng = torch.Generator()

    def _epoch_batches(self, epoch: int, n: int) -> list[torch.Tensor]:
        """Reseed for ``epoch`` and return this rank's share of each of its global batches."""
        self.order_rng.manual_seed(seed_for(self.p.seed, epoch))
        self.rng.manual_seed(seed_for(self.p.seed, epoch, self.world.rank))
        return [self.world.shard(b) for b in batches(n, self.p.batch_size, self.order_rng)]

    def modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def sync_from_main(self, buffers_only: bool = False) -> None:
        """Rank 0's BatchNorm statistics (and weights unless ``buffers_only``) on every rank."""
        for module in self.modules():
            self.world.broadcast_from_main(module, buffers_only)

    def _real_batch(self, images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        x = to_float(images[idx].to(self.device))
        if self.p.hflip:
            flip = (torch.rand(len(idx), generator=self.rng) < 0.5).to(self.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        return x

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn((n, self.p.latent_dim), generator=self.rng).to(self.device)

    def _betas(self) -> tuple[float, float]:
        return (self.p.beta1, self.p.beta2)


class GanTrainer(_Base):
    """DCGAN (non-saturating loss) or WGAN-GP, with SN, TTUR, smoothing, instance noise, DiffAugment, EMA."""

    def __init__(self, p: GeneratorParams, device: torch.device, world: World) -> None:
        super().__init__(p, device, world)
        self.wgan = p.model == "wgan_gp"
        self.g = ConvGenerator(p.latent_dim, p.image_size, p.g_width, p.g_depth).to(device)
        self.d = ConvDiscriminator(p.image_size, p.d_width, p.d_depth, discriminator_norm(p.model, p.spectral_norm),
                                   p.spectral_norm).to(device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=p.lr_g, betas=self._betas())
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=p.lr_d, betas=self._betas())
        self.ema = EMA(self.g, p.ema_decay)
        self.d_steps = 0
        self.ops = p.augment_ops

    def _d_input(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        x = augment(x, self.ops, self.rng) if self.ops else x
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=self.rng).to(x.device, x.dtype)
        return x

    def instance_noise_std(self, epoch: int) -> float:
        """Linearly annealed from generator.instance_noise at epoch 1 to 0 at the last epoch."""
        return self.p.instance_noise * max(0.0, 1.0 - (epoch - 1) / max(1, self.p.epochs))

    def train_epoch(self, epoch: int, images: torch.Tensor) -> dict[str, float]:
        self.g.train()
        self.d.train()
        sigma = self.instance_noise_std(epoch)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        g_steps = 0
        shares = self._epoch_batches(epoch, images.shape[0])
        for idx in shares:
            self._d_step(images, idx, sigma, sums, counts)
            if self.d_steps % self.p.critic_steps == 0:
                self._g_step(len(idx), sigma, sums, counts)
                g_steps += 1
        if g_steps == 0:  # tiny data: fewer D batches than n_critic in this epoch
            self._g_step(len(shares[0]), sigma, sums, counts)
        out = self.world.mean({k: sums[k] / counts[k] for k in sums})
        out["instance_noise"] = sigma
        return out

    def _d_step(self, images: torch.Tensor, idx: torch.Tensor, sigma: float, sums: dict[str, float],
                counts: dict[str, int]) -> None:
        real = self._real_batch(images, idx)
        with torch.no_grad():
            fake = self.g(self._noise(len(idx)))
        real_in, fake_in = self._d_input(real, sigma), self._d_input(fake, sigma)
        d_real, d_fake = self.d(real_in), self.d(fake_in)
        if self.wgan:
            gp = gradient_penalty(self.d, real_in, fake_in, self.rng)
            loss = d_fake.mean() - d_real.mean() + self.p.gp_weight * gp
            _acc(sums, counts, gp=gp.item(), wasserstein=(d_real.mean() - d_fake.mean()).item(),
                 d_real=d_real.mean().item(), d_fake=d_fake.mean().item())
        else:
            loss = d_loss_nonsaturating(d_real, d_fake, self.p.label_smoothing)
            _acc(sums, counts, d_real=torch.sigmoid(d_real).mean().item(),
                 d_fake=torch.sigmoid(d_fake).mean().item())
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.world.average_gradients(self.d)
        self.opt_d.step()
        self.d_steps += 1
        _acc(sums, counts, d_loss=loss.item())

    def _g_step(self, n: int, sigma: float, sums: dict[str, float], counts: dict[str, int]) -> None:
        fake = self.g(self._noise(n))
        d_fake = self.d(self._d_input(fake, sigma))
        loss = -d_fake.mean() if self.wgan else g_loss_nonsaturating(d_fake)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.world.average_gradients(self.g)
        self.opt_g.step()
        self.ema.update(self.g)
        _acc(sums, counts, g_loss=loss.item())

    def sampler(self) -> nn.Module:
        return self.ema.module

    def modules(self) -> list[nn.Module]:
        return [self.g, self.d, self.ema.module]

    def state_dict(self) -> dict[str, Any]:
        return {"g": self.g.state_dict(), "d": self.d.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "ema": self.ema.state_dict(), "d_steps": self.d_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.ema.load_state_dict(state["ema"])
        self.d_steps = int(state["d_steps"])


class VaeTrainer(_Base):
    """Gaussian VAE: summed squared error + kl_weight * KL; EMA over the decoder (the sampler)."""

    def __init__(self, p: GeneratorParams, device: torch.device, world: World) -> None:
        super().__init__(p, device, world)
        self.vae = VAE(p.latent_dim, p.image_size, p.g_width, p.g_depth, p.d_width, p.d_depth).to(device)
        self.opt = torch.optim.Adam(self.vae.parameters(), lr=p.lr_g, betas=self._betas())
        self.ema = EMA(self.vae.decoder, p.ema_decay)

    def train_epoch(self, epoch: int, images: torch.Tensor) -> dict[str, float]:
        self.vae.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for idx in self._epoch_batches(epoch, images.shape[0]):
            x = self._real_batch(images, idx)
            recon, mu, logvar = self.vae(x, self._noise(len(idx)))
            rec, kl = reconstruction_loss(recon, x), kl_divergence(mu, logvar)
            loss = rec + self.p.kl_weight * kl
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.world.average_gradients(self.vae)
            self.opt.step()
            self.ema.update(self.vae.decoder)
            _acc(sums, counts, loss=loss.item(), recon=rec.item(), kl=kl.item())
        return self.world.mean({k: sums[k] / counts[k] for k in sums})

    def sampler(self) -> nn.Module:
        return self.ema.module

    def modules(self) -> list[nn.Module]:
        return [self.vae, self.ema.module]

    def state_dict(self) -> dict[str, Any]:
        return {"vae": self.vae.state_dict(), "opt": self.opt.state_dict(), "ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vae.load_state_dict(state["vae"])
        self.opt.load_state_dict(state["opt"])
        self.ema.load_state_dict(state["ema"])


def _acc(sums: dict[str, float], counts: dict[str, int], **values: float) -> None:
    for k, v in values.items():
        sums[k] = sums.get(k, 0.0) + v
        counts[k] = counts.get(k, 0) + 1


def build_trainer(p: GeneratorParams, device: torch.device, world: World = World()) -> Trainer:
    torch.manual_seed(p.seed)  # network initialisation
    return VaeTrainer(p, device, world) if p.model == "vae" else GanTrainer(p, device, world)


# --- sampling ------------------------------------------------------------------------------------

@torch.no_grad()
def generate(sampler: nn.Module, n: int, latent_dim: int, seed: int, batch_size: int = 64,
             device: torch.device | None = None) -> torch.Tensor:
    """n images as uint8 (n, 3, S, S) from seeded N(0, I) latents; the sampler is left in eval mode."""
    device = device or next(sampler.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    sampler.eval()
    parts = [to_uint8(sampler(torch.randn((min(batch_size, n - i), latent_dim), generator=rng).to(device)))
             for i in range(0, n, batch_size)]
    return torch.cat(parts) if parts else torch.empty((0, 3, 1, 1), dtype=torch.uint8)


def grid_png(images: torch.Tensor, nrow: int) -> bytes:
    """A PNG grid of float [-1, 1] images."""
    buf = io.BytesIO()
    save_image(images.detach().cpu(), buf, format="png", nrow=nrow, padding=2, normalize=True,
               value_range=(-1.0, 1.0))
    return buf.getvalue()


def png_bytes(image: torch.Tensor) -> bytes:
    """One uint8 (3, H, W) image as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buf, format="PNG")
    return buf.getvalue()


# --- checkpoints ---------------------------------------------------------------------------------

def params_hash(p: GeneratorParams, data_fingerprint: str) -> str:
    """Identity of a training run: every training-relevant param plus the training images' content."""
    hashed = {k: v for k, v in asdict(p).items() if k not in NOT_HASHED}
    return stable_hash({"params": hashed, "data": data_fingerprint})


def save_torch(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def model_payload(trainer: Trainer, p: GeneratorParams, run_hash: str, epochs_done: int) -> dict[str, Any]:
    """What results/generator/model.pt holds: the EMA sampling weights and how to rebuild the network."""
    state = {k: v.detach().cpu() for k, v in trainer.sampler().state_dict().items()}
    return {"format": MODEL_FORMAT, "arch": trainer.arch.as_dict(), "state_dict": state,
            "epochs_done": epochs_done, "params_hash": run_hash, "params": asdict(p)}


def load_generator(path: Path, device: torch.device) -> tuple[ConvGenerator, GeneratorArch, dict[str, Any]]:
    """Rebuild the sampling network (EMA weights) from a model.pt written by train_generator."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no generator checkpoint; run stage train_generator first")
    try:
        payload = load_torch(path)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: not a readable torch checkpoint ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a generator checkpoint of this project (format "
                         f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}, "
                         f"expected {MODEL_FORMAT!r})")
    arch = GeneratorArch(**payload["arch"])
    net = build_generator(arch)
    net.load_state_dict(payload["state_dict"])
    return net.to(device).eval(), arch, payload


# --- the training run ----------------------------------------------------------------------------

@dataclass
class TrainingResult:
    trainer: Trainer
    run_hash: str
    history: list[dict[str, float]]
    epochs_done: int
    epochs_planned: int
    resumed_from: int
    stopped_by_budget: bool
    seconds: float
    images_seen: int
    grids: list[Path] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.epochs_done >= self.epochs_planned


EpochHook = Callable[[int, dict[str, float], Path], None]
MetricHook = Callable[[nn.Module, int], dict[str, float]]


def train(p: GeneratorParams, images: torch.Tensor, work_dir: Path, run_hash: str, device: torch.device,
          on_epoch: EpochHook | None = None, extra_metrics: MetricHook | None = None,
          log: Callable[[str], None] = print, world: World = World()) -> TrainingResult:
    """Train (or resume) in ``work_dir``: one atomic checkpoint and one sample grid per epoch.

    Stops after ``p.epochs`` epochs, or earlier when the next epoch would overrun ``p.max_minutes``
    (at least one epoch per call). ``extra_metrics(sampler, epoch)`` adds per-epoch metrics
    (e.g. fd_mobilenet); ``on_epoch(epoch, metrics, grid_png)`` is called after the checkpoint is saved.
    With several ranks, every rank reads the checkpoint; only rank 0 writes files and calls the hooks.
    """
    if min(images.shape[0], p.batch_size) < 2 * world.size:
        raise ValueError(f"generator.batch_size={p.batch_size} on {images.shape[0]} images is split over "
                         f"{world.size} processes: each needs at least 2 images per batch")
    trainer = build_trainer(p, device, world)
    fixed_noise = torch.randn((p.grid_size ** 2, p.latent_dim), generator=torch.Generator().manual_seed(p.seed + 1))
    ckpt = work_dir / CHECKPOINT_NAME
    start, history = 0, []
    if ckpt.exists():
        state = load_torch(ckpt)
        if state.get("params_hash") == run_hash:
            trainer.load_state_dict(state["trainer"])
            _set_global_rng(state["global_rng"])
            start, history = int(state["epoch"]), list(state["history"])
            log(f"resuming from {ckpt} at epoch {start}/{p.epochs}")
        else:
            log(f"{ckpt} was made with other params (hash {state.get('params_hash')} != {run_hash}); starting over")
    trainer.sync_from_main()
    t0 = time.monotonic()
    epoch_seconds: list[float] = []
    images_seen = 0
    stopped = False
    grids = [work_dir / "samples" / f"epoch_{e:03d}.png" for e in range(1, start + 1)]
    images = images.to(device) if device.type == "cuda" else images
    bar = tqdm(range(start + 1, p.epochs + 1), desc=f"train {p.model}", unit="epoch", initial=start, total=p.epochs,
               disable=not world.is_main)
    for epoch in bar:
        t_epoch = time.monotonic()
        metrics = trainer.train_epoch(epoch, images)
        trainer.sync_from_main(buffers_only=True)  # the weights must already agree: checked at the end
        seconds = time.monotonic() - t_epoch
        images_seen += images.shape[0]
        metrics = {"epoch": epoch, **metrics, "seconds": seconds}
        history.append(metrics)
        grid = work_dir / "samples" / f"epoch_{epoch:03d}.png"
        grids.append(grid)
        if world.is_main:
            if extra_metrics is not None:
                metrics.update(extra_metrics(trainer.sampler(), epoch))
            with torch.no_grad():
                sampler = trainer.sampler().eval()
                atomic_write_bytes(grid, grid_png(sampler(fixed_noise.to(device)), nrow=p.grid_size))
            save_torch(ckpt, {"params_hash": run_hash, "epoch": epoch, "trainer": trainer.state_dict(),
                              "global_rng": _global_rng(), "history": history})
            if on_epoch is not None:
                on_epoch(epoch, metrics, grid)
        bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k in ("d_loss", "g_loss", "loss")})
        epoch_seconds.append(time.monotonic() - t_epoch)
        elapsed = time.monotonic() - t0
        if world.any(p.max_minutes > 0 and epoch < p.epochs and elapsed + _mean(epoch_seconds) > p.max_minutes * 60):
            if world.is_main:
                log(f"generator.max_minutes={p.max_minutes} reached after epoch {epoch}/{p.epochs}; "
                    "rerun to continue from the checkpoint")
            stopped = True
            break
    bar.close()
    for module in trainer.modules():
        world.check_in_sync(module, f"train_generator ({type(module).__name__})")
    done = int(history[-1]["epoch"]) if history else 0
    return TrainingResult(trainer, run_hash, history, done, p.epochs, start, stopped, time.monotonic() - t0,
                          images_seen, grids)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _global_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_global_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])



def fd_mobilenet_hook(every_epochs: int, n_samples: int, reals: torch.Tensor, latent_dim: int, seed: int,
                      batch_size: int, device: torch.device, log: Callable[[str], None] = print) -> MetricHook | None:
    """Per-epoch ``fd_mobilenet`` of ``n_samples`` EMA samples vs ``reals`` every ``every_epochs`` (None if off)."""
    if every_epochs <= 0:
        return None
    from generator.fidelity import MOBILENET, MOBILENET_LAYER, Features, frechet_distance, mobilenet_weights

    weights = mobilenet_weights()
    if not weights.available:
        log(f"generator.fd_every_epochs={every_epochs}: per-epoch fd_mobilenet skipped: {weights.instructions}")
        return None
    features = Features(MOBILENET, MOBILENET_LAYER, weights.path, batch_size)
    real_features = features(reals)

    def hook(sampler: nn.Module, epoch: int) -> dict[str, float]:
        if epoch % every_epochs:
            return {}
        fake = generate(sampler, n_samples, latent_dim, seed, batch_size, device)
        return {"fd_mobilenet": frechet_distance(features(fake), real_features)}

    return hook
