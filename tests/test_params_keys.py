"""params.yaml keys that DVC can see: no key DVC's run cache ignores, and every key reruns its stage.

DVC's run cache (``dvc/stage/cache.py``) looks a stage up by ``_get_stage_hash(stage)`` =
``dict_sha256(<the stage's lock entry>, exclude=[Meta.PARAM_SIZE, Meta.PARAM_NFILES])``, and
``dvc.utils.dict_filter`` drops those keys at *every* depth of the entry, the params values
included. A params key named ``size`` or ``nfiles`` therefore never reaches the hash: after
``dvc exp run -S faces.size=96`` DVC found the run of ``size: 128`` in the run cache, said
"Stage 'faces' is cached" and checked out the old crops. ``dvc status`` compares the params
directly, so it did report the change: only the run-cache hash missed it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from core import params as params_module
from core.params import ParamsError, parse_block
from tests.conftest import PROJECT_ROOT

# The names DVC 3.x's run cache drops from a stage's lock entry before hashing it
# (dvc/stage/cache.py: _get_cache_hash -> dict_sha256(..., exclude=[Meta.PARAM_SIZE, Meta.PARAM_NFILES]),
# dvc_data.hashfile.meta.Meta: PARAM_SIZE = "size", PARAM_NFILES = "nfiles"). The one list in this
# project; test_ignored_names_match_the_installed_dvc checks it against the installed DVC.
DVC_RUN_CACHE_IGNORED_KEYS = frozenset({"size", "nfiles"})

# No stage reads `tracking` (the MLflow helper reads it: experiment name and the iteration note).
# It changes where a run is logged and what it is called, never a stage's outputs, so no stage
# lists it and changing it must not rerun anything.
BLOCKS_READ_BY_NO_STAGE = {"tracking"}


def params_yaml() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def key_paths(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path of a nested mapping (lists are walked too: DVC's filter walks them)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, str(k))
            yield from key_paths(v, (*prefix, str(k)))
    elif isinstance(value, list):
        for v in value:
            yield from key_paths(v, prefix)


def params_classes() -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(params_module).items()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and name.endswith("Params")
    }


def block_class(block: str) -> type:
    classes = params_classes()
    name = f"{block.capitalize()}Params"
    assert name in classes, f"params.yaml block {block!r} has no dataclass {name} in core/params.py"
    return classes[name]


def dvc_stages() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


# --- fast: no key DVC's run cache ignores --------------------------------------------------------


def test_ignored_names_match_the_installed_dvc() -> None:
    """The constant above is what the installed DVC excludes, at any depth, and nothing more here."""
    from dvc.stage.cache import _get_cache_hash
    from dvc_data.hashfile.meta import Meta

    assert {Meta.PARAM_SIZE, Meta.PARAM_NFILES} == DVC_RUN_CACHE_IGNORED_KEYS

    def entry(name: str, value: int) -> dict[str, Any]:
        return {"cmd": "x", "params": {"params.yaml": {"block": {name: value, "sub": {name: value}}}}}

    for name in DVC_RUN_CACHE_IGNORED_KEYS:
        assert _get_cache_hash(entry(name, 1)) == _get_cache_hash(entry(name, 2)), name
    for name in ("crop_size", "image_size", "n_samples", "sizes", "nfile"):
        assert _get_cache_hash(entry(name, 1)) != _get_cache_hash(entry(name, 2)), name


def test_no_params_key_is_one_dvc_run_cache_ignores() -> None:
    bad = [".".join(path) for path in key_paths(params_yaml()) if path[-1] in DVC_RUN_CACHE_IGNORED_KEYS]
    assert not bad, (
        f"params.yaml keys {bad} end in a name DVC's run cache drops from the stage hash "
        f"({sorted(DVC_RUN_CACHE_IGNORED_KEYS)}): changing them would restore stale outputs. "
        "Rename them (e.g. crop_size, image_size)."
    )
    classes = params_classes()
    assert classes, "no *Params dataclasses found in core/params.py"
    bad = [
        f"{cls_name}.{f.name}"
        for cls_name, cls in classes.items()
        for f in dataclasses.fields(cls)
        if f.name in DVC_RUN_CACHE_IGNORED_KEYS
    ]
    assert not bad, f"params dataclass fields {bad} are names DVC's run cache ignores"


def test_every_block_is_read_by_exactly_one_stage_except_tracking() -> None:
    readers: dict[str, list[str]] = {}
    for name, stage in dvc_stages().items():
        for block in stage.get("params", []):
            assert isinstance(block, str), f"stage {name}: params entry {block!r} is not a block name"
            readers.setdefault(block, []).append(name)
    blocks = set(params_yaml())
    assert set(readers) == blocks - BLOCKS_READ_BY_NO_STAGE
    assert all(len(stages) == 1 for stages in readers.values()), readers
    for block in blocks:
        block_class(block)  # every block has its dataclass


# --- every key of every block reruns its stage ---------------------------------------------------


def _hint_allows(hint: Any, t: type) -> bool:
    return hint is t or t in typing.get_args(hint)


def changed_candidates(value: Any, f: dataclasses.Field, hint: Any, block: dict[str, Any]) -> list[Any]:
    """Other values for a key, most natural first; the caller keeps the first its dataclass accepts."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, (int, float)):
        step: list[Any] = (
            [value + 1, value - 1, value * 2, value // 2]
            if isinstance(value, int)
            else [value * 1.5, value / 2, value + 0.1, value - 0.1]
        )
        if isinstance(value, float) and value == 0:
            step = [0.1, 0.01, 1.0]
        return step
    if isinstance(value, list):
        return [[*value, "changed"]]
    if isinstance(value, dict):
        return [{**value, "changed": 1}]
    if value is None:
        return [1, 0.5, "changed", True, ["changed"]]
    if isinstance(value, str):
        out: list[Any] = [c for c in f.metadata.get("choices") or () if c != value]
        out += [
            x
            for h in typing.get_args(hint)
            if typing.get_origin(h) is typing.Literal
            for x in typing.get_args(h)
            if x != value
        ]
        if _hint_allows(hint, int):  # e.g. n_critic: auto | int
            lo = f.metadata.get("lo")
            out += [int(lo) if lo is not None else 1, 2]
        if "," in value:  # a comma-separated list of options: drop one
            out.append(value.rsplit(",", 1)[0])
        # a name listed elsewhere in the block (e.g. report.classifier_primary: one of classifier_metrics)
        out += [s for v in block.values() if isinstance(v, list) for s in v if isinstance(s, str) and s != value]
        out += [f"{value}-changed", "synthetic"]  # "synthetic": data.source's one non-path alternative
        return out
    raise AssertionError(f"no way to change a {type(value).__name__} value")


def changed_value(block: str, key: str, raw: dict[str, Any]) -> Any:
    cls = block_class(block)
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    hint = typing.get_type_hints(cls)[key]
    for candidate in changed_candidates(raw[key], f, hint, raw):
        if candidate == raw[key]:
            continue
        try:
            parse_block(block, cls, {**raw, key: candidate})
        except ParamsError:
            continue
        return candidate
    raise AssertionError(f"{block}.{key}: found no other valid value for {raw[key]!r}; extend changed_candidates")


def test_changed_value_is_valid_and_different() -> None:
    assert changed_value("faces", "crop_size", {"crop_size": 1024}) == 1023
    assert changed_value("generator", "image_size", {"image_size": 64}) == 128
    assert changed_value("faces", "on_miss", {"on_miss": "drop"}) == "center"
    assert changed_value("generator", "n_critic", {"n_critic": "auto"}) == 1
    assert changed_value("data", "source", {"source": "hf"}) == "synthetic"
    assert changed_value("generator", "augment", {"augment": "translation,color"}) == "translation"


def _placeholder_repo(root: Path) -> None:
    """dvc.yaml + params.yaml with every dep and out of every stage present as a small placeholder."""
    shutil.copy(PROJECT_ROOT / "dvc.yaml", root)
    shutil.copy(PROJECT_ROOT / "params.yaml", root)

    def names(items: list[Any]) -> list[str]:
        return [i if isinstance(i, str) else next(iter(i)) for i in items]

    for stage in dvc_stages().values():
        for path in [
            *stage.get("deps", []),
            *names(stage.get("outs", [])),
            *names(stage.get("metrics", [])),
            *names(stage.get("plots", [])),
        ]:
            target = root / path
            if path.startswith(("stages/", "models/")) and (PROJECT_ROOT / path).is_file():  # code deps
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(PROJECT_ROOT / path, target)
            elif Path(path).suffix:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f"placeholder {path}\n")
            else:  # an output folder
                target.mkdir(parents=True, exist_ok=True)
                (target / "placeholder.txt").write_text(f"placeholder {path}\n")


