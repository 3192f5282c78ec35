"""The app: Grad-CAM overlays, safe zips, scoring as predict does, generation, the CLI, and the page in chromium."""

from __future__ import annotations

import socket
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from app.limits import AppLimits, extract_zip
from app.service import Detector, Sampler, caption, describe_classifier, sheet
from app.ui import build_app, upload_paths
from classifier.checkpoint import load_model
from classifier.explain import gradcam, overlay, target_layer, threshold_logit
from classifier.metrics import calibrated
from classifier.predict import COLUMNS, FACE_COLUMNS, Predictor
from core.errors import InputError, MissingInputError
from core.params import FacesParams
from faces.crop import FaceCropper
from faces.detect import build_mtcnn
from models.classifier import ArchSpec, build_classifier
from models.generator import GeneratorArch, build_generator
from stages import app as app_cli
from stages import predict
from tests.classifier_fixtures import synthetic_face
from tests.test_predict import CentreBoxDetector, astronauts, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
CHROMIUM = Path("/usr/bin/chromium")
FACES = FacesParams(crop_size=32, detect_side=64, device="cpu")


@pytest.fixture
def detector(tmp_path: Path) -> Detector:
    write_checkpoint(tmp_path / "model.pt", FACES, min_side=32)
    model, ckpt = load_model(tmp_path / "model.pt")
    cropper = FaceCropper(FACES, device=CPU, detector=CentreBoxDetector())
    return Detector(Predictor(model, ckpt, cropper, CPU, every_face=True), AppLimits(max_pixels=200 * 200, max_files=5))


def face_png(path: Path, side: int = 128, seed: int = 0) -> Path:
    Image.fromarray(synthetic_face(np.random.default_rng(seed), True, side)).save(path)
    return path


def test_gradcam_heatmaps_are_normalised_and_follow_the_decision() -> None:
    spec = ArchSpec("cnn", 0.0, 2, 8, "residual")
    model = build_classifier(spec).eval()
    torch.nn.init.normal_(model.head[1].weight, std=1.0)
    assert target_layer(model) is model.backbone.features[-1]
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    maps = gradcam(model, pixels, (0.5,) * 3, (0.5,) * 3, CPU, threshold_logit=-1e6)  # all explained as fake
    assert maps.shape == (3, 32, 32) and maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(maps, gradcam(model, pixels, (0.5,) * 3, (0.5,) * 3, CPU, -1e6), atol=1e-6)
    # explaining the other class (all called real) highlights other regions
    other = gradcam(model, pixels, (0.5,) * 3, (0.5,) * 3, CPU, threshold_logit=1e6)
    assert not np.allclose(maps, other)
    image = overlay(pixels[0], maps[0], side=64)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert target_layer(build_classifier(ArchSpec("resnet18", 0.0, 2, 8, "plain"))).__class__.__name__ == "Sequential"
    assert threshold_logit(0.5, 2.0) == pytest.approx(0.0)
    assert calibrated(np.array([threshold_logit(0.8, 1.7)]), 1.7)[0] == pytest.approx(0.8)


def test_zip_members_outside_the_folder_are_refused(tmp_path: Path) -> None:
    limits = AppLimits()
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("a/face.png", face_png(tmp_path / "f.png").read_bytes())
        z.writestr("notes.txt", "not an image")
        z.writestr("__MACOSX/._face.png", b"resource fork")
    files = extract_zip(good, tmp_path / "out", limits)
    assert [f.relative_to((tmp_path / "out").resolve()).as_posix() for f in files] == ["a/face.png"]
    for evil in ("../escape.png", "/abs/escape.png", "a/../../escape.png"):
        bad = tmp_path / "bad.zip"
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr(evil, b"x")
        with pytest.raises(InputError, match="outside the archive"):
            extract_zip(bad, tmp_path / "out2", limits)
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "out2").exists()
    (tmp_path / "broken.zip").write_bytes(b"PK nonsense")
    with pytest.raises(InputError, match="not a readable zip"):
        extract_zip(tmp_path / "broken.zip", tmp_path / "out3", limits)
    with pytest.raises(InputError, match="2 images in one request; the app takes 1"):
        upload_paths([str(good), str(tmp_path / "f.png")], tmp_path / "req", AppLimits(max_files=1))


