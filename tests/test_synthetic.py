"""Synthetic source: deterministic, one group per identity, faces MTCNN finds."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.io import read_csv
from core.params import DataParams
from sources import synthetic
from tests.helpers import set_params


def _rows(tmp: Path, seed: int, identities: int = 4) -> pd.DataFrame:
    params = DataParams(source="synthetic", seed=seed, synthetic_identities=identities, workers=2)
    return pd.DataFrame(synthetic.collect(params, tmp / "images"))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a, b, c = _rows(tmp_path / "a", 0), _rows(tmp_path / "b", 0), _rows(tmp_path / "c", 1)
    assert list(a["sha1"]) == list(b["sha1"]) and list(a["id"]) == list(b["id"])
    assert not set(a["sha1"]) & set(c["sha1"])
    assert a["sha1"].is_unique


def test_counts_groups_and_sizes(tmp_path: Path) -> None:
    rows = _rows(tmp_path, 0, identities=5)
    assert len(rows) == 5 * (1 + len(synthetic.GENERATORS))
    assert (rows["status"] == "ok").all() and (rows["mode"] == "RGB").all()
    assert rows["group"].nunique() == 5
    for _, g in rows.groupby("group"):
        assert sorted(g["generator"]) == sorted(["real", *synthetic.GENERATORS])
        assert set(g.loc[g["generator"] == "real", "label"]) == {"real"}
        assert set(g.loc[g["generator"] != "real", "label"]) == {"fake"}
    assert rows["width"].between(160, 256).all() and (rows["width"] == rows["height"]).all()
    for path in rows["path"]:
        assert (tmp_path / "images" / Path(path).name).exists()


def test_fakes_differ_from_their_real_mostly_in_the_face() -> None:
    images = synthetic.identity_images(0, 3)
    real = np.asarray(Image.open(io.BytesIO(images["real"])).convert("RGB")).astype(float)
    for name in synthetic.GENERATORS:
        fake = np.asarray(Image.open(io.BytesIO(images[name])).convert("RGB")).astype(float)
        diff = np.abs(fake - real).mean(axis=2)
        h, w = diff.shape
        centre = diff[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].mean()
        corners = np.concatenate([diff[: h // 8, : w // 8].ravel(), diff[: h // 8, -w // 8 :].ravel()]).mean()
        assert centre > 1.0 and centre > 3 * corners, name


def test_mtcnn_finds_a_face_in_at_least_90_percent() -> None:
    from facenet_pytorch import MTCNN

    detector = MTCNN(keep_all=False, device="cpu")
    probs = []
    for identity in range(3):  # 3 identities x (1 real + 3 fakes) = 12 images; one batch per identity
        batch = [
            Image.open(io.BytesIO(data)).convert("RGB") for data in synthetic.identity_images(0, identity).values()
        ]  # same size within an identity
        _, batch_probs = detector.detect(batch)
        probs += [0.0 if p is None or p[0] is None else float(p[0]) for p in batch_probs]
    assert len(probs) == 12
    assert sum(p >= 0.9 for p in probs) >= 0.9 * len(probs), probs


def test_bad_files_cover_every_awkward_case() -> None:
    from sources.rawset import check_image

    for name, (data, status, reason) in synthetic.bad_files().items():
        verdict = check_image(data, Path(name).suffix, min_side=64)
        assert verdict.status == status and reason in verdict.reason, (name, verdict)


def test_stage_runs_on_synthetic(in_tmp_project: Path) -> None:
    from stages import download

    set_params(in_tmp_project / "params.yaml", "data", source="synthetic", synthetic_identities=4)
    download.main()
    frame = read_csv(Path("data/raw/manifest.csv"))
    assert len(frame) == 16 and all(Path(p).exists() for p in frame["path"])
    summary = json.loads(Path("data/raw/summary.json").read_text())
    assert summary["counts"]["fake"]["gen_checker"] == {"ok": 4} and summary["groups"] == 4