class DvcProbe:
    """A DVC repo in a temp folder, committed once; asks DVC what a params edit changes.

    Per stage two Stage objects are loaded once from dvc.yaml + dvc.lock (parsing those files is
    most of the cost of a `dvc status` call): one whose deps keep the locked values, for
    ``Stage.status()`` (what `dvc status` calls per stage), and one whose deps are re-read from the
    workspace before hashing, as StageCache.restore does before it looks the stage up.
    """

    def __init__(self, root: Path) -> None:
        from dvc.repo import Repo

        _placeholder_repo(root)
        Repo.init(str(root), no_scm=True)
        self.root = root
        self.repo = Repo(str(root))
        self.repo.commit(force=True)  # writes dvc.lock (params included) and a run-cache entry per stage
        self.baseline = (root / "params.yaml").read_text()
        self._locked: dict[str, Any] = {}
        self._hashed: dict[str, Any] = {}

    def write_params(self, data: dict[str, Any]) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    def restore(self) -> None:
        (self.root / "params.yaml").write_text(self.baseline)

    def _stage(self, cache: dict[str, Any], name: str) -> Any:
        if name not in cache:
            cache[name] = self.repo.stage.load_one(name=name)
        return cache[name]

    @staticmethod
    def _modified_blocks(status: list[Any]) -> set[str]:
        out: set[str] = set()
        for entry in status:
            if isinstance(entry, dict):
                out |= {
                    b for b, what in entry.get("changed deps", {}).get("params.yaml", {}).items() if what == "modified"
                }
        return out

    def status_changed_blocks(self, stage: str) -> set[str]:
        """The params blocks `dvc status <stage>` reports as modified (Stage.status, as `dvc status` runs it)."""
        with self.repo.lock:  # as Repo.status holds it
            return self._modified_blocks(self._stage(self._locked, stage).status().get(stage, []))

    def repo_status_changed_blocks(self, stage: str) -> set[str]:
        """The same through Repo.status (dvc.yaml and dvc.lock parsed again; slower)."""
        return self._modified_blocks(self.repo.status(targets=[stage]).get(stage, []))

    def can_hash(self, stage: str) -> bool:
        from dvc.stage.cache import _can_hash

        return _can_hash(self._stage(self._locked, stage))

    def run_cache_key(self, stage: str) -> str:
        """The key `dvc repro` / `dvc exp run` looks the stage up by in the run cache.

        As in StageCache.restore: the stage's deps (params included) are re-read from the workspace
        (save_deps), then _get_stage_hash hashes its lock entry.
        """
        from dvc.stage.cache import _get_stage_hash

        stage_obj = self._stage(self._hashed, stage)
        with self.repo.lock:  # as `dvc repro` holds it
            stage_obj.save_deps()
            return _get_stage_hash(stage_obj)

    def run_cache_has(self, key: str) -> bool:
        """Whether the run cache holds an entry under ``key`` (StageCache._load's first test)."""
        return os.path.exists(self.repo.stage_cache._get_cache_dir(key))


