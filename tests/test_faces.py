"""Stage faces: MTCNN detection, box mapping, uniform encoding, on_miss, resume, end-to-end."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, JpegImagePlugin
from skimage import data as skdata

from core.device import pick_device
from core.io import sha1_bytes
from core.params import FacesParams, ParamsError, parse_block
from core.schema import FACE_COLUMNS, RAW_COLUMNS
from faces.cache import FaceCache, cache_key
from faces.crop import FaceCropper
from faces.detect import Box, all_detections, build_mtcnn
from faces.pipeline import Job, process
from faces.run import run_faces
from tests.helpers import set_params

# Where the astronaut's face is in skimage.data.astronaut() (512x512), a generous ground-truth region.
FACE_REGION = Box(170, 50, 280, 185)


class CountingDetector:
    """Wraps MTCNN and counts the images it is asked to look at."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0
        self.images = 0

    def detect(self, batch: np.ndarray) -> Any:
        self.calls += 1
        self.images += len(batch)
        return self.inner.detect(batch)


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Any:
    """The stage sets torch's thread count (process-wide); give other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mtcnn() -> Any:
    return build_mtcnn(20, torch.device("cpu"))


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


def cropper_for(mtcnn: Any, **changes: Any) -> FaceCropper:
    params = dataclasses.replace(FacesParams(device="cpu"), **changes)
    return FaceCropper(params, device=torch.device("cpu"), detector=CountingDetector(mtcnn))


def flat_image(size: tuple[int, int] = (300, 200)) -> Image.Image:
    """Blue side bands, a red centred square: nothing face-like."""
    w, h = size
    im = Image.new("RGB", size, (0, 0, 255))
    side = min(w, h)
    im.paste((255, 0, 0), ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
    return im


def to_bytes(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------- detection


def test_mtcnn_finds_the_astronauts_face_and_nothing_in_noise(mtcnn: Any, astronaut: Image.Image) -> None:
    cropper = cropper_for(mtcnn)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    face, none = cropper.detect([astronaut, noise])
    assert face is not None and face.prob > 0.9
    assert face.box.iou(FACE_REGION) > 0.4
    cx, cy = (face.box.x1 + face.box.x2) / 2, (face.box.y1 + face.box.y2) / 2
    assert FACE_REGION.x1 < cx < FACE_REGION.x2 and FACE_REGION.y1 < cy < FACE_REGION.y2
    assert none is None or none.prob < cropper.params.min_prob
    assert cropper.detector.calls == 1  # both images went through MTCNN in one batch


def test_box_from_the_downscaled_copy_lands_on_the_face_at_full_resolution(mtcnn: Any, astronaut: Image.Image) -> None:
    # astronaut upscaled 2x, placed at an offset in a wide canvas: scale and offset both matter.
    offset = (300, 40)
    big = Image.new("RGB", (1500, 1100))
    big.paste(astronaut.resize((1024, 1024), Image.Resampling.LANCZOS), offset)
    cropper = cropper_for(mtcnn, detect_side=320)
    (det,) = cropper.detect([big])
    expected = Box(
        FACE_REGION.x1 * 2 + offset[0],
        FACE_REGION.y1 * 2 + offset[1],
        FACE_REGION.x2 * 2 + offset[0],
        FACE_REGION.y2 * 2 + offset[1],
    )
    assert det is not None and det.prob > 0.9
    assert det.box.iou(expected) > 0.4
    # same face as MTCNN finds at full size (the naive, slow way) on the original
    boxes, _ = mtcnn.mtcnn.detect(astronaut)  # facenet-pytorch's own MTCNN
    direct = Box(*(float(v) for v in boxes[0])).scaled(2, 2)
    direct = Box(direct.x1 + offset[0], direct.y1 + offset[1], direct.x2 + offset[0], direct.y2 + offset[1])
    assert det.box.iou(direct) > 0.7
    # the crop is cut from the full-resolution image around that box
    (res,) = cropper.crop([big])
    assert res.status == "ok" and res.image is not None and res.image.size == (128, 128)


def two_faces(astronaut: Image.Image, side: int = 160) -> Image.Image:
    """The astronaut (scaled to ``side``) pasted twice side by side on a white canvas: two faces."""
    small = astronaut.resize((side, side), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (2 * side + 16, side), (255, 255, 255))
    canvas.paste(small, (0, 0))
    canvas.paste(small, (side + 16, 0))
    return canvas


def test_all_detections_keeps_every_face_most_probable_first() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]])
    dets = all_detections(boxes, np.array([0.5, 0.9, None]), (2.0, 1.0))
    assert [d.prob for d in dets] == [0.9, 0.5] and dets[0].box == Box(40, 0, 60, 10)
    assert all_detections(None, [None], (1.0, 1.0)) == []


def test_crop_every_crops_each_face_as_the_pipeline_and_crop_keeps_the_best(mtcnn: Any, astronaut: Image.Image) -> None:
    cropper = cropper_for(mtcnn, crop_size=32)
    images = [two_faces(astronaut), astronaut, flat_image()]
    (left, right), (one,), (miss,) = cropper.crop_every(images)
    assert left.status == right.status == "ok" and left.prob >= right.prob >= cropper.params.min_prob
    assert left.region is not None and right.region is not None and left.region != right.region
    assert {left.region[0] < 176, right.region[0] < 176} == {True, False}  # one face in each half
    for res in (left, right):  # each as the pipeline's finish crops its detection
        assert res.detection is not None
        again = cropper.finish(images[0], res.detection)
        assert again.region == res.region and again.image is not None and res.image is not None
        assert np.array_equal(np.asarray(again.image), np.asarray(res.image))
    best, single, dropped = cropper.crop(images)  # the faces stage: still one crop per photo, the best
    assert best.region == left.region and single.region == one.region
    assert miss.status == dropped.status == "dropped" and miss.image is None


# --------------------------------------------------------------------------- crop / encode path


def _four_inputs(astronaut: Image.Image) -> dict[str, bytes]:
    gray = astronaut.convert("L").resize((256, 256))
    rgba = astronaut.resize((420, 300)).convert("RGBA")
    rgba.putalpha(200)
    return {
        "jpeg": to_bytes(astronaut, "JPEG", quality=80),
        "png": to_bytes(astronaut.resize((640, 640)), "PNG"),
        "gray": to_bytes(gray, "JPEG", quality=90),
        "rgba": to_bytes(rgba, "PNG"),
    }


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_every_input_format_leaves_with_the_same_size_format_and_encoder(
    encoding: str, mtcnn: Any, astronaut: Image.Image, tmp_path: Path
) -> None:
    todo = {}
    for name, blob in _four_inputs(astronaut).items():
        (tmp_path / name).write_bytes(blob)
        todo[name] = tmp_path / name
    cropper = cropper_for(mtcnn, encoding=encoding, on_miss="center")
    cache = FaceCache(tmp_path / "cache", cropper.extension)
    process({k: Job(p) for k, p in todo.items()}, cropper, cache)

    outputs = {name: cache.crop_path(name).read_bytes() for name in todo}
    opened = {name: Image.open(io.BytesIO(b)) for name, b in outputs.items()}
    assert {im.format for im in opened.values()} == {"PNG" if encoding == "png" else "JPEG"}
    assert {im.mode for im in opened.values()} == {"RGB"}
    assert {im.size for im in opened.values()} == {(128, 128)}
    assert len({tuple(sorted(im.info)) for im in opened.values()}) == 1  # no per-file metadata
    if encoding == "jpeg":
        assert len({repr(im.quantization) for im in opened.values()}) == 1  # one quality
        assert {JpegImagePlugin.get_sampling(im) for im in opened.values()} == {0}  # 4:4:4 everywhere
    else:  # re-encoding the pixels reproduces the file byte for byte: one set of encoder settings
        for name, im in opened.items():
            assert cropper.encode(im.convert("RGB")) == outputs[name], name
    assert {cache.load(n).status for n in todo} == {"ok"}  # the face was found in every variant


def test_on_miss_center_keeps_a_centred_crop_and_drop_drops(mtcnn: Any, astronaut: Image.Image) -> None:
    flat = flat_image((300, 200))
    center = cropper_for(mtcnn, on_miss="center").crop([flat, astronaut])
    drop = cropper_for(mtcnn, on_miss="drop").crop([flat, astronaut])

    assert center[0].status == "center" and "no face" in center[0].reason
    pixels = np.asarray(center[0].image).astype(int)
    assert center[0].image.size == (128, 128)
    assert pixels[..., 0].min() > 240 and pixels[..., 2].max() < 15  # only the red centre square
    assert drop[0].status == "dropped" and drop[0].image is None and drop[0].reason
    assert center[1].status == drop[1].status == "ok"
    assert np.array_equal(np.asarray(center[1].image), np.asarray(drop[1].image))


def test_a_face_below_min_prob_is_a_miss(mtcnn: Any, astronaut: Image.Image) -> None:
    (res,) = cropper_for(mtcnn, min_prob=1.0).crop([astronaut])
    assert res.status == "dropped" and res.detection is not None
    assert res.prob < 1.0 and "< min_prob" in res.reason


# --------------------------------------------------------------------------- resume


def test_resume_reuses_finished_entries_and_ignores_half_written_files(
    mtcnn: Any, astronaut: Image.Image, tmp_path: Path
) -> None:
    todo = {}
    for name, im in {"a": astronaut, "b": astronaut.resize((300, 300)), "c": flat_image()}.items():
        todo[name] = tmp_path / f"{name}.png"
        im.save(todo[name])
    first = cropper_for(mtcnn, batch_size=2)
    cache = FaceCache(tmp_path / "cache", first.extension)
    process({k: Job(p) for k, p in list(todo.items())[:2]}, first, cache)  # "killed" before c
    assert first.detector.images == 2
    reference_b = cache.crop_path("b").read_bytes()

    # a kill while writing c's crop, and a stale temp file next to b's finished entry
    cache.crop_path("c").write_bytes(b"\x89PNG half")
    (cache.root / ".b.png.tmp-4242-deadbeef").write_bytes(b"\x89PNG half")
    # a crop damaged after its JSON was written (sha1 no longer matches) is redone too
    cache.crop_path("a").write_bytes(cache.crop_path("a").read_bytes()[:100])

    assert cache.load("b") is not None
    assert cache.load("a") is None and cache.load("c") is None
    todo_again = {k: p for k, p in todo.items() if cache.load(k) is None}
    second = cropper_for(mtcnn, batch_size=2)
    process({k: Job(p) for k, p in todo_again.items()}, second, cache)
    assert sorted(todo_again) == ["a", "c"]
    assert second.detector.images == 2  # b was reused, not detected again
    assert cache.crop_path("b").read_bytes() == reference_b
    assert cache.load("a").status == "ok" and cache.load("c").status == "dropped"
    assert Image.open(cache.crop_path("a")).size == (128, 128)
    assert not cache.crop_path("c").exists() or cache.load("c").crop_sha1 == ""


def test_cache_key_changes_with_result_params_only() -> None:
    base = FacesParams()
    assert cache_key(base, "v1") == cache_key(dataclasses.replace(base, batch_size=3, threads=1), "v1")
    assert cache_key(base, "v1") != cache_key(dataclasses.replace(base, margin=0.5), "v1")
    assert cache_key(base, "v1") != cache_key(base, "v2")


# --------------------------------------------------------------------------- params / device


def test_faces_params_name_the_bad_key() -> None:
    with pytest.raises(ParamsError, match="faces.on_miss"):
        parse_block("faces", FacesParams, {"on_miss": "skip"})
    with pytest.raises(ParamsError, match="faces.detect_side"):
        parse_block("faces", FacesParams, {"detect_side": 10})


def test_pick_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(RuntimeError, match="cuda"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto").type == "cuda"
    with pytest.raises(ValueError, match="allowed"):
        pick_device("tpu")


# --------------------------------------------------------------------------- stage end to end


def _raw_row(root: Path, i: str, path: str, label: str, generator: str, status: str, reason: str = "") -> dict:
    row = dict.fromkeys(RAW_COLUMNS, "")
    row.update(
        id=i,
        path=path,
        label=label,
        generator=generator,
        source="test",
        group=f"g{i}",
        status=status,
        reason=reason,
        sha1=sha1_bytes((root / path).read_bytes()) if path else "",
    )
    return row


def _write_raw(root: Path, astronaut: Image.Image) -> pd.DataFrame:
    images = root / "data" / "raw" / "images"
    images.mkdir(parents=True)
    astronaut.save(images / "r1.jpg", quality=90)
    astronaut.resize((300, 300)).convert("RGBA").save(images / "f1.png")
    flat_image().save(images / "f2.jpg")
    (images / "r2.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows = [
        _raw_row(root, "r1", "data/raw/images/r1.jpg", "real", "real", "ok"),
        _raw_row(root, "f1", "data/raw/images/f1.png", "fake", "gen_a", "converted", "RGBA->RGB"),
        _raw_row(root, "f2", "data/raw/images/f2.jpg", "fake", "gen_b", "ok"),
        _raw_row(root, "r2", "data/raw/images/r2.jpg", "real", "real", "ok"),
        _raw_row(root, "r3", "", "real", "real", "skipped", "too small"),
    ]
    frame = pd.DataFrame(rows, columns=RAW_COLUMNS)
    frame.to_csv(root / "data" / "raw" / "manifest.csv", index=False)
    return frame


def test_stage_end_to_end_and_rerun_reuses_the_cache(in_tmp_project: Path, astronaut: Image.Image) -> None:
    from stages import faces as stage

    raw = _write_raw(in_tmp_project, astronaut)
    set_params(in_tmp_project / "params.yaml", "faces", batch_size=2, device="cpu")
    stage.main()

    out = pd.read_csv("data/faces/manifest.csv", keep_default_na=False, dtype={"id": str})
    assert list(out.columns) == FACE_COLUMNS
    usable = raw[raw["status"].isin(["ok", "converted"])]
    assert list(out["id"]) == list(usable["id"])
    status = dict(zip(out["id"], out["status"]))
    assert status == {"r1": "ok", "f1": "ok", "f2": "dropped", "r2": "error"}
    assert out.set_index("id").loc["r2", "reason"]  # the decoder's reason, e.g. "not an image ..."
    for _, row in out[out["status"] == "ok"].iterrows():
        im = Image.open(row["path"])
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (128, 128))
        assert row["prob"] > 0.9 and float(row["box_x2"]) > float(row["box_x1"])
    assert sorted(p.name for p in Path("data/faces/images").iterdir()) == ["f1.png", "r1.png"]
    # each box is in its own file's pixels: f1 is r1 shrunk from 512 to 300 px
    box_x2 = pd.to_numeric(out.set_index("id")["box_x2"])  # empty for rows without a face
    assert box_x2["f1"] == pytest.approx(box_x2["r1"] * 300 / 512, rel=0.05) and pd.isna(box_x2["r2"])

    metrics = json.loads(Path("data/faces/metrics.json").read_text())
    overall = metrics["overall"]
    assert (
        overall["inputs"],
        overall["ok"],
        overall["dropped"],
        overall["error"],
        overall["raw_skipped"],
        overall["kept"],
    ) == (4, 2, 1, 1, 1, 2)
    assert overall["drop_rate"] == pytest.approx(0.5)
    assert overall["detection_rate"] == pytest.approx(2 / 3)
    assert metrics["label"]["real"]["raw_skipped"] == 1 and metrics["label"]["real"]["error"] == 1
    assert metrics["label"]["fake"]["detection_rate"] == pytest.approx(0.5)
    assert metrics["generator"]["gen_b"]["drop_rate"] == pytest.approx(1.0)
    assert 0.4 < overall["mean_prob"] < 1.0

    stage.main()  # rerun: everything comes from the cache
    runs = mlflow.search_runs(experiment_names=["deepfake-pipeline"], order_by=["start_time ASC"])
    assert len(runs) == 2
    assert list(runs["metrics.faces.run.computed"]) == [4.0, 0.0]  # r2's decode error is cached too
    assert list(runs["metrics.faces.run.reused"]) == [0.0, 4.0]
    assert set(runs["metrics.faces.overall.ok"]) == {2.0}
    assert runs["tags.data_manifest_sha1"].iloc[0] == sha1_bytes(Path("data/raw/manifest.csv").read_bytes())
    again = pd.read_csv("data/faces/manifest.csv", keep_default_na=False, dtype={"id": str})
    pd.testing.assert_frame_equal(out, again)


def test_missing_raw_file_is_an_error_row_not_a_crash(mtcnn: Any, astronaut: Image.Image, tmp_path: Path) -> None:
    raw = _write_raw(tmp_path, astronaut)
    (tmp_path / "data/raw/images/f2.jpg").unlink()
    cropper = cropper_for(mtcnn)
    run = run_faces(raw, cropper, FaceCache(tmp_path / "cache", ".png"), root=tmp_path)
    faces, sources, counts = run.faces, run.sources, run.counts
    row = faces.set_index("id").loc["f2"]
    assert row["status"] == "error" and "missing" in row["reason"] and row["path"] == ""
    assert counts.missing == 1
    assert {s for s in sources if s.startswith("data/faces/images/")} == {
        "data/faces/images/r1.png",
        "data/faces/images/f1.png",
    }
    assert set(run.views["id"]) == {"r1", "f1"}  # views only of kept faces
