"""Image generators trained by stage train_generator: a VAE, a DCGAN and a WGAN-GP (the DDPM is models.diffusion).

All three share the same decoder shape (``ConvGenerator``): a latent vector is projected to a 4x4
map, doubled in resolution ``log2(size / 4)`` times and mapped to RGB through ``tanh``, so every
output lies in [-1, 1]. The discriminator / critic (``ConvDiscriminator``) and the VAE encoder
(``ConvEncoder``) mirror it: stride-2 convolutions (or residual blocks) from ``size`` down to 4x4.

Widths and depths come from params: ``width`` is the channel count at the highest resolution
(doubling at each halving, capped at ``8 * width``), ``depth`` the number of convolutions (plain) or
residual blocks per resolution. ``blocks='residual'`` uses SNGAN-style residual up / down blocks
(Miyato et al., 2018); ``upsample='resize'`` doubles plain blocks by nearest-neighbour resize + 3x3
convolution instead of a stride-2 transposed convolution, which is what paints checkerboards (Odena et
al., 2016, "Deconvolution and Checkerboard Artifacts").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.params import GENERATOR_MODELS

MIN_SIZE = 8
MAX_CHANNEL_FACTOR = 8


@dataclass(frozen=True)
class GeneratorArch:
    """Everything needed to rebuild the sampling network from a checkpoint."""

    model: str
    size: int
    latent_dim: int
    g_width: int
    g_depth: int
    # defaults = the networks of checkpoints written before these fields existed
    blocks: str = "plain"
    upsample: str = "transposed"
    sample_steps: int = 0

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)

    @property
    def noise_dim(self) -> int:
        """Length of the noise vector the sampler maps to one image (a DDPM starts from a noise image)."""
        return 3 * self.size * self.size if self.model == "ddpm" else self.latent_dim


def n_resolution_steps(size: int) -> int:
    """How many times 4x4 is doubled to reach ``size``; ``size`` must be a power of two >= 8."""
    steps = math.log2(size / 4) if size > 0 else -1
    if size < MIN_SIZE or steps != int(steps):
        raise ValueError(f"image size must be a power of two >= {MIN_SIZE} (8, 16, 32, 64, 128, ...); got {size}")
    return int(steps)


def channels_at(width: int, halvings: int) -> int:
    """Channels of a block at resolution ``size / 2**halvings`` (halvings >= 1; 4x4 is the deepest)."""
    return width * min(2 ** (halvings - 1), MAX_CHANNEL_FACTOR)


def init_dcgan_weights(module: nn.Module) -> None:
    """Normal(0, 0.02) convolutions and linears, Normal(1, 0.02) norm scales (Radford et al., 2015)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            weight = getattr(m, "weight_orig", m.weight)  # spectral norm keeps the raw weight here
            nn.init.normal_(weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ConvGenerator(nn.Module):
    """z (B, latent_dim) -> image (B, 3, size, size) in [-1, 1]."""

    def __init__(
        self,
        latent_dim: int,
        size: int,
        width: int,
        depth: int = 1,
        blocks: str = "plain",
        upsample: str = "transposed",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"generator depth must be >= 1; got {depth}")
        steps = n_resolution_steps(size)
        self.latent_dim, self.size = latent_dim, size
        c0 = channels_at(width, steps)
        widths = [channels_at(width, max(h, 1)) for h in range(steps - 1, -1, -1)]  # 8x8 ... size
        if blocks == "residual":
            layers: list[nn.Module] = [nn.Unflatten(1, (latent_dim, 1, 1)), nn.ConvTranspose2d(latent_dim, c0, 4)]
            c_in = c0
            for c_out in widths:
                layers += [ResBlock(c_in, c_out, "up")] + [ResBlock(c_out, c_out) for _ in range(depth - 1)]
                c_in = c_out
            layers += [nn.BatchNorm2d(c_in), nn.ReLU(True), nn.Conv2d(c_in, 3, 3, 1, 1), nn.Tanh()]
        else:
            layers = [nn.Unflatten(1, (latent_dim, 1, 1)), nn.ConvTranspose2d(latent_dim, c0, 4, 1, 0, bias=False)]
            layers += [nn.BatchNorm2d(c0), nn.ReLU(True)] + _same_res_convs(c0, depth - 1, norm="batch", act=nn.ReLU)
            c_in = c0
            for c_out in widths[:-1]:
                layers += [_up(c_in, c_out, upsample, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
                layers += _same_res_convs(c_out, depth - 1, norm="batch", act=nn.ReLU)
                c_in = c_out
            layers += [_up(c_in, 3, upsample, bias=True), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self) if blocks == "plain" else init_residual_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.reshape(z.shape[0], self.latent_dim))


def _up(c_in: int, c_out: int, upsample: str, bias: bool) -> nn.Module:
    if upsample == "transposed":
        return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias)
    if upsample == "resize":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=bias))
    raise ValueError(f"upsample: got {upsample!r}; allowed: 'resize', 'transposed'")