def _parse_each_content_once(load_path: Any) -> Any:
    """DVC's own params loader, run once per distinct file content.

    Each key is checked twice (status, then the run-cache key) on the same params.yaml text, and
    parsing it with ruamel is most of the test's time. The values DVC sees are unchanged: the first
    call parses, the second gets a copy of the same result.
    """
    import copy

    seen: dict[tuple[str, bytes], Any] = {}

    def load(fs_path: str, fs: Any, **kwargs: Any) -> Any:
        if kwargs:
            return load_path(fs_path, fs, **kwargs)
        key = (str(fs_path), fs.read_bytes(fs_path))
        if key not in seen:
            seen.clear()
            seen[key] = load_path(fs_path, fs)
        return copy.deepcopy(seen[key])

    return load


@pytest.fixture(scope="module")
def dvc_probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DvcProbe]:
    import dvc.dependency.param as dvc_param

    root = tmp_path_factory.mktemp("dvc-params-keys")
    before = Path.cwd()
    os.chdir(root)  # DVC resolves stage paths against the working directory
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dvc_param, "load_path", _parse_each_content_once(dvc_param.load_path))
        try:
            yield DvcProbe(root)
        finally:
            os.chdir(before)


def test_every_params_key_change_is_seen_by_dvc_status_and_run_cache(dvc_probe: DvcProbe) -> None:
    start = time.perf_counter()
    params = yaml.safe_load(dvc_probe.baseline)
    stage_of = {block: name for name, stage in dvc_stages().items() for block in stage.get("params", [])}
    checked, run_cache_skipped, missed = 0, [], []
    baseline_keys = {}
    for stage in set(stage_of.values()):
        if dvc_probe.can_hash(stage):
            baseline_keys[stage] = dvc_probe.run_cache_key(stage)
            assert dvc_probe.run_cache_has(baseline_keys[stage]), f"{stage}: dvc commit left no run-cache entry"
        assert not dvc_probe.status_changed_blocks(stage), f"{stage}: changed before any edit"
    for block, raw in params.items():
        if block in BLOCKS_READ_BY_NO_STAGE:
            continue
        stage = stage_of[block]
        for i, key in enumerate(raw):
            new = changed_value(block, key, raw)
            dvc_probe.write_params({**params, block: {**raw, key: new}})
            try:
                changed = dvc_probe.status_changed_blocks(stage)
                if i == 0:  # once per block: the full `dvc status <stage>` path agrees
                    assert dvc_probe.repo_status_changed_blocks(stage) == changed, (block, key)
                if block not in changed:
                    missed.append(f"{block}.{key}={new!r}: dvc status does not report stage {stage} changed")
                if stage in baseline_keys:
                    key_now = dvc_probe.run_cache_key(stage)
                    if key_now == baseline_keys[stage] or dvc_probe.run_cache_has(key_now):
                        missed.append(
                            f"{block}.{key}={new!r}: the run-cache key of {stage} did not change "
                            "(dvc repro would say the stage is cached and restore the old outputs)"
                        )
                else:
                    run_cache_skipped.append(stage)
            finally:
                dvc_probe.restore()
            checked += 1
    assert not missed, "\n".join(missed)
    assert checked >= 100, checked
    # Only `report` is never run-cached: it is always_changed (it reads MLflow), so DVC reruns it anyway.
    assert set(run_cache_skipped) == {"report"}, set(run_cache_skipped)
    print(f"{checked} params keys checked in {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("path", [("size",), ("nfiles",), ("nested", "size")], ids=".".join)
def test_a_key_dvc_run_cache_ignores_changes_nothing_in_its_hash(dvc_probe: DvcProbe, path: tuple[str, ...]) -> None:
    """The bug, reproduced: such a key is seen by `dvc status` but not by the run-cache key.

    This documents the DVC behaviour and shows that the check above is sensitive to it.
    """
    params = yaml.safe_load(dvc_probe.baseline)
    before = dvc_probe.run_cache_key("faces")
    seen = []
    try:
        for value in (1, 96, 128):
            extra: Any = value
            for part in reversed(path):
                extra = {part: extra}
            dvc_probe.write_params({**params, "faces": {**params["faces"], **extra}})
            assert "faces" in dvc_probe.status_changed_blocks("faces")  # dvc status sees every value ...
            seen.append(dvc_probe.run_cache_key("faces"))
    finally:
        dvc_probe.restore()
    assert len(set(seen)) == 1  # ... the run-cache key sees none of them
    if len(path) == 1:
        # the key is dropped whole: the baseline run's entry is found ("Stage 'faces' is cached")
        assert seen[0] == before and dvc_probe.run_cache_has(before)


# --- a bad value fails at once ------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces_with_negative_crop_size(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python -m stages.faces` in a folder that holds only a params.yaml with faces.crop_size: -1."""
    folder = tmp_path_factory.mktemp("faces-bad-params")
    data = params_yaml()
    data["faces"]["crop_size"] = -1
    (folder / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'm.db'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.faces"],
        check=False,
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return folder, proc


def test_faces_with_a_negative_crop_size_fails_on_params_before_any_data(
    faces_with_negative_crop_size: tuple[Path, subprocess.CompletedProcess],
) -> None:
    """Before the rename, `faces.size: -1` exited 0: DVC restored the cached run and never ran the stage."""
    folder, proc = faces_with_negative_crop_size
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "faces.crop_size: got -1; allowed range [16, 1024]" in last, proc.stderr
    assert "manifest" not in proc.stderr  # it failed on params, not on the missing data/raw
    assert sorted(p.name for p in folder.iterdir()) == ["params.yaml"], "the stage wrote files before failing"


def test_faces_params_error_is_one_line(
    faces_with_negative_crop_size: tuple[Path, subprocess.CompletedProcess],
) -> None:
    _, proc = faces_with_negative_crop_size
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("faces: faces.crop_size"), proc.stderr
    assert proc.returncode == 2
