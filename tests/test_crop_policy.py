"""Crops that carry no label: never padded, margin recorded, grey photos balanced across classes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core.images import decode_rgb, encode
from core.params import FacesParams
from faces.crop import FaceCropper, face_square, is_grayscale, margin_of
from faces.detect import Box, Detection
from faces.grayscale import DROP_REASON, apply_policy, gray_copy, rows_to_gray


class NoDetector:
    def detect(self, batch: np.ndarray) -> tuple[list[None], list[None]]:
        return [None] * len(batch), [None] * len(batch)


def cropper(**changes: object) -> FaceCropper:
    params = dataclasses.replace(FacesParams(device="cpu", crop_size=32), **changes)
    return FaceCropper(params, device=torch.device("cpu"), detector=NoDetector())


@pytest.mark.parametrize(
    "box, size",
    [
        (Box(0, 0, 100, 120), (300, 200)),  # face in the corner
        (Box(150, 40, 310, 230), (300, 200)),  # face larger than the image and past its edge
        (Box(-30, -20, 80, 90), (120, 400)),  # box partly outside (MTCNN extrapolates)
        (Box(100, 60, 140, 110), (300, 200)),  # small face in the middle: the full margin fits
    ],
)
def test_face_square_always_lies_inside_the_image(box: Box, size: tuple[int, int]) -> None:
    w, h = size
    left, top, right, bottom = face_square(box, 0.25, w, h)
    assert right - left == bottom - top > 0
    assert 0 <= left and 0 <= top and right <= w and bottom <= h


def test_margin_is_kept_where_it_fits_and_recorded_where_it_shrinks() -> None:
    box = Box(100, 60, 140, 110)  # 40 x 50: the square side is 50 * 1.25
    region = face_square(box, 0.25, 300, 200)
    assert region[2] - region[0] == round(50 * 1.25)
    assert margin_of(region, box) == pytest.approx(0.25, abs=0.02)
    big = Box(20, 0, 260, 240)  # 240 px face in a 300 x 200 photo: the square shrinks to 200
    shrunk = face_square(big, 0.25, 300, 200)
    assert shrunk[2] - shrunk[0] == 200
    assert margin_of(shrunk, big) == pytest.approx(200 / 240 - 1)


def test_no_crop_is_ever_padded_with_black() -> None:
    # A white photo with the face at the very edge: the old policy filled the rest of the square black.
    photo = Image.new("RGB", (200, 160), (255, 255, 255))
    c = cropper(margin=0.5)
    result = c.finish(photo, Detection(Box(150, 0, 200, 60), 0.99))
    assert result.status == "ok" and result.image is not None
    assert np.asarray(result.image).min() == 255  # every pixel came from the photo
    assert result.margin_used is not None and result.region is not None
    assert result.region[2] <= 200 and result.region[3] <= 160


def test_grey_photos_are_recognised_also_when_stored_as_rgb_jpeg() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    as_rgb_jpeg = decode_rgb(encode(Image.fromarray(np.stack([grey] * 3, -1)), "jpeg", 90)).image
    colour = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert is_grayscale(as_rgb_jpeg)
    assert not is_grayscale(colour)
    assert is_grayscale(decode_rgb(gray_copy(encode(colour, "png"), "png", 95)).image)


def faces_frame(n_real: int, n_fake: dict[str, int], grey_reals: int, paired: int = 0) -> pd.DataFrame:
    """A faces manifest: the first ``grey_reals`` reals are grey; the first ``paired`` fakes of each generator
    share a group with a grey real (as DFF's fakes made from a grey photo at the same path)."""
    rows = [
        {
            "id": f"r{i}",
            "label": "real",
            "generator": "real",
            "source": "s",
            "group": f"g{i}",
            "status": "ok",
            "path": f"r{i}.png",
            "reason": "",
            "grayscale": "raw" if i < grey_reals else "no",
        }
        for i in range(n_real)
    ]
    for gen, n in n_fake.items():
        rows += [
            {
                "id": f"{gen}{i}",
                "label": "fake",
                "generator": gen,
                "source": "s",
                "group": f"g{i}" if i < paired else f"{gen}-g{i}",
                "status": "ok",
                "path": f"{gen}{i}.png",
                "reason": "",
                "grayscale": "no",
            }
            for i in range(n)
        ]
    return pd.DataFrame(rows)


def grey_share(frame: pd.DataFrame) -> pd.Series:
    kept = frame[frame["status"] == "ok"]
    cls = kept["label"] + "/" + kept["generator"]
    return kept["grayscale"].ne("no").groupby(cls).mean()


def test_match_gives_every_class_the_same_grey_share() -> None:
    frame = faces_frame(100, {"a": 100, "b": 50}, grey_reals=10)
    out = apply_policy(frame, "match")
    shares = grey_share(out)
    assert shares.to_dict() == pytest.approx({"real/real": 0.1, "fake/a": 0.1, "fake/b": 0.1})
    assert set(out.loc[out["label"] == "real", "grayscale"]) == {"raw", "no"}  # reals are left as they are
    assert (out["grayscale"] == "matched").sum() == 15


def test_match_prefers_fakes_made_from_a_grey_real_and_is_reproducible() -> None:
    frame = faces_frame(100, {"a": 100}, grey_reals=10, paired=10)
    chosen = set(frame.loc[rows_to_gray(frame), "id"])
    assert chosen == {f"a{i}" for i in range(10)}  # exactly the fakes in the grey reals' groups
    unpaired = faces_frame(100, {"a": 100}, grey_reals=10)
    assert rows_to_gray(unpaired) == rows_to_gray(unpaired.sample(frac=1.0, random_state=3).sort_index())


def test_drop_removes_grey_crops_with_a_reason_and_keep_changes_nothing() -> None:
    frame = faces_frame(20, {"a": 20}, grey_reals=4)
    dropped = apply_policy(frame, "drop")
    gone = dropped[dropped["status"] == "dropped"]
    assert len(gone) == 4 and set(gone["reason"]) == {DROP_REASON} and set(gone["path"]) == {""}
    assert apply_policy(frame, "keep").equals(frame)


def test_no_grey_images_means_nothing_changes() -> None:
    frame = faces_frame(10, {"a": 10}, grey_reals=0)
    assert rows_to_gray(frame) == []


# --------------------------------------------------------------------------- training views


def test_training_views_are_shown_instead_of_the_crop_at_random(tmp_path: Path) -> None:
    from classifier.data import SplitData, load_views

    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "path": ["", "", ""],
            "label": ["real", "fake", "real"],
            "generator": ["real", "g", "real"],
        }
    )
    crops = np.zeros((3, 3, 8, 8), np.uint8)
    split = SplitData("train", frame, crops, np.array([0.0, 1.0, 0.0], np.float32))
    (tmp_path / "v").mkdir()
    rows = []
    for row_id, value in (("a", 100), ("a", 200), ("b", 50), ("zz", 7)):  # zz: a face of another split
        path = tmp_path / "v" / f"{row_id}{value}.png"
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
        rows.append(
            {
                "id": row_id,
                "view": 1,
                "path": str(path),
                "status": "ok",
                "reason": "",
                "margin_used": 0.1,
                "grayscale": "no",
            }
        )
    rows.append(
        {
            "id": "c",
            "view": 1,
            "path": "",
            "status": "dropped",
            "reason": "no face detected",
            "margin_used": "",
            "grayscale": "",
        }
    )
    pd.DataFrame(rows).to_csv(tmp_path / "views.csv", index=False)
    views = load_views(split, tmp_path / "views.csv", 8, cache_dir=tmp_path / "cache", progress=False)
    assert views is not None and len(views) == 3  # the other split's face and the dropped view are left out
    assert [len(v) for v in views.of_row] == [2, 1, 0]
    g = torch.Generator().manual_seed(0)
    seen: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for _ in range(60):
        batch = views.gather(crops, np.array([0, 1, 2]), g)
        for k in range(3):
            seen[k].add(int(batch[k, 0, 0, 0]))
    assert seen == {0: {0, 100, 200}, 1: {0, 50}, 2: {0}}  # crop or any of its views; no views: the crop