class ResBlock(nn.Module):
    """Residual block (SNGAN / BigGAN style): pre-activation 3x3 convolutions plus a 1x1 shortcut.

    ``resample='up'`` (generator: nearest x2 before the first convolution), ``'down'`` (discriminator:
    2x2 average pooling after), None (same resolution). ``norm``: BatchNorm before each ReLU (generator;
    the discriminator has none). ``first``: no activation before the first convolution (D's input block).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        resample: str | None = None,
        sn: bool = False,
        first: bool = False,
        norm: bool = True,
    ) -> None:
        super().__init__()
        self.resample, self.first = resample, first
        self.norm1 = nn.BatchNorm2d(c_in) if norm else nn.Identity()
        self.norm2 = nn.BatchNorm2d(c_out) if norm else nn.Identity()
        self.conv1 = _maybe_sn(nn.Conv2d(c_in, c_out, 3, 1, 1), sn)
        self.conv2 = _maybe_sn(nn.Conv2d(c_out, c_out, 3, 1, 1), sn)
        self.skip = _maybe_sn(nn.Conv2d(c_in, c_out, 1), sn) if c_in != c_out or resample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(self.norm1(x))
        if self.resample == "up":
            h, x = F.interpolate(h, scale_factor=2.0), F.interpolate(x, scale_factor=2.0)
        h = self.conv2(F.relu(self.norm2(self.conv1(h))))
        if self.resample == "down":
            return F.avg_pool2d(h, 2) + F.avg_pool2d(self.skip(x), 2)
        return h + self.skip(x)


def _raw_weight(layer: nn.Module) -> torch.Tensor:
    """The trained weight tensor (spectral norm keeps it as ``weight_orig``)."""
    weight = getattr(layer, "weight_orig", None)
    weight = layer.weight if weight is None else weight
    assert isinstance(weight, torch.Tensor)
    return weight


def init_residual_weights(module: nn.Module) -> None:
    """Xavier-uniform convolutions (gain sqrt(2) in residual branches, 1 on shortcuts and heads), as in SNGAN."""
    for m in module.modules():
        if isinstance(m, ResBlock):
            for conv in (m.conv1, m.conv2):
                nn.init.xavier_uniform_(_raw_weight(conv), math.sqrt(2))
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)


def _same_res_convs(channels: int, n: int, norm: str, act: type[nn.Module], sn: bool = False) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for _ in range(n):
        layers.append(_maybe_sn(nn.Conv2d(channels, channels, 3, 1, 1, bias=norm == "none"), sn))
        layers += _norm(norm, channels)
        layers.append(act(0.2, True) if act is nn.LeakyReLU else act(True))
    return layers


def _maybe_sn(layer: nn.Module, sn: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer) if sn else layer


def _norm(kind: str, channels: int) -> list[nn.Module]:
    if kind == "batch":
        return [nn.BatchNorm2d(channels)]
    if kind == "layer":  # per-sample normalisation: keeps the WGAN-GP gradient penalty valid
        return [nn.GroupNorm(1, channels)]
    if kind == "none":
        return []
    raise ValueError(f"norm: got {kind!r}; allowed: 'batch', 'layer', 'none'")


class ConvFeatures(nn.Module):
    """image (B, 3, size, size) -> features (B, C, 4, 4): the shared trunk of critic and encoder."""

    def __init__(self, size: int, width: int, depth: int = 1, norm: str = "batch", sn: bool = False) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"discriminator/encoder depth must be >= 1; got {depth}")
        steps = n_resolution_steps(size)
        layers: list[nn.Module] = [_maybe_sn(nn.Conv2d(3, width, 4, 2, 1), sn), nn.LeakyReLU(0.2, True)]
        layers += _same_res_convs(width, depth - 1, norm=norm, act=nn.LeakyReLU, sn=sn)
        c_in = width
        for halvings in range(2, steps + 1):  # size / 4 ... 4x4
            c_out = channels_at(width, halvings)
            layers.append(_maybe_sn(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm == "none"), sn))
            layers += _norm(norm, c_out) + [nn.LeakyReLU(0.2, True)]
            layers += _same_res_convs(c_out, depth - 1, norm=norm, act=nn.LeakyReLU, sn=sn)
            c_in = c_out
        self.out_channels = c_in
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDiscriminator(nn.Module):
    """image -> one raw score per image (a logit for DCGAN, an unbounded critic value for WGAN-GP).

    ``blocks='residual'``: residual down blocks to 4x4, ReLU, a sum over positions and a linear head
    (no normalisation layers, so the WGAN-GP penalty stays per sample).
    """

    def __init__(
        self,
        size: int,
        width: int,
        depth: int = 1,
        norm: str = "batch",
        spectral_norm: bool = False,
        blocks: str = "plain",
    ):
        super().__init__()
        self.residual = blocks == "residual"
        if self.residual:
            steps = n_resolution_steps(size)
            layers: list[nn.Module] = []
            c_in = 3
            for halvings in range(1, steps + 1):  # size / 2 ... 4x4
                c_out = channels_at(width, halvings)
                layers.append(ResBlock(c_in, c_out, "down", spectral_norm, first=halvings == 1, norm=False))
                layers += [ResBlock(c_out, c_out, None, spectral_norm, norm=False) for _ in range(depth - 1)]
                c_in = c_out
            self.features: nn.Module = nn.Sequential(*layers)
            self.head: nn.Module = _maybe_sn(nn.Linear(c_in, 1), spectral_norm)
            init_residual_weights(self)
        else:
            self.features = ConvFeatures(size, width, depth, norm, spectral_norm)
            self.head = _maybe_sn(nn.Conv2d(self.features.out_channels, 1, 4, 1, 0), spectral_norm)
            init_dcgan_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return self.head(F.relu(self.features(x)).sum(dim=(2, 3))).flatten()
        return self.head(self.features(x)).flatten()


class ConvEncoder(nn.Module):
    """image -> (mu, logvar) of the VAE's approximate posterior."""

    def __init__(self, size: int, width: int, depth: int, latent_dim: int) -> None:
        super().__init__()
        self.features = ConvFeatures(size, width, depth, norm="batch")
        self.head = nn.Linear(self.features.out_channels * 16, 2 * latent_dim)
        init_dcgan_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.features(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)


