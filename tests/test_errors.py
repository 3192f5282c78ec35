"""One error style: a problem the user can fix is one line on stderr (`<stage>: what went wrong — what to do`)
and exit code 2, never a traceback; every stage and CLI answers --help without running.

The `python -m stages.<name>` runs that must go through a real interpreter start are started together (one
module-scoped fixture) so the suite waits for the slowest import only; --help, unknown arguments and a bad
param of every block run the entry module's file as ``__main__`` in this process (runpy), which exercises the
same ``if __name__ == "__main__"`` wiring without paying an interpreter start each.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from core.errors import InputError, MissingInputError, PipelineError, one_line
from core.params import ParamsError
from core.schema import FACE_COLUMNS
from generator import extractors as ex
from generator import fidelity as fd
from tests.conftest import PROJECT_ROOT
from tests.helpers import noise_jpeg, write_file

# entry point -> the params block it reads (None: a CLI that reads its settings from a checkpoint)
STAGES = {
    "download": "data",
    "faces": "faces",
    "split": "split",
    "train_classifier": "classifier",
    "evaluate": "evaluate",
    "train_generator": "generator",
    "fid": "fid",
    "report": "report",
}
CLIS = ("predict", "sample")


def params_yaml() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def assert_one_line(
    proc_or_err: subprocess.CompletedProcess | str, stage: str, *needles: str, returncode: int | None = 2
) -> str:
    """stderr is exactly one line, starts with ``<stage>: ``, holds every needle; no traceback."""
    if isinstance(proc_or_err, subprocess.CompletedProcess):
        stderr = proc_or_err.stderr
        assert proc_or_err.returncode == returncode, stderr
    else:
        stderr = proc_or_err
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{stage}: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- the error type and its line ----------------------------------------------------------------


def test_the_line_says_what_went_wrong_and_what_to_do() -> None:
    e = PipelineError("data/x.csv not found", "run stage split first")
    assert str(e) == "data/x.csv not found"  # the message alone (tests match on it)
    assert e.line("fid") == "fid: data/x.csv not found — run stage split first"
    assert PipelineError("no hint").line("split") == "split: no hint"
    two_lines = PipelineError("split: already named\n  over two lines")
    assert two_lines.line("split") == "split: already named over two lines"
    assert one_line("a\n\n  - b\n") == "a - b"
    # the user-error types stay what callers catch them as
    assert isinstance(InputError("x"), ValueError) and isinstance(MissingInputError("x"), FileNotFoundError)
    err = ParamsError("faces.margin: got 'abc' (str); expected float")
    assert isinstance(err, PipelineError) and isinstance(err, ValueError)
    assert err.line("faces") == (
        "faces: faces.margin: got 'abc' (str); expected float — fix it in params.yaml (or dvc exp run -S <key>=<value>)"
    )


def test_every_user_error_type_is_a_pipeline_error() -> None:
    from classifier.checkpoint import CheckpointError
    from classifier.data import ClassifierDataError
    from core.pretrained import MissingPretrainedWeights
    from sources.folder import FolderLayoutError
    from sources.hub import DownloadError, SourceUnavailableError
    from sources.split import SplitError

    for cls in (
        ParamsError,
        CheckpointError,
        ClassifierDataError,
        MissingPretrainedWeights,
        FolderLayoutError,
        DownloadError,
        SourceUnavailableError,
        SplitError,
        InputError,
        MissingInputError,
    ):
        assert issubclass(cls, PipelineError), cls


# --- --help, unknown arguments, a bad param: every entry point, in this process ------------------


def run_main(module: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``python -m stages.<module> argv...`` as __main__ here; (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = [f"python -m stages.{module}", *argv]
    try:
        with pytest.raises(SystemExit) as info:
            runpy.run_path(str(PROJECT_ROOT / "stages" / f"{module}.py"), run_name="__main__")
    finally:
        sys.argv = old
    out = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out.out, out.err


@pytest.fixture
def empty_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """cwd = a folder holding only params.yaml (no data, no MLflow DB)."""
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never-created.db'}")
    yield tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"], "the entry point wrote files"


@pytest.mark.parametrize("module", [*STAGES, *CLIS])
def test_help_answers_without_running(module: str, empty_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(module, ["--help"], capsys)
    assert code == 0 and err == ""
    assert out.startswith(f"usage: python -m stages.{module}")
    if module in STAGES:
        assert f"params block: {STAGES[module]}" in out and "writes: " in out
        assert "Takes no arguments" in out
    else:
        assert "--checkpoint" in out and "Reads no params block" in out


@pytest.mark.parametrize("module", [*STAGES, *CLIS])
def test_an_unknown_argument_is_one_line(module: str, empty_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    required = {"predict": ["x.png"], "sample": ["--n", "1", "--out", "samples"]}.get(module, [])
    code, _, err = run_main(module, [*required, "--no-such-option"], capsys)
    assert code == 2
    assert_one_line(err, module, "--no-such-option", f"see python -m stages.{module} --help")


def first_number_key(block: dict) -> str:
    return next(k for k, v in block.items() if isinstance(v, (int, float)) and not isinstance(v, bool))


@pytest.mark.parametrize("module", list(STAGES))
def test_a_bad_param_is_one_line_in_every_stage(
    module: str, empty_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    block = STAGES[module]
    data = params_yaml()
    key = first_number_key(data[block])
    data[block][key] = "abc"
    (empty_project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    code, _, err = run_main(module, [], capsys)
    assert code == 2
    assert_one_line(err, module, f"{block}.{key}: got 'abc'", "params.yaml")


# --- real interpreter starts, run together -------------------------------------------------------


def faces_manifest(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """A faces manifest with kept faces: (label, group) per row."""
    frame = pd.DataFrame({c: [""] * len(rows) for c in FACE_COLUMNS})
    frame["id"] = [f"{i:04d}" for i in range(len(rows))]
    frame["label"] = [label for label, _ in rows]
    frame["generator"] = ["real" if label == "real" else "gen" for label, _ in rows]
    frame["group"] = [group for _, group in rows]
    frame["status"] = "ok"
    return frame


def project(root: Path, name: str, **blocks: dict) -> Path:
    folder = root / name
    folder.mkdir()
    data = params_yaml()
    for block, values in blocks.items():
        data[block].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Each case: a project folder and `python -m stages.<module> args` run in it (all started at once)."""
    root = tmp_path_factory.mktemp("errors")
    cases: dict[str, tuple[Path, list[str]]] = {}

    cases["faces_margin"] = (project(root, "faces_margin", faces={"margin": "abc"}), ["faces"])
    only_real = project(root, "only_real", data={"source": "folder:set", "per_source": "all"})
    for i in range(3):
        write_file(only_real / "set" / "real" / f"r{i}.jpg", noise_jpeg(i))
    cases["only_real"] = (only_real, ["download"])
    only_fake = project(root, "only_fake", data={"source": "folder:set", "per_source": "all"})
    for i in range(3):
        write_file(only_fake / "set" / "train" / "fake" / f"f{i}.jpg", noise_jpeg(i))
    cases["only_fake"] = (only_fake, ["download"])
    a_file = project(root, "a_file", data={"source": "folder:set.zip"})
    (a_file / "set.zip").write_bytes(b"PK")
    cases["a_file"] = (a_file, ["download"])

    one_label = project(root, "one_label")
    faces_manifest([("real", f"g{i}") for i in range(20)]).to_csv(one_label / "manifest.csv", index=False)
    cases["split_one_label"] = (one_label, ["split"])
    one_group = project(root, "one_group")  # every fake in one group: only one split can get fakes
    faces_manifest([("real", f"g{i}") for i in range(30)] + [("fake", "F")] * 5).to_csv(
        one_group / "manifest.csv", index=False
    )
    cases["split_one_group"] = (one_group, ["split"])

    for name, value in (("zero", "0"), ("negative", "-1")):
        folder = project(root, f"predict_{name}")
        cases[f"predict_{name}"] = (folder, ["predict", "x.png", "--out", "scores.csv", "--batch-size", value])
    cases["sample_zero"] = (project(root, "sample_zero"), ["sample", "--n", "0", "--out", "samples"])

    for folder, _ in cases.values():
        if (folder / "manifest.csv").exists():
            (folder / "data" / "faces").mkdir(parents=True)
            (folder / "manifest.csv").rename(folder / "data" / "faces" / "manifest.csv")
    procs = {}
    for name, (folder, (module, *args)) in cases.items():
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'm.db'}"}
        procs[name] = (
            folder,
            subprocess.Popen(
                [sys.executable, "-m", f"stages.{module}", *args],
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    out = {}
    for name, (folder, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[name] = (folder, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


def test_bad_faces_margin(runs: dict) -> None:
    folder, proc = runs["faces_margin"]
    assert_one_line(proc, "faces", "faces.margin: got 'abc' (str); expected float", " — ")
    assert not (folder / "data").exists() and not (folder / "m.db").exists()


def test_a_folder_with_only_reals_or_only_fakes_fails_in_download(runs: dict) -> None:
    folder, proc = runs["only_real"]
    assert_one_line(proc, "download", "has real/ but no fake/ folder", "needs both labels", "add fake images")
    assert not (folder / "data").exists() and not (folder / "m.db").exists()  # before any work or MLflow run
    _, proc = runs["only_fake"]  # the pre-split layout: train/fake/ only
    assert_one_line(proc, "download", "has fake/ but no real/ folder", "needs both labels")


def test_a_source_that_is_a_file_is_one_line(runs: dict) -> None:
    _, proc = runs["a_file"]
    assert_one_line(proc, "download", "set.zip is a file, not a folder")


def test_split_needs_both_labels_everywhere(runs: dict) -> None:
    folder, proc = runs["split_one_label"]
    assert_one_line(proc, "split", "the faces hold no fake face", "needs both labels", " — give data.source fake")
    assert not (folder / "data" / "splits").exists() and not (folder / "m.db").exists()
    _, proc = runs["split_one_group"]
    line = assert_one_line(proc, "split", "would hold no fake face", "every split needs both labels", " — ")
    assert "data.per_source" in line and "split.train" in line


@pytest.mark.parametrize("case", ["predict_zero", "predict_negative"])
def test_predict_batch_size_must_be_positive(runs: dict, case: str) -> None:
    folder, proc = runs[case]
    assert_one_line(proc, "predict", "--batch-size", "expected a positive integer")
    assert not (folder / "scores.csv").exists()


def test_sample_n_must_be_positive(runs: dict) -> None:
    folder, proc = runs["sample_zero"]
    assert_one_line(proc, "sample", "--n", "expected a positive integer")
    assert not (folder / "samples").exists()


# --- in-process user errors that need data ---------------------------------------------------------


def test_a_folder_whose_fakes_are_all_skipped_fails_in_download(in_tmp_project: Path) -> None:
    from stages import download
    from tests.helpers import set_params

    for i in range(3):
        write_file(in_tmp_project / "set" / "real" / f"r{i}.jpg", noise_jpeg(i, size=80))
        write_file(in_tmp_project / "set" / "fake" / "g" / f"f{i}.jpg", noise_jpeg(10 + i, size=32))
    set_params(in_tmp_project / "params.yaml", "data", source="folder:set", per_source="all", min_side=64)
    with pytest.raises(InputError) as info:
        download.main()
    line = info.value.line("download")
    assert "all 3 fake images were skipped (most often: too small)" in line and "lower data.min_side" in line
    assert not (in_tmp_project / "data" / "raw").exists()


def test_min_side_goes_into_the_raw_summary(in_tmp_project: Path) -> None:
    import json

    from stages import download
    from tests.helpers import set_params

    for i in range(2):
        write_file(in_tmp_project / "set" / "real" / f"r{i}.jpg", noise_jpeg(i))
        write_file(in_tmp_project / "set" / "fake" / f"f{i}.jpg", noise_jpeg(10 + i))
    set_params(in_tmp_project / "params.yaml", "data", source="folder:set", per_source="all", min_side=40)
    download.main()
    assert json.loads((in_tmp_project / "data/raw/summary.json").read_text())["min_side"] == 40


# --- Inception weights are never unpickled as code -------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker`` (what a tampered weights file could do, harmlessly)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def tampered_weights(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "payload": _Payload(marker)}, path)
    return path


def test_the_payload_would_run_if_unpickled(tmp_path: Path) -> None:
    """The check below means something: torch-fidelity's own load (weights_only=False) runs it."""
    marker = tmp_path / "ran"
    torch.load(tampered_weights(tmp_path / "w.pth", marker), weights_only=False)
    assert marker.exists()


def test_tampered_inception_weights_are_never_unpickled(tmp_path: Path) -> None:
    no_mobilenet = ex.WeightsStatus(None, "", "", False, "off", "")
    marker = tmp_path / "ran"

    # a file set in fid.inception_weights: read as plain tensors only, refused with one line
    configured = ex.resolve_inception_weights(str(tampered_weights(tmp_path / "mine.pth", marker)))
    with pytest.raises(InputError, match="not torch-fidelity's Inception weights") as info:
        fd.build_extractors(configured, no_mobilenet, batch_size=2, cuda=False)
    assert " — download " in info.value.line("fid")
    with pytest.raises(InputError):
        fd.Features(ex.INCEPTION, ex.INCEPTION_LAYER, configured.path, cuda=False)
    assert not marker.exists()

    # the official file name in the torch hub cache, but not its bytes: refused before any load
    hub = tmp_path / "hub"
    tampered_weights(ex.inception_hub_path(hub), marker)
    found = ex.resolve_inception_weights("", hub_dir=hub)
    assert found.origin == "hub-cache" and not found.verified
    with pytest.raises(InputError, match="refusing to load it"):
        fd.build_extractors(found, no_mobilenet, batch_size=2, cuda=False)
    assert not marker.exists()
