"""The trainers of the image generators (VAE, DCGAN, WGAN-GP; the DDPM's is generator.diffusion): losses,
EMA, one epoch of updates. On CUDA with ``generator.amp``, forward passes run under bfloat16 autocast
(no loss scaling needed) on channels_last tensors. On the CPU the convolutional trainers use channels_last
too: measured 1.3-1.6x faster per epoch at 32 px on 2 cores (oneDNN's convolutions prefer it; the
diffusers U-Net does not, so the DDPM keeps the default layout there).

Randomness: the batch order of epoch ``e`` comes from a generator seeded by (seed, e), and everything
else drawn during it (flips, latent noise, augmentation, interpolation weights, instance noise) from
one seeded by (seed, e, rank), so a run resumed after a kill draws the same numbers it would have drawn.

Data-parallel (``world.size`` > 1, see core.distributed): every rank draws the same global batches
and trains on its share; gradients are averaged by an explicit all-reduce after each backward
(DistributedDataParallel's reducer cannot follow the gradient penalty's double backward or the G step's
backward through D); BatchNorm statistics are taken from rank 0 after each epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from core.distributed import World, seed_for
from core.params import GeneratorParams
from core.pixels import batch_indices
from generator.augment import augment
from generator.data import to_float
from models.generator import (
    VAE,
    ConvDiscriminator,
    ConvGenerator,
    GeneratorArch,
    discriminator_norm,
    kl_divergence,
    reconstruction_loss,
)


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor, rng: torch.Generator
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al., 2017): E[(||grad critic(x_hat)||_2 - 1)^2] at x_hat = eps*real + (1-eps)*fake.

    ``eps`` ~ U(0, 1) per sample, drawn from ``rng`` as ``torch.rand((B, 1, 1, 1), generator=rng)``.
    """
    eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), generator=rng).to(real.device, real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


def d_loss_nonsaturating(d_real: torch.Tensor, d_fake: torch.Tensor, smoothing: float) -> torch.Tensor:
    """DCGAN discriminator loss with one-sided label smoothing (real target 1 - smoothing, fake target 0)."""
    return F.binary_cross_entropy_with_logits(
        d_real, torch.full_like(d_real, 1.0 - smoothing)
    ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))


def g_loss_nonsaturating(d_fake: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))


