"""The denoising diffusion model of stage train_generator (``generator.model: ddpm``), built from diffusers.

A small ``UNet2DModel`` predicts the noise added to an image at timestep t of a 1000-step cosine
schedule (Nichol & Dhariwal, 2021: ``squaredcos_cap_v2``). ``DiffusionSampler`` wraps the U-Net with a
deterministic DDIM sampler (eta = 0, ``sample_steps`` steps, "trailing" spacing): it maps a noise image,
given flattened as (B, 3 * size * size), to an image in [-1, 1], so it samples through the same
``generate(sampler, n, noise_dim, seed)`` path as the GANs' generators and the same noise gives the
same image.

Width and depth come from params: ``width`` channels at full resolution, doubled per level up to 4x
(4 levels at 64 px and above, self-attention at the lowest one), ``depth`` ResNet layers per level.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from torch import nn

TRAIN_TIMESTEPS = 1000
BETA_SCHEDULE = "squaredcos_cap_v2"  # the cosine schedule
MAX_LEVELS = 4


def build_unet(size: int, width: int, depth: int) -> UNet2DModel:
    """A U-Net for ``size`` x ``size`` RGB images: ``levels`` resolutions, attention at the lowest."""
    levels = max(2, min(MAX_LEVELS, int(math.log2(size)) - 2))
    channels = tuple(width * min(2**i, 4) for i in range(levels))
    groups = math.gcd(width, 8)
    return UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        layers_per_block=depth,
        block_out_channels=channels,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        norm_num_groups=groups,
        attention_head_dim=channels[-1] // groups,
    )


def training_scheduler() -> DDPMScheduler:
    """The forward (noising) process used in training: 1000 steps, cosine schedule, epsilon prediction."""
    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE)


def sampling_scheduler() -> DDIMScheduler:
    """DDIM over the same schedule (eta = 0 in ``step``: deterministic), clipping x0 to [-1, 1]."""
    return DDIMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_schedule=BETA_SCHEDULE,
        clip_sample=True,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
    )


class DiffusionSampler(nn.Module):
    """noise (B, 3 * size * size) -> image (B, 3, size, size) in [-1, 1] by ``sample_steps`` DDIM steps."""

    def __init__(self, size: int, width: int, depth: int, sample_steps: int) -> None:
        super().__init__()
        if sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1; got {sample_steps}")
        self.size, self.sample_steps = size, sample_steps
        self.unet: nn.Module = build_unet(size, width, depth)

    def predict_noise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        scheduler = sampling_scheduler()
        scheduler.set_timesteps(self.sample_steps)
        x = z.reshape(z.shape[0], 3, self.size, self.size)
        for t in scheduler.timesteps:
            eps = self.predict_noise(x, t.to(x.device).expand(x.shape[0]))
            out = scheduler.step(eps, t, x, eta=0.0)
            assert not isinstance(out, tuple)
            x = out.prev_sample
        return x.clamp(-1.0, 1.0)
