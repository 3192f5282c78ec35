"""faces.workers: detection spread over worker processes gives the crops of one process, and a worker that
dies leaves a cache the rerun trusts only where an entry is complete."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from core.errors import PipelineError
from core.images import DecodedImage
from core.io import sha1_bytes
from core.params import FacesParams
from core.schema import RAW_COLUMNS
from faces.cache import FaceCache
from faces.crop import FaceCropper
from faces.pipeline import Job, process_on_workers, worker_count
from faces.run import run_faces
from sources.synthetic import draw_face

PARAMS = FacesParams(batch_size=2, device="cpu", framing_views=1)


class DyingJob(Job):
    """A job whose worker process dies while decoding it (as a killed or out-of-memory worker would)."""

    def load(self) -> DecodedImage:
        os._exit(3)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what each worker process uses; the one-process reference must match it
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Ten photos: the astronaut at several sizes (a face MTCNN finds) and synthetic drawn faces."""
    root = tmp_path_factory.mktemp("photos")
    astronaut = Image.fromarray(skdata.astronaut())
    rng = random.Random(0)
    images = [astronaut.resize((s, s)) for s in (512, 400, 300, 256)] + [draw_face(rng)[0] for _ in range(6)]
    paths = []
    for k, im in enumerate(images):
        paths.append(root / f"p{k}.png")
        im.save(paths[-1])
    return paths


def cache_files(cache: FaceCache) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(cache.root.iterdir()) if not p.name.startswith(".")}


def run(photos: list[Path], root: Path, workers: int) -> FaceCache:
    cache = FaceCache(root, ".png")
    process_on_workers({f"k{i}": Job(p) for i, p in enumerate(photos)}, FaceCropper(PARAMS), cache, workers)
    return cache


def test_two_workers_write_the_same_cache_as_one_process(photos: list[Path], tmp_path: Path) -> None:
    one = cache_files(run(photos, tmp_path / "one", workers=1))
    two = cache_files(run(photos, tmp_path / "two", workers=2))
    assert len(one) >= len(photos)  # a JSON per photo, a crop per kept face
    assert sum(name.endswith(".png") for name in one) >= 4  # the astronauts at least: the check means something
    assert two == one


def test_run_faces_manifest_does_not_depend_on_workers(photos: list[Path], tmp_path: Path) -> None:
    rows = []
    for k, p in enumerate(photos):
        row = dict.fromkeys(RAW_COLUMNS, "")
        label = "real" if k % 2 else "fake"
        row.update(id=f"r{k}", path=str(p), label=label, generator=label, source="test", group=f"g{k}", status="ok")
        row["sha1"] = sha1_bytes(p.read_bytes())
        rows.append(row)
    raw = pd.DataFrame(rows, columns=RAW_COLUMNS)
    runs = [
        run_faces(raw, FaceCropper(PARAMS), FaceCache(tmp_path / f"w{w}", ".png"), root=Path("/"), workers=w)
        for w in (1, 2)
    ]
    pd.testing.assert_frame_equal(runs[0].faces, runs[1].faces)
    pd.testing.assert_frame_equal(runs[0].views, runs[1].views)
    assert (runs[0].faces["status"] == "ok").sum() >= 4 and len(runs[0].views) >= 4


def test_a_dead_worker_is_one_clear_error_and_the_rerun_trusts_only_complete_entries(
    photos: list[Path], tmp_path: Path
) -> None:
    reference = cache_files(run(photos, tmp_path / "reference", workers=1))
    cache = FaceCache(tmp_path / "killed", ".png")
    todo: dict[str, Job] = {f"k{i}": Job(p) for i, p in enumerate(photos)}
    todo["k9"] = DyingJob(photos[9])  # the last batch's worker dies while the others work
    with pytest.raises(PipelineError, match="worker process died") as info:
        process_on_workers(todo, FaceCropper(PARAMS), cache, workers=2)
    assert "rerun the stage" in info.value.hint

    survivors = [k for k in todo if cache.load(k) is not None]
    assert "k9" not in survivors
    for key in survivors:  # what the cache trusts is exactly what a clean run wrote
        assert cache.meta_path(key).read_bytes() == reference[f"{key}.json"]
    remaining = {k: Job(photos[int(k[1:])]) for k in todo if cache.load(k) is None}
    process_on_workers(remaining, FaceCropper(PARAMS), cache, workers=2)
    assert cache_files(cache) == reference


def test_workers_zero_means_the_cores_given_to_the_stage() -> None:
    assert worker_count(0) == len(os.sched_getaffinity(0))
    assert worker_count(3) == 3