def d_loss_hinge(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss (Lim & Ye, 2017; SNGAN, BigGAN): E[relu(1 - D(real))] + E[relu(1 + D(fake))]."""
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def r1_penalty(d_real: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al., 2018): E[||grad_x D(x)||^2] on real inputs (``real`` must require grad)."""
    (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
    return grad.flatten(1).pow(2).sum(dim=1).mean()


def ema_of(model: nn.Module, decay: float) -> AveragedModel:
    """Exponential moving average of ``model``'s parameters (torch's AveragedModel; buffers are copied as
    they are): ``ema.update_parameters(model)`` after each step, ``ema.module`` samples.

    The first update copies the weights; update ``t`` (t >= 1) then keeps min(decay, (1 + t) / (10 + t)) of
    the average, so early averages are not dominated by the first weights on short runs. The update count
    is part of ``ema.state_dict()``, so a resumed run continues the same ramp.
    """

    def ramped(averages: Any, current: Any, updates: torch.Tensor | int) -> None:
        t = int(updates)
        get_ema_multi_avg_fn(min(decay, (1 + t) / (10 + t)))(averages, current, updates)

    return AveragedModel(model, multi_avg_fn=ramped).eval().requires_grad_(False)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


class Trainer(Protocol):
    arch: GeneratorArch

    def train_epoch(self, epoch: int, images: torch.Tensor) -> dict[str, float]: ...
    def sampler(self) -> nn.Module: ...
    def modules(self) -> list[nn.Module]: ...
    def sync_from_main(self, buffers_only: bool = False) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def arch_of(p: GeneratorParams) -> GeneratorArch:
    return GeneratorArch(
        p.model, p.image_size, p.latent_dim, p.g_width, p.g_depth, p.blocks, p.upsample, p.sample_steps
    )


class BaseTrainer:
    channels_last_on_cpu = True

    def __init__(self, p: GeneratorParams, device: torch.device, world: World) -> None:
        self.p, self.device, self.world = p, device, world
        self.arch = arch_of(p)
        self.order_rng = torch.Generator()
        self.rng = torch.Generator()
        self.amp = p.amp and device.type == "cuda"
        self.channels_last = self.amp or (device.type == "cpu" and self.channels_last_on_cpu)

    def autocast(self) -> torch.autocast:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp)

    def place(self, module: ModuleT) -> ModuleT:
        """On the device; channels_last under AMP (tensor-core friendly convolutions) and on the CPU."""
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def _epoch_batches(self, epoch: int, n: int) -> list[np.ndarray]:
        """Reseed for ``epoch`` and return this rank's share of each of its global batches: a shuffled pass
        in full batches (one short batch only when n < batch_size)."""
        self.order_rng.manual_seed(seed_for(self.p.seed, epoch))
        self.rng.manual_seed(seed_for(self.p.seed, epoch, self.world.rank))
        full = min(n, self.p.batch_size)
        return [self.world.shard(b) for b in batch_indices(n, self.p.batch_size, self.order_rng, min_size=full)]

    def modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def sync_from_main(self, buffers_only: bool = False) -> None:
        """Rank 0's BatchNorm statistics (and weights unless ``buffers_only``) on every rank."""
        for module in self.modules():
            self.world.broadcast_from_main(module, buffers_only)

    def _real_batch(self, images: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        x = to_float(images[idx].to(self.device))
        if self.p.hflip:
            flip = (torch.rand(len(idx), generator=self.rng) < 0.5).to(self.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn((n, self.p.latent_dim), generator=self.rng).to(self.device)

    def _betas(self) -> tuple[float, float]:
        return (self.p.beta1, self.p.beta2)


class GanTrainer(BaseTrainer):
    """DCGAN (hinge or non-saturating loss, optional lazy R1) or WGAN-GP, with SN, TTUR, smoothing, instance
    noise, DiffAugment, EMA."""

    def __init__(self, p: GeneratorParams, device: torch.device, world: World) -> None:
        super().__init__(p, device, world)
        self.wgan = p.model == "wgan_gp"
        self.g = self.place(ConvGenerator(p.latent_dim, p.image_size, p.g_width, p.g_depth, p.blocks, p.upsample))
        norm = discriminator_norm(p.model, p.spectral_norm)
        self.d = self.place(ConvDiscriminator(p.image_size, p.d_width, p.d_depth, norm, p.spectral_norm, p.blocks))
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=p.lr_g, betas=self._betas())
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=p.lr_d, betas=self._betas())
        self.ema = ema_of(self.g, p.ema_decay)
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

    def _d_step(
        self, images: torch.Tensor, idx: np.ndarray, sigma: float, sums: dict[str, float], counts: dict[str, int]
    ) -> None:
        real = self._real_batch(images, idx)
        with torch.no_grad(), self.autocast():
            fake = self.g(self._noise(len(idx))).float()
        real_in, fake_in = self._d_input(real, sigma), self._d_input(fake, sigma)
        r1 = not self.wgan and self.p.r1_gamma > 0 and self.d_steps % self.p.r1_every == 0
        if r1:
            real_in = real_in.detach().requires_grad_(True)
        with self.autocast():
            d_real, d_fake = self.d(real_in).float(), self.d(fake_in).float()
        if self.wgan:
            gp = gradient_penalty(self.d, real_in, fake_in, self.rng)
            loss = d_fake.mean() - d_real.mean() + self.p.gp_weight * gp
            accumulate(
                sums,
                counts,
                gp=gp.item(),
                wasserstein=(d_real.mean() - d_fake.mean()).item(),
                d_real=d_real.mean().item(),
                d_fake=d_fake.mean().item(),
            )
        elif self.p.loss == "hinge":
            loss = d_loss_hinge(d_real, d_fake)
            accumulate(sums, counts, d_real=d_real.mean().item(), d_fake=d_fake.mean().item())
        else:
            loss = d_loss_nonsaturating(d_real, d_fake, self.p.label_smoothing)
            accumulate(
                sums, counts, d_real=torch.sigmoid(d_real).mean().item(), d_fake=torch.sigmoid(d_fake).mean().item()
            )
        if r1:
            penalty = r1_penalty(d_real, real_in)
            loss = loss + self.p.r1_gamma / 2 * self.p.r1_every * penalty
            accumulate(sums, counts, r1=penalty.item())
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.world.average_gradients(self.d)
        self.opt_d.step()
        self.d_steps += 1
        accumulate(sums, counts, d_loss=loss.item())

    def _g_step(self, n: int, sigma: float, sums: dict[str, float], counts: dict[str, int]) -> None:
        with self.autocast():
            fake = self.g(self._noise(n))
            d_fake = self.d(self._d_input(fake, sigma)).float()
        hinge = self.wgan or self.p.loss == "hinge"
        loss = -d_fake.mean() if hinge else g_loss_nonsaturating(d_fake)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.world.average_gradients(self.g)
        self.opt_g.step()
        self.ema.update_parameters(self.g)
        accumulate(sums, counts, g_loss=loss.item())

    def sampler(self) -> nn.Module:
        return self.ema.module

    def modules(self) -> list[nn.Module]:
        return [self.g, self.d, self.ema.module]

    def state_dict(self) -> dict[str, Any]:
        return {
            "g": self.g.state_dict(),
            "d": self.d.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "ema": self.ema.state_dict(),
            "d_steps": self.d_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.ema.load_state_dict(state["ema"])
        self.d_steps = int(state["d_steps"])


class VaeTrainer(BaseTrainer):
    """Gaussian VAE: summed squared error + kl_weight * KL; EMA over the decoder (the sampler)."""

    def __init__(self, p: GeneratorParams, device: torch.device, world: World) -> None:
        super().__init__(p, device, world)
        self.vae = self.place(
            VAE(p.latent_dim, p.image_size, p.g_width, p.g_depth, p.d_width, p.d_depth, p.blocks, p.upsample)
        )
        self.opt = torch.optim.Adam(self.vae.parameters(), lr=p.lr_g, betas=self._betas())
        self.ema = ema_of(self.vae.decoder, p.ema_decay)

    def train_epoch(self, epoch: int, images: torch.Tensor) -> dict[str, float]:
        self.vae.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for idx in self._epoch_batches(epoch, images.shape[0]):
            x = self._real_batch(images, idx)
            with self.autocast():
                recon, mu, logvar = self.vae(x, self._noise(len(idx)))
            rec, kl = reconstruction_loss(recon.float(), x), kl_divergence(mu.float(), logvar.float())
            loss = rec + self.p.kl_weight * kl
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.world.average_gradients(self.vae)
            self.opt.step()
            self.ema.update_parameters(self.vae.decoder)
            accumulate(sums, counts, loss=loss.item(), recon=rec.item(), kl=kl.item())
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


def accumulate(sums: dict[str, float], counts: dict[str, int], **values: float) -> None:
    for k, v in values.items():
        sums[k] = sums.get(k, 0.0) + v
        counts[k] = counts.get(k, 0) + 1


def build_trainer(p: GeneratorParams, device: torch.device, world: World = World()) -> Trainer:
    torch.manual_seed(p.seed)  # network initialisation
    if p.model == "ddpm":
        from generator.diffusion import DiffusionTrainer  # diffusers is imported only when a DDPM is trained

        return DiffusionTrainer(p, device, world)
    return VaeTrainer(p, device, world) if p.model == "vae" else GanTrainer(p, device, world)