def test_detector_scores_as_predict_does_and_explains_every_problem(detector: Detector, tmp_path: Path) -> None:
    files = [face_png(tmp_path / "face.png"), tmp_path / "black.png", tmp_path / "broken.jpg", tmp_path / "big.png"]
    Image.new("RGB", (64, 64)).save(files[1])
    files[2].write_bytes(b"not an image at all")
    face_png(files[3], side=256)  # over the 200 x 200 pixel cap of the fixture
    result = detector.score(files, [f.name for f in files])
    table = result.table
    assert list(table.columns) == FACE_COLUMNS and list(table["file"]) == [f.name for f in files]
    assert list(table["face"]) == [0, "", "", ""]  # one face, then files without one: one row each
    assert list(table["status"]) == ["ok", "no_face", "unreadable", "unreadable"]
    assert "over the app's cap of 40,000" in table["reason"].iloc[3]
    p = detector.predictor
    (expected,) = Predictor(p.model, p.ckpt, p.cropper, CPU).files(files[:1])
    assert table["prob_fake"].iloc[0] == round(expected.prob_fake or -1, 6)
    assert len(result.gallery) == 1 and result.gallery[0][0].size == (520, 256)
    assert result.gallery[0][1].startswith("face.png face 0: p(fake) ")
    picture = sheet(result.gallery + result.gallery)
    assert picture is not None and picture.size == (520, 2 * (256 + 22)) and sheet([]) is None
    assert [m.split(":")[0] for m in result.messages] == ["black.png", "broken.jpg", "big.png"]


def test_detector_shows_every_face_of_a_photo(tmp_path: Path) -> None:
    faces = FacesParams(crop_size=32, device="cpu")
    write_checkpoint(tmp_path / "model.pt", faces, min_side=32)
    model, ckpt = load_model(tmp_path / "model.pt")
    cropper = FaceCropper(faces, device=CPU, detector=build_mtcnn(faces.min_face, CPU))
    files = [tmp_path / n for n in ("two.png", "one.png", "none.png")]
    for image, f in zip(astronauts(), files):
        image.save(f)
    result = Detector(Predictor(model, ckpt, cropper, CPU, every_face=True), AppLimits()).score(
        files, [f.name for f in files]
    )
    table = result.table
    assert list(table["file"]) == ["two.png", "two.png", "one.png", "none.png"]
    assert list(table["face"]) == [0, 1, 0, ""] and list(table["status"]) == ["ok", "ok", "ok", "no_face"]
    assert table["box_x1"].iloc[0] != table["box_x1"].iloc[1]  # two faces, two boxes
    captions = [c for _, c in result.gallery]
    assert [c.split(":")[0] for c in captions] == ["two.png face 0", "two.png face 1", "one.png face 0"]
    first, second = (np.asarray(im) for im, _ in result.gallery[:2])
    assert first.shape == second.shape and not np.array_equal(first, second)  # each its own box and Grad-CAM
    assert [m.split(":")[0] for m in result.messages] == ["none.png"]
    best = Detector(Predictor(model, ckpt, cropper, CPU), AppLimits()).score(files, [f.name for f in files])
    assert list(best.table.columns) == COLUMNS and list(best.table["file"]) == ["two.png", "one.png", "none.png"]
    assert best.table["prob_fake"].iloc[0] == table["prob_fake"].iloc[0]


def test_caption_shows_every_column_predict_adds() -> None:
    row = {c: "" for c in COLUMNS} | {"file": "/x/a.png", "prob_fake": 0.91, "predicted": "fake"}
    assert caption(row) == "a.png: p(fake) 0.91 → fake"
    row |= {"uncertainty": 0.12, "prediction_set": "real|fake"}
    assert caption(row) == "a.png: p(fake) 0.91 → fake; uncertainty 0.12; prediction_set real|fake"


