"""predict CLI: per-file status, scores with the checkpoint's calibration, faces params of training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from classifier.checkpoint import ClassifierCheckpoint, load_model, save_checkpoint
from classifier.infer import infer_logits
from classifier.metrics import calibrated
from classifier.predict import FACE_COLUMNS, Predictor, collect_files, faces_params_for
from core.errors import InputError
from core.images import square_pixels
from core.params import FacesParams, as_dict
from faces.crop import FaceCropper
from faces.detect import build_mtcnn
from models.classifier import ArchSpec, build_classifier
from stages import predict
from tests.classifier_fixtures import synthetic_face
from tests.conftest import SHARED_DATA
from tests.test_faces import two_faces

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


class CentreBoxDetector:
    """Stands in for MTCNN: a face box in the middle of every non-black image, none on black ones."""

    def detect(self, canvas: np.ndarray) -> tuple[list, list]:
        boxes, probs = [], []
        for img in canvas:
            ys, xs = np.nonzero(img.max(axis=2))
            if len(xs) == 0 or img.mean() < 2:
                boxes.append(None)
                probs.append([None])
                continue
            x2, y2 = xs.max() + 1, ys.max() + 1
            boxes.append(np.array([[x2 * 0.25, y2 * 0.25, x2 * 0.75, y2 * 0.75]]))
            probs.append(np.array([0.99]))
        return boxes, probs


class TwoBoxDetector:
    """Stands in for MTCNN: two faces (left and right half) in every image, the left one more probable."""

    def detect(self, canvas: np.ndarray) -> tuple[list, list]:
        side = canvas.shape[1]
        two = np.array([[0.55, 0.3, 0.95, 0.7], [0.05, 0.3, 0.4, 0.7]]) * side  # MTCNN's order: not by probability
        return [two for _ in canvas], [np.array([0.95, 0.99]) for _ in canvas]


def write_checkpoint(
    path: Path, faces: FacesParams, threshold: float = 0.5, temperature: float = 1.5, min_side: int | None = None
) -> None:
    """A small checkpoint; ``min_side`` None: one from before data.min_side was recorded."""
    torch.manual_seed(0)
    spec = ArchSpec("cnn", 0.0, 1, 4, "plain")
    model = build_classifier(spec)
    torch.nn.init.normal_(model.head[1].weight, std=1.0)
    info = {} if min_side is None else {"min_side": min_side}
    save_checkpoint(
        path,
        ClassifierCheckpoint(
            model.state_dict(),
            spec.to_dict(),
            temperature,
            threshold,
            "youden",
            [0.5] * 3,
            [0.5] * 3,
            32,
            as_dict(faces),
            info,
        ),
    )


def image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "inbox"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(synthetic_face(rng, False, 96)).save(folder / "a_real.png")
    Image.fromarray(synthetic_face(rng, True, 80)).save(folder / "b_fake.jpg", quality=90)
    Image.fromarray(synthetic_face(rng, True, 64)).save(folder / "nested" / "c.webp")
    Image.new("RGB", (64, 64)).save(folder / "d_black.png")
    (folder / "e_corrupt.jpg").write_bytes(b"definitely not an image")
    good = (folder / "a_real.png").read_bytes()
    (folder / "f_truncated.png").write_bytes(good[: len(good) // 3])
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_collect_files_recurses_and_ignores_non_images(tmp_path: Path) -> None:
    folder = image_folder(tmp_path)
    files, ignored = collect_files([folder, folder / "a_real.png", tmp_path / "missing.png"])
    names = [f.name for f in files]
    assert names == [
        "a_real.png",
        "b_fake.jpg",
        "d_black.png",
        "e_corrupt.jpg",
        "f_truncated.png",
        "c.webp",
        "missing.png",
    ]
    assert ignored == 1


def test_predict_folder_reports_corrupt_files_and_scores_the_rest(tmp_path: Path) -> None:
    faces = FacesParams(crop_size=32, detect_side=64, batch_size=4, device="cpu")
    write_checkpoint(tmp_path / "model.pt", faces)
    model, ckpt = load_model(tmp_path / "model.pt")
    cropper = FaceCropper(faces, device=CPU, detector=CentreBoxDetector())
    files, _ = collect_files([image_folder(tmp_path), tmp_path / "missing.png"])
    preds = {Path(p.file).name: p for p in Predictor(model, ckpt, cropper, CPU, batch_size=3).files(files)}
    assert {n: p.status for n, p in preds.items()} == {
        "a_real.png": "ok",
        "b_fake.jpg": "ok",
        "c.webp": "ok",
        "d_black.png": "no_face",
        "e_corrupt.jpg": "unreadable",
        "f_truncated.png": "unreadable",
        "missing.png": "unreadable",
    }
    assert "not an image" in preds["e_corrupt.jpg"].reason
    assert "corrupt or truncated" in preds["f_truncated.png"].reason
    assert preds["missing.png"].reason == "no such file"
    assert preds["d_black.png"].prob_fake is None and preds["d_black.png"].reason == "no face detected"
    for name in ("a_real.png", "b_fake.jpg", "c.webp"):
        p = preds[name]
        assert 0.0 <= p.prob_fake <= 1.0 and p.predicted == ("fake" if p.prob_fake >= 0.5 else "real")
        assert p.box is not None and p.face_prob == pytest.approx(0.99)
    # the score is the calibrated probability of the crop the faces stage would have stored
    crop = cropper.crop([Image.open(files[0]).convert("RGB")])[0].image
    pixels = square_pixels(crop, 32)[None]
    logit = infer_logits(model, pixels, 1, CPU, tuple(ckpt.mean), tuple(ckpt.std))
    assert preds["a_real.png"].prob_fake == pytest.approx(float(calibrated(logit, 1.5)[0]), abs=1e-5)


def test_on_miss_center_scores_a_centred_crop(tmp_path: Path) -> None:
    faces = FacesParams(crop_size=32, detect_side=64, on_miss="center", device="cpu")
    write_checkpoint(tmp_path / "model.pt", faces, min_side=32)
    model, ckpt = load_model(tmp_path / "model.pt")
    Image.new("RGB", (50, 40)).save(tmp_path / "black.png")
    cropper = FaceCropper(faces, device=CPU, detector=CentreBoxDetector())
    (pred,) = Predictor(model, ckpt, cropper, CPU).files([tmp_path / "black.png"])
    assert pred.status == "no_face" and "centred crop" in pred.reason and pred.prob_fake is not None


def test_faces_params_come_from_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained = FacesParams(crop_size=32, margin=0.6, min_prob=0.8)
    write_checkpoint(tmp_path / "model.pt", trained)
    _, ckpt = load_model(tmp_path / "model.pt")
    params, origin = faces_params_for(ckpt, tmp_path / "no-params.yaml")
    assert origin == "checkpoint" and params == trained


def test_cli_with_the_real_detector(in_tmp_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_checkpoint(in_tmp_project / "results/classifier/model.pt", FacesParams(crop_size=64, device="cpu"))
    folder = in_tmp_project / "inbox"
    folder.mkdir()
    Image.fromarray(synthetic_face(np.random.default_rng(1), False, 160)).save(folder / "gradient.png")
    (folder / "broken.jpg").write_bytes(b"garbage")
    real_faces = sorted((SHARED_DATA / "hardfakevsreal" / "real").glob("*.jpg"))[:2]
    code = predict.main([str(folder), *map(str, real_faces), "--out", "scores.csv", "--device", "cpu"])
    assert code == 0
    table = pd.read_csv(in_tmp_project / "scores.csv", keep_default_na=False)
    status = dict(zip(table["file"].map(lambda f: Path(f).name), table["status"]))
    assert status["broken.jpg"] == "unreadable" and status["gradient.png"] == "no_face"
    for face in real_faces:  # photos of people (when ../shared/data is present): MTCNN finds the face
        row = table[table["file"] == str(face)].iloc[0]
        assert row["status"] == "ok" and 0 <= float(row["prob_fake"]) <= 1 and float(row["face_prob"]) >= 0.9
        assert float(row["box_x2"]) > float(row["box_x1"])
    out = capsys.readouterr().out
    assert "unreadable" in out and "faces params from checkpoint" in out


def test_images_smaller_than_min_side_are_not_scored(tmp_path: Path) -> None:
    """The pipeline skips raw images under data.min_side; predict must not score them either."""
    faces = FacesParams(crop_size=32, detect_side=64, on_miss="center", device="cpu")
    rng = np.random.default_rng(0)
    Image.fromarray(synthetic_face(rng, False, 10)).save(tmp_path / "tiny.png")
    Image.fromarray(synthetic_face(rng, False, 48)).save(tmp_path / "small.png")
    Image.fromarray(synthetic_face(rng, False, 80)).save(tmp_path / "fine.png")
    files = [tmp_path / "tiny.png", tmp_path / "small.png", tmp_path / "fine.png"]
    cropper = FaceCropper(faces, device=CPU, detector=CentreBoxDetector())
    for min_side, expected in (
        (40, {"tiny.png": "too_small", "small.png": "ok", "fine.png": "ok"}),
        (None, {"tiny.png": "too_small", "small.png": "too_small", "fine.png": "ok"}),
    ):
        write_checkpoint(tmp_path / "model.pt", faces, min_side=min_side)  # None: the params default, 64
        model, ckpt = load_model(tmp_path / "model.pt")
        preds = {Path(p.file).name: p for p in Predictor(model, ckpt, cropper, CPU).files(files)}
        assert {n: p.status for n, p in preds.items()} == expected, min_side
        assert preds["tiny.png"].reason == f"too small (10x10; data.min_side is {min_side or 64})"
        assert preds["tiny.png"].prob_fake is None and preds["tiny.png"].predicted == ""


def test_cli_without_images_is_a_user_error(in_tmp_project: Path) -> None:
    (in_tmp_project / "empty").mkdir()
    with pytest.raises(InputError, match="no image files under"):
        predict.main([str(in_tmp_project / "empty")])


def astronauts() -> list[Image.Image]:
    """A photo with two faces, one with one face, one with none."""
    one = Image.fromarray(skdata.astronaut())
    return [two_faces(one), one.resize((160, 160), Image.Resampling.LANCZOS), Image.new("RGB", (160, 160))]


def test_every_face_mode_scores_each_face_of_a_photo(tmp_path: Path) -> None:
    faces = FacesParams(crop_size=32, device="cpu")
    write_checkpoint(tmp_path / "model.pt", faces)
    model, ckpt = load_model(tmp_path / "model.pt")
    cropper = FaceCropper(faces, device=CPU, detector=build_mtcnn(faces.min_face, CPU))
    images = astronauts()
    every = Predictor(model, ckpt, cropper, CPU, every_face=True).images(images)
    best = Predictor(model, ckpt, cropper, CPU).images(images)
    assert [p.status for p in every] == ["ok", "ok", "ok", "no_face"] and [p.face for p in every] == [0, 1, 0, None]
    assert [p.status for p in best] == ["ok", "ok", "no_face"] and all(p.face is None for p in best)
    first, second, one, none = every
    assert first.box is not None and second.box is not None and first.box != second.box
    assert (first.box[0] < 176) != (second.box[0] < 176)  # one face in each half of the canvas
    assert first.face_prob is not None and second.face_prob is not None and first.face_prob >= second.face_prob
    assert second.pixels is not None and first.pixels is not None and not np.array_equal(first.pixels, second.pixels)
    assert second.prob_fake is not None and second.predicted in ("real", "fake")
    # the best face and the one-face and no-face photos score exactly as without every-face
    for a, b in zip((first, one, none), best):
        assert (a.box, a.prob_fake, a.status, a.reason) == (b.box, b.prob_fake, b.status, b.reason)
    assert first.row()["face"] == 0 and none.row()["face"] == ""


def test_cli_every_face_writes_a_row_per_face(in_tmp_project: Path) -> None:
    write_checkpoint(in_tmp_project / "results/classifier/model.pt", FacesParams(crop_size=32, device="cpu"))
    names = ["two.png", "one.png", "none.png"]
    for image, name in zip(astronauts(), names):
        image.save(in_tmp_project / name)
    files = [str(in_tmp_project / n) for n in names]
    assert predict.main([*files, "--out", "every.csv", "--device", "cpu", "--every-face"]) == 0
    assert predict.main([*files, "--out", "best.csv", "--device", "cpu"]) == 0
    every = pd.read_csv(in_tmp_project / "every.csv", keep_default_na=False)
    best = pd.read_csv(in_tmp_project / "best.csv", keep_default_na=False)
    assert list(every.columns) == FACE_COLUMNS and "face" not in best.columns
    assert [Path(f).name for f in every["file"]] == ["two.png", "two.png", "one.png", "none.png"]
    assert list(every["face"].astype(str)) == ["0", "1", "0", ""] and list(best["status"]) == ["ok", "ok", "no_face"]
    assert every["box_x1"].iloc[0] != every["box_x1"].iloc[1]