def test_views_follow_their_crop_through_the_grayscale_policy() -> None:
    from faces.grayscale import views_after_policy

    faces = faces_frame(2, {"a": 2}, grey_reals=1)
    faces = apply_policy(faces, "match")
    matched = faces.loc[faces["grayscale"] == "matched", "id"].tolist()
    views = pd.DataFrame(
        [
            {
                "id": i,
                "view": 1,
                "path": f"{i}.v1.png",
                "status": "ok",
                "reason": "",
                "margin_used": 0.0,
                "grayscale": "no",
            }
            for i in faces["id"]
        ]
    )
    out = views_after_policy(views, faces)
    assert out.loc[out["grayscale"] == "matched", "id"].tolist() == matched
    dropped_faces = apply_policy(faces_frame(2, {"a": 2}, grey_reals=1), "drop")
    out = views_after_policy(views, dropped_faces)
    assert out.loc[out["status"] == "dropped", "id"].tolist() == ["r0"] and out.loc[0, "path"] == ""


# --------------------------------------------------------------------------- the audit after the policy


def _grey_reals(share: float):  # type: ignore[no-untyped-def]
    from tests.test_crop_audit import photo

    def crop(rng: np.random.Generator, fake: bool, i: int) -> np.ndarray:
        img = photo(rng)
        if not fake and (i * 7919) % 100 < share * 100:
            img[:] = img.mean(axis=2, keepdims=True).astype(np.uint8)
        return img

    return crop


def _audited_split(root: Path, name: str, share: float, mode: str, seed: int) -> pd.DataFrame:
    """A split where ``share`` of the reals are grey photos and no fake is, after faces.grayscale ``mode``."""
    from tests.test_crop_audit import split_frame

    frame = split_frame(root, name, 400, _grey_reals(share), seed, paired=True)
    frame["source"], frame["group"] = "s", frame["id"]
    grey = [is_grayscale(Image.open(root / p)) for p in frame["path"]]
    frame["grayscale"] = np.where(grey, "raw", "no")
    out = apply_policy(frame, mode)
    for path in out.loc[out["grayscale"] == "matched", "path"]:
        (root / path).write_bytes(gray_copy((root / path).read_bytes(), "png", 95))
    return out[out["status"] == "ok"]


@pytest.mark.parametrize("share", [0.1, 0.4])
def test_matching_removes_the_grayscale_cue_from_the_audit(tmp_path: Path, share: float) -> None:
    from shortcuts.audit import crop_feature_audit

    def spread_auc(mode: str) -> float:
        base = tmp_path / mode
        audit = crop_feature_audit(
            _audited_split(base, "tr", share, mode, 0), _audited_split(base, "te", share, mode, 1), root=base
        )
        return float(audit["features"]["channel_spread"]["test_auc"])

    kept, matched = spread_auc("keep"), spread_auc("match")
    assert matched <= 0.6  # the bar: the grayscale feature says (almost) nothing after matching
    assert kept - matched >= share / 2 - 0.03  # and it did say something before: 0.5 + share / 2 with keep