def test_sampler_interpolates_from_one_seed_to_the_other() -> None:
    torch.manual_seed(0)
    sampler = Sampler(build_generator(GeneratorArch("dcgan", 16, 8, 8, 2)), 8, CPU)
    walk = sampler.interpolate(3, 5, 4)
    assert len(walk) == 4 and walk[0].size == (16, 16)
    for image, seed in ((walk[0], 3), (walk[-1], 5)):
        diff = np.abs(np.asarray(image, dtype=int) - np.asarray(sampler.sample(seed, 1)[0], dtype=int))
        assert diff.max() <= 1  # the same latent; float rounding at most
    assert not np.array_equal(np.asarray(walk[1]), np.asarray(walk[0]))


def test_model_description_names_run_experiment_and_test_auc(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "model.pt", FACES)
    _, ckpt = load_model(tmp_path / "model.pt")
    (tmp_path / "params.yaml").write_text("data:\n  source: synthetic\n")
    text = describe_classifier(tmp_path / "model.pt", ckpt, tmp_path / "metrics.json", tmp_path / "params.yaml")
    assert "not evaluated yet" in text and "data source `synthetic`" in text and "not recorded" in text
    (tmp_path / "metrics.json").write_text('{"test": {"roc_auc": 0.8123}}')
    assert "test ROC-AUC 0.8123" in describe_classifier(
        tmp_path / "model.pt", ckpt, tmp_path / "metrics.json", tmp_path / "params.yaml"
    )


def test_cli_without_a_checkpoint_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="no classifier checkpoint") as err:
        app_cli.main(["--classifier", str(tmp_path / "none.pt")])
    assert "make demo" in err.value.hint
    with pytest.raises(SystemExit):
        app_cli.main(["--max-pixels", "0"])


def test_predict_explain_writes_an_overlay_per_scored_face(in_tmp_project: Path) -> None:
    write_checkpoint(in_tmp_project / "results/classifier/model.pt", FacesParams(crop_size=64, on_miss="center"))
    face_png(in_tmp_project / "a.png", side=96)
    (in_tmp_project / "b.jpg").write_bytes(b"garbage")
    assert predict.main(["a.png", "b.jpg", "--device", "cpu", "--explain", "heat"]) == 0
    (written,) = sorted((in_tmp_project / "heat").iterdir())
    assert written.name == "0000_a.png" and Image.open(written).size == (256, 256)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_the_real_app_in_chromium(detector: Detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Upload a face photo in Debian's chromium; the score, the heatmap and the CSV come back on the page."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install chromium): the browser test needs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    sampler = Sampler(build_generator(GeneratorArch("dcgan", 16, 8, 8, 2)), 8, CPU)
    page_app = build_app(detector, sampler, "**Classifier** test checkpoint", tmp_path / "scratch")
    (tmp_path / "scratch").mkdir()
    port = free_port()
    page_app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    photo = face_png(tmp_path / "portrait.png", side=160, seed=3)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.locator("#uploads input[type=file]").set_input_files(str(photo))
            page.locator("#detect").click()
            heat = page.locator("#heatmaps img").first
            heat.wait_for(state="visible", timeout=60_000)
            summary = page.locator("#summary").inner_text(timeout=60_000)
            heat_width = heat.evaluate("img => img.complete ? img.naturalWidth : 0")
            table_text = page.locator("#table").inner_text()
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            page.get_by_role("tab", name="Generate").click()
            page.locator("#sample").click()
            page.locator("#samples img").first.wait_for(state="visible", timeout=60_000)
            n_samples = page.locator("#samples img").count()
            browser.close()
    finally:
        page_app.close()
    expected = detector.score([photo], [photo.name]).table
    score = f"{expected['prob_fake'].iloc[0]}"
    assert "1 face(s) scored" in summary and f"portrait.png face 0: p(fake) {score}" in summary
    assert "portrait.png" in table_text and score in table_text
    assert heat_width == 520, "the box + Grad-CAM picture did not load"  # 2 x 256 px + 8 px gap
    assert n_samples == 8, "the Generate tab did not show its 8 default samples"
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert shot.stat().st_size > 10_000 and pixels.std() > 10, "the screenshot is blank"
    assert pd.notna(expected["prob_fake"].iloc[0])
