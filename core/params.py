"""Typed access to params.yaml: one frozen dataclass per block, validated on load (core.paramfile).

A stage calls ``load_block("faces", FacesParams)`` and gets a frozen dataclass or a
``ParamsError`` that names the bad key and what it accepts. The defaults here are params.yaml's
values (tests/test_params_defaults.py checks every block), and the lists of choices here are the only
ones: ``models/`` and the training code import them (the core imports no other package).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.paramfile import (
    PARAMS_FILE,
    ParamsError,
    as_dict,
    bounded,
    choice,
    load_block,
    parse_block,
    read_params,
)
from core.schema import LABELS, REAL

__all__ = ["PARAMS_FILE", "ParamsError", "as_dict", "load_block", "parse_block", "read_params"]  # and the blocks


@dataclass(frozen=True)
class DataParams:
    source: str = "hf"
    per_source: int | Literal["all"] = 250
    seed: int = 0
    hf_repo: str = "OpenRL/DeepFakeFace"
    hf_revision: str = "eb2a54fbf2567790bd3dc61d09fdaade6bb6c31c"  # the DFF commit the zip sizes are checked against
    workers: int = bounded(8, 1, 64)
    retries: int = bounded(4, 1, 20)
    requests_per_minute: int = bounded(500, 1, 100_000)  # Hub range reads; anonymous limit ~3000 per 5 min
    min_side: int = bounded(64, 1)
    synthetic_identities: int = bounded(48, 4)

    def __post_init__(self) -> None:
        if not (self.source in ("hf", "synthetic") or self.source.startswith("folder:")):
            raise ParamsError(f"data.source: got {self.source!r}; allowed: 'hf', 'synthetic' or 'folder:<path>'")
        if self.source.startswith("folder:") and not self.source[len("folder:") :].strip():
            raise ParamsError("data.source: 'folder:' needs a path, e.g. 'folder:../shared/data/hardfakevsreal'")
        if self.per_source != "all" and (not isinstance(self.per_source, int) or self.per_source < 1):
            raise ParamsError(f"data.per_source: got {self.per_source!r}; allowed: a positive integer or 'all'")

    @property
    def folder(self) -> Path | None:
        return Path(self.source[len("folder:") :]).expanduser() if self.source.startswith("folder:") else None


GRAYSCALE_MODES = ("match", "drop", "keep")  # faces.grayscale, see faces.grayscale


@dataclass(frozen=True)
class FacesParams:
    crop_size: int = bounded(128, 16, 1024)
    margin: float = bounded(-0.3, -0.5, 2.0)
    min_prob: float = bounded(0.90, 0.0, 1.0)
    on_miss: str = choice("drop", "center", default="drop")
    detect_side: int = bounded(256, 64, 4096)
    batch_size: int = bounded(16, 1, 1024)
    encoding: str = choice("png", "jpeg", default="png")
    jpeg_quality: int = bounded(95, 1, 100)
    device: str = choice("auto", "cpu", "cuda", default="auto")
    min_face: int = bounded(20, 8, 4096)
    threads: int = bounded(1, 0, 256)
    workers: int = bounded(0, 0, 256)
    grayscale: str = choice(*GRAYSCALE_MODES, default="match")
    framing_views: int = bounded(2, 0, 16)
    framing_min: float = bounded(0.6, 0.1, 1.0)


@dataclass(frozen=True)
class SplitParams:
    protocol: str = choice("random", "predefined", "leave_one_generator_out", default="random")
    holdout_generator: str = ""
    train: float = bounded(0.60, 0.0, 1.0)
    val: float = bounded(0.15, 0.0, 1.0)
    calib: float = bounded(0.10, 0.0, 1.0)  # conformal calibration: no training, early stopping or threshold
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train + self.val + self.calib >= 1.0:
            raise ParamsError(
                "split.train + split.val + split.calib must be < 1 (the rest is test); "
                f"got {self.train} + {self.val} + {self.calib}"
            )
        if self.protocol == "leave_one_generator_out" and not self.holdout_generator:
            raise ParamsError("split.holdout_generator: required when split.protocol is leave_one_generator_out")


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = "deepfake-pipeline"
    note: str = ""


# torchvision backbones and the from-scratch CNN; models.classifier builds each (tests/test_params_defaults.py)
CLASSIFIER_ARCHS = ("mobilenet_v2", "resnet18", "efficientnet_b0", "cnn")
# where the classifier's backbone starts: ImageNet weights, the pretrain stage's encoder, or random
CLASSIFIER_INITS = ("imagenet", "ssl", "none")


@dataclass(frozen=True)
class ClassifierParams:
    arch: str = choice(*CLASSIFIER_ARCHS, default="mobilenet_v2")
    init: str = choice(*CLASSIFIER_INITS, default="imagenet")
    label_fraction: float = bounded(1.0, 0.01, 1.0)
    linear_probe: bool = False
    freeze_backbone_epochs: int = bounded(1, 0, 1000)
    image_size: int = bounded(128, 16, 1024)
    cnn_depth: int = bounded(4, 1, 8)
    cnn_width: int = bounded(32, 4, 512)
    cnn_block: str = choice("residual", "plain", default="residual")
    dropout: float = bounded(0.2, 0.0, 0.9)
    ensemble: int = bounded(2, 1, 32)  # members trained in turn (seeds seed, seed+1, ...), each max_minutes / N
    epochs: int = bounded(6, 1, 1000)
    batch_size: int = bounded(32, 2, 4096)
    lr: float = bounded(1e-3, 1e-7, 1.0)
    weight_decay: float = bounded(0.05, 0.0, 1.0)
    schedule: str = choice("cosine", "onecycle", default="cosine")
    label_smoothing: float = bounded(0.05, 0.0, 0.5)
    class_weighting: str = choice("auto", "balanced", "none", default="auto")
    early_stopping_patience: int = bounded(3, 0, 1000)
    max_minutes: float = bounded(10.0, 0.0)
    threshold_rule: str = choice("youden", "f1", "eer", default="youden")
    aug_flip: float = bounded(0.5, 0.0, 1.0)
    aug_color_jitter: float = bounded(0.2, 0.0, 1.0)
    aug_crop_scale: float = bounded(0.8, 0.1, 1.0)
    aug_jpeg_prob: float = bounded(0.3, 0.0, 1.0)
    aug_jpeg_quality: int = bounded(60, 1, 100)
    aug_blur_prob: float = bounded(0.1, 0.0, 1.0)
    aug_blur_sigma: float = bounded(1.0, 0.1, 10.0)
    aug_noise_prob: float = bounded(0.1, 0.0, 1.0)
    aug_noise_std: float = bounded(0.02, 0.0, 1.0)
    aug_grayscale: float = bounded(0.1, 0.0, 1.0)
    amp: bool = True
    device: str = choice("auto", "cpu", "cuda", default="auto")
    threads: int = bounded(0, 0, 256)
    processes: int = bounded(1, 0, 64)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch == "cnn" and self.init == "imagenet":
            raise ParamsError(
                "classifier.init: got 'imagenet' with arch 'cnn'; the from-scratch CNN has no ImageNet "
                "weights: set classifier.init: none or ssl (or pick arch mobilenet_v2, resnet18 or efficientnet_b0)"
            )


@dataclass(frozen=True)
class PretrainParams:
    arch: str = choice(*CLASSIFIER_ARCHS, default="mobilenet_v2")  # must be classifier.arch to load it there
    cnn_depth: int = bounded(4, 1, 8)
    cnn_width: int = bounded(32, 4, 512)
    cnn_block: str = choice("residual", "plain", default="residual")
    start: str = choice("none", "imagenet", default="none")
    extra_folder: str = ""
    image_size: int = bounded(64, 16, 1024)
    epochs: int = bounded(30, 1, 100_000)
    batch_size: int = bounded(128, 4, 8192)
    lr: float = bounded(1e-3, 1e-7, 1.0)
    weight_decay: float = bounded(1e-4, 0.0, 1.0)
    temperature: float = bounded(0.2, 0.01, 10.0)
    proj_hidden: int = bounded(512, 8, 8192)
    proj_dim: int = bounded(128, 8, 4096)
    aug_crop_scale: float = bounded(0.4, 0.05, 1.0)
    aug_flip: float = bounded(0.5, 0.0, 1.0)
    aug_color_prob: float = bounded(0.8, 0.0, 1.0)
    aug_color_jitter: float = bounded(0.4, 0.0, 1.0)
    aug_grayscale: float = bounded(0.2, 0.0, 1.0)
    aug_blur_prob: float = bounded(0.0, 0.0, 1.0)
    aug_blur_sigma: float = bounded(1.5, 0.1, 10.0)
    aug_jpeg_prob: float = bounded(0.0, 0.0, 1.0)
    aug_jpeg_quality: int = bounded(60, 1, 100)
    probe_k: int = bounded(20, 1, 1000)
    max_minutes: float = bounded(10.0, 0.0)
    amp: bool = True
    device: str = choice("auto", "cpu", "cuda", default="auto")
    threads: int = bounded(0, 0, 256)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch == "cnn" and self.start == "imagenet":
            raise ParamsError(
                "pretrain.start: got 'imagenet' with arch 'cnn'; the CNN has no ImageNet weights: use none"
            )


# conformal calibration: per true class (class-conditional coverage) or over all calibration rows
CONFORMAL_MODES = ("mondrian", "marginal")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = bounded(64, 1, 4096)
    ece_bins: int = bounded(15, 2, 100)
    worst_k: int = bounded(16, 0, 256)
    robust_jpeg_quality: int = bounded(50, 1, 100)
    robust_blur_sigma: float = bounded(1.5, 0.1, 10.0)
    robust_downscale: float = bounded(0.5, 0.05, 1.0)
    robust_noise_std: float = bounded(0.05, 0.0, 1.0)
    audit_warn_auc: float = bounded(0.75, 0.5, 1.0)  # shortcut warning: a feature's test AUC >= this or <= 1 - this
    counterfactual: bool = True
    counterfactual_stretch: float = bounded(1.3, 0.2, 5.0)
    counterfactual_max_auc_drop: float = bounded(0.05, 0.0, 1.0)
    counterfactual_max_rate_drop: float = bounded(0.10, 0.0, 1.0)
    mc_dropout_passes: int = bounded(20, 0, 1000)  # dropout kept on at inference (0 = off)
    alpha: float = bounded(0.1, 0.0, 0.5)  # conformal sets cover the true label with probability >= 1 - alpha
    conformal: str = choice(*CONFORMAL_MODES, default="mondrian")
    device: str = choice("auto", "cpu", "cuda", default="auto")
    threads: int = bounded(0, 0, 256)
    seed: int = 0


FEDERATED_PARTITIONS = ("by_generator", "iid", "dirichlet")  # federated.partition
FEDERATED_STRATEGIES = ("fedavg", "fedprox")  # federated.server builds each from Flower
FEDERATED_DP = ("none", "server_clipping")  # Flower's central DP wrapper with server-side fixed clipping


@dataclass(frozen=True)
class FederatedParams:
    partition: str = choice(*FEDERATED_PARTITIONS, default="by_generator")
    dirichlet_alpha: float = bounded(0.5, 0.01, 1000.0)
    num_clients: int = bounded(3, 1, 1000)
    rounds: int = bounded(4, 1, 10_000)
    local_epochs: int = bounded(1, 1, 1000)
    fraction_fit: float = bounded(1.0, 0.01, 1.0)
    strategy: str = choice(*FEDERATED_STRATEGIES, default="fedavg")
    proximal_mu: float = bounded(0.01, 0.0, 100.0)
    dp: str = choice(*FEDERATED_DP, default="none")
    dp_noise_multiplier: float = bounded(1.0, 0.0, 100.0)
    dp_clipping_norm: float = bounded(10.0, 1e-6)
    dp_delta: float = bounded(1e-5, 1e-12, 0.5)
    baselines: bool = True
    arch: str = choice(*CLASSIFIER_ARCHS, default="mobilenet_v2")
    init: str = choice("imagenet", "none", default="imagenet")
    image_size: int = bounded(128, 16, 1024)
    cnn_depth: int = bounded(4, 1, 8)
    cnn_width: int = bounded(32, 4, 512)
    batch_size: int = bounded(32, 2, 4096)
    lr: float = bounded(1e-3, 1e-7, 1.0)
    weight_decay: float = bounded(0.05, 0.0, 1.0)
    augment: bool = True
    threshold_rule: str = choice("youden", "f1", "eer", default="youden")
    cpus: int = bounded(2, 1, 1024)
    object_store_mb: int = bounded(100, 80, 1_000_000)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch == "cnn" and self.init != "none":
            raise ParamsError(f"federated.init: got {self.init!r} with arch 'cnn'; set it to none")
        if self.dp != "none" and self.dp_noise_multiplier <= 0:
            raise ParamsError(
                "federated.dp_noise_multiplier: must be > 0 when federated.dp is on (epsilon is infinite)"
            )


GENERATOR_MODELS = ("vae", "dcgan", "wgan_gp", "ddpm")  # models.generator / models.diffusion, generator.trainers
GENERATOR_BLOCKS = ("residual", "plain")  # models.generator: GAN / VAE-decoder blocks
GENERATOR_UPSAMPLE = ("resize", "transposed")  # models.generator: plain blocks' upsampling
GAN_LOSSES = ("hinge", "nonsaturating")  # generator.trainers: dcgan's loss
GENERATOR_TRAIN_ON = (*LABELS, "all")  # one label's faces, or all
DIFFAUGMENT_OPS = ("translation", "color", "cutout")  # generator.augment implements each


@dataclass(frozen=True)
class GeneratorParams:
    model: str = choice(*GENERATOR_MODELS, default="dcgan")
    image_size: int = bounded(32, 8, 512)
    train_on: str = choice(*GENERATOR_TRAIN_ON, default=REAL)
    latent_dim: int = bounded(64, 2, 2048)
    g_width: int = bounded(32, 2, 1024)
    g_depth: int = bounded(1, 1, 8)
    d_width: int = bounded(32, 2, 1024)
    d_depth: int = bounded(1, 1, 8)
    blocks: str = choice(*GENERATOR_BLOCKS, default="plain")
    upsample: str = choice(*GENERATOR_UPSAMPLE, default="resize")
    loss: str = choice(*GAN_LOSSES, default="hinge")
    epochs: int = bounded(1000, 1, 100000)
    batch_size: int = bounded(32, 2, 4096)
    lr_g: float = bounded(4e-4, 1e-7, 1.0)
    lr_d: float = bounded(4e-4, 1e-7, 1.0)
    beta1: float = bounded(0.0, 0.0, 0.999)
    beta2: float = bounded(0.99, 0.0, 0.9999)
    spectral_norm: bool = True
    label_smoothing: float = bounded(0.1, 0.0, 0.5)
    instance_noise: float = bounded(0.0, 0.0, 2.0)
    n_critic: int | Literal["auto"] = bounded("auto", 1, 50)  # type: ignore[arg-type]
    gp_weight: float = bounded(10.0, 0.0, 1000.0)
    r1_gamma: float = bounded(0.0, 0.0, 1000.0)
    r1_every: int = bounded(4, 1, 1000)
    ema_decay: float = bounded(0.999, 0.0, 0.99999)
    augment: str = "translation,color,cutout"
    hflip: bool = True
    kl_weight: float = bounded(1.0, 0.0, 1000.0)
    sample_steps: int = bounded(25, 1, 1000)
    amp: bool = True
    max_minutes: float = bounded(10.0, 0.0)
    grid_size: int = bounded(8, 1, 32)
    fd_every_epochs: int = bounded(100, 0, 100_000)
    fd_every_samples: int = bounded(128, 2, 100_000)
    device: str = choice("auto", "cpu", "cuda", default="auto")
    threads: int = bounded(0, 0, 256)
    processes: int = bounded(1, 0, 64)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size & (self.image_size - 1):
            raise ParamsError(
                f"generator.image_size: got {self.image_size}; allowed: a power of two (8, 16, 32, 64, 128, 256)"
            )
        unknown = [op for op in self.augment_ops if op not in DIFFAUGMENT_OPS]
        if unknown:
            raise ParamsError(
                f"generator.augment: unknown operation {unknown[0]!r}; allowed: a comma-separated "
                f"subset of {', '.join(DIFFAUGMENT_OPS)}, or '' for none"
            )

    @property
    def augment_ops(self) -> tuple[str, ...]:
        return tuple(op.strip() for op in self.augment.split(",") if op.strip())

    @property
    def critic_steps(self) -> int:
        """Discriminator updates per generator update ('auto': 5 for WGAN-GP, 1 otherwise)."""
        if self.n_critic == "auto":
            return 5 if self.model == "wgan_gp" else 1
        return int(self.n_critic)


@dataclass(frozen=True)
class FidParams:
    n_samples: int = bounded(500, 2, 1_000_000)
    batch_size: int = bounded(50, 1, 4096)
    kid_subset_size: int = bounded(100, 2, 100_000)
    kid_subsets: int = bounded(100, 1, 10_000)
    precision_recall: bool = True
    prc_neighborhood: int = bounded(3, 1, 100)
    inception_weights: str = ""
    references: bool = True
    seed: int = 0


def _names(*names: str) -> Any:
    """A list-of-strings field (metric names, artifact patterns) with a default."""
    return field(default_factory=lambda: list(names))


@dataclass(frozen=True)
class ReportParams:
    title: str = "Results"
    experiment: str = ""  # "" = tracking.experiment
    classifier_metrics: list[str] = _names("roc_auc", "f1", "ece", "accuracy")
    classifier_primary: str = "roc_auc"
    generator_metrics: list[str] = _names("fid", "kid", "fd_mobilenet")
    generator_primary: str = "fid"
    lower_is_better: list[str] = _names("ece", "brier", "eer", "log_loss", "fid", "kid", "fd_mobilenet")
    classifier_curves: list[str] = _names("train_loss", "val_loss", "train_roc_auc", "val_roc_auc")
    generator_curves: list[str] = _names()
    curve_exclude: list[str] = _names("lr*", "*seconds*", "*_per_s", "*frozen*", "epoch*", "best_*", "final_*")
    roc_artifacts: list[str] = _names("*roc*.csv")
    confusion_artifacts: list[str] = _names("*confusion*.png")
    misclassified_artifacts: list[str] = _names("*misclassified*.png", "*worst*.png")
    sample_artifacts: list[str] = _names("*epoch*.png")
    grid_epochs: int = bounded(6, 1, 50)
    max_curves: int = bounded(10, 1, 200)
    dvc_exp_show: bool = True
    dvc_timeout_s: float = bounded(60.0, 1.0, 3600.0)

    def __post_init__(self) -> None:
        for track in ("classifier", "generator"):
            names, primary = getattr(self, f"{track}_metrics"), getattr(self, f"{track}_primary")
            if not names:
                raise ParamsError(f"report.{track}_metrics: empty; list at least one metric name")
            if primary not in names:
                raise ParamsError(
                    f"report.{track}_primary: got {primary!r}; allowed: one of "
                    f"report.{track}_metrics ({', '.join(map(repr, names))})"
                )