class VAE(nn.Module):
    """Gaussian VAE; ``decoder`` is a ConvGenerator, so sampling works like the GANs' generator."""

    def __init__(
        self,
        latent_dim: int,
        size: int,
        g_width: int,
        g_depth: int,
        e_width: int,
        e_depth: int,
        blocks: str = "plain",
        upsample: str = "transposed",
    ):
        super().__init__()
        self.encoder = ConvEncoder(size, e_width, e_depth, latent_dim)
        self.decoder = ConvGenerator(latent_dim, size, g_width, g_depth, blocks, upsample)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, mu, logvar; ``noise`` ~ N(0, I) of shape (B, latent_dim) (reparameterisation)."""
        mu, logvar = self.encoder(x)
        z = mu + noise * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dims, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error summed over pixels, averaged over the batch (a Gaussian log-likelihood up to constants)."""
    return F.mse_loss(recon, x, reduction="none").flatten(1).sum(dim=1).mean()


def discriminator_norm(model: str, spectral_norm: bool) -> str:
    """WGAN-GP's critic gets per-sample (layer) norm; a spectrally normalised DCGAN D none; else batch norm."""
    if model == "wgan_gp":
        return "layer"
    return "none" if spectral_norm else "batch"


def build_generator(arch: GeneratorArch) -> nn.Module:
    """The sampling network of any model (for the VAE: its decoder; for the DDPM: U-Net + DDIM sampler)."""
    if arch.model not in GENERATOR_MODELS:
        raise ValueError(f"generator model: got {arch.model!r}; allowed: {', '.join(GENERATOR_MODELS)}")
    if arch.model == "ddpm":
        from models.diffusion import DiffusionSampler  # diffusers is imported only when a DDPM is used

        return DiffusionSampler(arch.size, arch.g_width, arch.g_depth, arch.sample_steps)
    return ConvGenerator(arch.latent_dim, arch.size, arch.g_width, arch.g_depth, arch.blocks, arch.upsample)
