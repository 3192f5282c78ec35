"""What the report shows, gathered from the MLflow runs of the project (plus manifests and ``dvc exp show``).

Every stage execution is one MLflow run tagged ``stage``, ``dvc_exp_name``, ``note``, ``git_commit`` and
``data_manifest_sha1``, with params ``<block>.<key>``. Here the runs are grouped into two *tracks*
(classifier: train_classifier + evaluate; generator: train_generator + fid). An *iteration* pairs a
training run with the evaluation run of the same iteration: the evaluation run with the same
``dvc_exp_name``, else the next evaluation run started after the training run and before the next one.
An evaluation run left over (only the evaluation re-ran, e.g. an ``evaluate`` param changed) is an
iteration of its own that reuses the previous training run.

Metric names are resolved leniently (``roc_auc`` also finds ``test_roc_auc`` / ``test.roc_auc``; ``kid``
also ``generator.kid_mean``), so stages can rename metrics without breaking the report; a metric that
cannot be found is shown as missing, never guessed. The best iteration is chosen by the primary metric,
or, when no iteration has it (e.g. FID without Inception weights), by the first listed metric that some
iteration has.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from core.params import ReportParams

UPSTREAM_STAGES = ("download", "faces", "split")
STAGE_ORDER = ("download", "faces", "split", "train_classifier", "evaluate", "train_generator", "fid", "report")
SPLIT_SUMMARY = Path("data/splits/summary.json")
FACE_METRICS = Path("data/faces/metrics.json")
METRIC_PREFIXES = ("", "test_", "test.", "test/", "eval_", "eval.", "generator.")
METRIC_SUFFIXES = ("", "_mean", ".mean")


@dataclass(frozen=True)
class TrackSpec:
    name: str                 # classifier | generator
    title: str
    train_stage: str
    eval_stage: str
    blocks: tuple[str, ...]   # params blocks of this track (diffed between iterations)


CLASSIFIER = TrackSpec("classifier", "Classifier", "train_classifier", "evaluate", ("classifier", "evaluate"))
GENERATOR = TrackSpec("generator", "Generator", "train_generator", "fid", ("generator", "fid"))


@dataclass
class RunInfo:
    run_id: str
    stage: str
    status: str
    start: float              # seconds since the epoch
    end: float | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @property
    def exp_name(self) -> str:
        return self.tags.get("dvc_exp_name", "")

    @property
    def note(self) -> str:
        return self.tags.get("note") or self.tags.get("mlflow.note.content", "")

    @property
    def duration(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - self.start)

    @property
    def started(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.start))


@dataclass(frozen=True)
class Change:
    key: str
    old: str | None           # None: absent in the previous iteration
    new: str | None           # None: absent in this iteration


@dataclass(eq=False)
class Iteration:
    number: int               # 1-based, time order
    train: RunInfo | None
    eval: RunInfo | None
    reused_train_of: int | None = None  # evaluation-only iteration: number of the iteration whose training it reuses
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)   # configured name -> value
    metric_keys: dict[str, str] = field(default_factory=dict)        # configured name -> MLflow key found
    deltas: dict[str, float | None] = field(default_factory=dict)    # versus the previous iteration that had it
    better: dict[str, bool | None] = field(default_factory=dict)     # delta is an improvement (None: no change)
    changes: list[Change] = field(default_factory=list)
    roc: pd.DataFrame | None = None                                   # fpr, tpr (classifier)
    final_grid: tuple[int, bytes] | None = None                       # (epoch, PNG) last sample grid (generator)
    eval_json: dict[str, Any] | None = None                           # evaluation's metrics.json (latest, best)

    @property
    def note(self) -> str:
        own = self.eval if self.reused_train_of is not None else (self.train or self.eval)
        return own.note if own else ""

    @property
    def exp_name(self) -> str:
        own = self.eval if self.reused_train_of is not None else (self.train or self.eval)
        return own.exp_name if own else ""


@dataclass(eq=False)
class TrackData:
    spec: TrackSpec
    metric_names: list[str]
    primary: str
    lower_is_better: frozenset[str]
    iterations: list[Iteration]
    best: int | None = None                                           # index into iterations
    curves: dict[int, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)  # number -> key -> points
    epoch_grids: list[tuple[int, bytes]] = field(default_factory=list)  # best iteration, (epoch, PNG)
    confusion: bytes | None = None
    misclassified: bytes | None = None
    remarks: list[str] = field(default_factory=list)                  # what was skipped and why
    requested_primary: str = ""                                       # the configured primary, when it was absent

    @property
    def best_iteration(self) -> Iteration | None:
        return self.iterations[self.best] if self.best is not None else None

    @property
    def latest_iteration(self) -> Iteration | None:
        return self.iterations[-1] if self.iterations else None

    def lower_better(self, name: str) -> bool:
        return name in self.lower_is_better


@dataclass(frozen=True)
class DvcExp:
    name: str
    rev: str
    baseline: str
    timestamp: str


@dataclass
class SetupData:
    data_params: dict[str, str]
    faces_params: dict[str, str]
    split_params: dict[str, str]
    split_summary: dict[str, Any] | None
    face_metrics: dict[str, Any] | None
    hardware: dict[str, str]
    devices: dict[str, str]                       # stage -> device tag of its latest run
    wall_times: list[dict[str, Any]]              # stage, runs, latest_s, median_s, total_s


@dataclass
class ReportData:
    experiment: str
    tracking_uri: str
    generated: str
    runs: list[RunInfo]
    left_out: dict[str, dict[str, int]]           # stage -> status -> count (runs not FINISHED)
    tracks: list[TrackData]
    setup: SetupData
    dvc_exps: list[DvcExp]
    dvc_error: str | None


# ---------------------------------------------------------------- runs


def load_runs(client: Any, experiment: str, exclude: str | None = None
              ) -> tuple[list[RunInfo], dict[str, dict[str, int]]]:
    """Finished runs of ``experiment`` (time order) and counts of the others per stage and status.

    ``exclude``: a run id left out entirely (the report's own run, still RUNNING).
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], {}
    finished: list[RunInfo] = []
    left_out: dict[str, Counter] = {}
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"],
                                  page_token=token)
        for run in page:
            info = _run_info(run)
            if info.run_id == exclude:
                continue
            if info.status == "FINISHED":
                finished.append(info)
            else:
                left_out.setdefault(info.stage or "untagged", Counter())[info.status] += 1
        token = page.token
        if not token:
            break
    finished.sort(key=lambda r: (r.start, r.run_id))
    return finished, {stage: dict(c) for stage, c in left_out.items()}


def _run_info(run: Any) -> RunInfo:
    info, data = run.info, run.data
    return RunInfo(run_id=info.run_id, stage=data.tags.get("stage", ""), status=info.status,
                   start=(info.start_time or 0) / 1000.0,
                   end=info.end_time / 1000.0 if info.end_time else None,
                   params=dict(data.params), metrics=dict(data.metrics), tags=dict(data.tags))


def resolve_metric(metrics: dict[str, float], name: str) -> str | None:
    """The MLflow key that holds metric ``name`` (exact first, then test_/test./_mean variants)."""
    for prefix in METRIC_PREFIXES:
        for suffix in METRIC_SUFFIXES:
            key = f"{prefix}{name}{suffix}"
            if key in metrics:
                return key
    return None


# ---------------------------------------------------------------- iterations


def pair_runs(trains: Sequence[RunInfo], evals: Sequence[RunInfo]) -> list[tuple[RunInfo | None, RunInfo | None]]:
    """(train, eval) pairs: same dvc_exp_name, else the next eval started before the next training run.

    Evaluation runs left over come back as ``(None, eval)``; training runs without an evaluation as
    ``(train, None)``. Pairs are in time order.
    """
    trains = sorted(trains, key=lambda r: r.start)
    evals = sorted(evals, key=lambda r: r.start)
    used: set[str] = set()
    pairs: list[tuple[RunInfo | None, RunInfo | None]] = []
    for i, t in enumerate(trains):
        next_start = trains[i + 1].start if i + 1 < len(trains) else float("inf")
        later = [e for e in evals if e.run_id not in used and e.start >= t.start]
        pick = next((e for e in later if t.exp_name and e.exp_name == t.exp_name), None)
        if pick is None:
            pick = next((e for e in later if e.start < next_start
                         and (not e.exp_name or not t.exp_name or e.exp_name == t.exp_name)), None)
        if pick is not None:
            used.add(pick.run_id)
        pairs.append((t, pick))
    pairs += [(None, e) for e in evals if e.run_id not in used]
    pairs.sort(key=lambda p: min(r.start for r in p if r is not None))
    return pairs


def upstream_runs(runs: Sequence[RunInfo], before: float, exp_name: str) -> list[RunInfo]:
    """Per upstream stage, the latest finished run started before ``before`` (same experiment name preferred)."""
    out = []
    for stage in UPSTREAM_STAGES:
        earlier = [r for r in runs if r.stage == stage and r.start <= before]
        same = [r for r in earlier if exp_name and r.exp_name == exp_name]
        if same or earlier:
            out.append((same or earlier)[-1])
    return out


def iteration_params(train: RunInfo | None, ev: RunInfo | None, upstream: Iterable[RunInfo]) -> dict[str, str]:
    """Params of the iteration's runs plus pseudo-params for the inputs and code it ran on."""
    params: dict[str, str] = {}
    for run in (*upstream, train, ev):
        if run is None:
            continue
        params.update(run.params)
        sha = run.tags.get("data_manifest_sha1")
        if sha:
            params[f"input of {run.stage} (sha1)"] = sha[:10]
    main = train or ev
    if main is not None and main.tags.get("git_commit"):
        params["code (git commit)"] = main.tags["git_commit"][:8]
    return params


def params_diff(old: dict[str, str] | None, new: dict[str, str], blocks: Sequence[str]) -> list[Change]:
    """Changed params between two iterations, the track's own blocks first, then the rest."""
    if old is None:
        return []
    keys = sorted(set(old) | set(new))
    own = tuple(f"{b}." for b in blocks)
    changes = [Change(k, old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)]
    return sorted(changes, key=lambda c: (not c.key.startswith(own), c.key))


def build_iterations(spec: TrackSpec, runs: Sequence[RunInfo], metric_names: Sequence[str],
                     lower_is_better: frozenset[str]) -> list[Iteration]:
    trains = [r for r in runs if r.stage == spec.train_stage]
    evals = [r for r in runs if r.stage == spec.eval_stage]
    iterations: list[Iteration] = []
    for train, ev in pair_runs(trains, evals):
        reused = None
        if train is None and ev is not None:
            owner = next((it for it in reversed(iterations) if it.train is not None and it.train.start <= ev.start),
                         None)
            if owner is not None:
                train, reused = owner.train, owner.number
        it = Iteration(number=len(iterations) + 1, train=train, eval=ev, reused_train_of=reused)
        anchor = train.start if train is not None else ev.start  # type: ignore[union-attr]
        it.params = iteration_params(train, ev, upstream_runs(runs, anchor, it.exp_name))
        for name in metric_names:
            key = resolve_metric(ev.metrics, name) if ev is not None else None
            it.metric_keys[name] = key or ""
            it.metrics[name] = ev.metrics[key] if ev is not None and key else None
        iterations.append(it)
    for k, it in enumerate(iterations):
        it.changes = params_diff(iterations[k - 1].params if k else None, it.params, spec.blocks)
        for name in metric_names:
            prev = next((p.metrics[name] for p in reversed(iterations[:k]) if p.metrics.get(name) is not None), None)
            value = it.metrics.get(name)
            if value is None or prev is None:
                it.deltas[name], it.better[name] = None, None
                continue
            delta = value - prev
            it.deltas[name] = delta
            it.better[name] = None if delta == 0 else (delta < 0) == (name in lower_is_better)
    return iterations


def best_index(iterations: Sequence[Iteration], primary: str, lower: bool) -> int | None:
    scored = [(k, it.metrics.get(primary)) for k, it in enumerate(iterations)]
    scored = [(k, v) for k, v in scored if v is not None]
    if not scored:
        return None
    pick = min if lower else max
    return pick(scored, key=lambda kv: kv[1])[0]


# ---------------------------------------------------------------- artifacts and histories


class Artifacts:
    """Listing and reading run artifacts; every failure becomes a remark instead of an exception."""

    def __init__(self, client: Any, workdir: Path) -> None:
        self.client = client
        self.workdir = workdir
        self.remarks: list[str] = []
        self._listing: dict[str, list[str]] = {}

    def paths(self, run_id: str) -> list[str]:
        if run_id not in self._listing:
            try:
                self._listing[run_id] = sorted(self._walk(run_id, None))
            except Exception as err:  # noqa: BLE001 - any store error is reported, the report goes on
                self.remarks.append(f"artifacts of run {run_id[:8]} could not be listed: {err}")
                self._listing[run_id] = []
        return self._listing[run_id]

    def _walk(self, run_id: str, path: str | None) -> list[str]:
        out: list[str] = []
        for f in self.client.list_artifacts(run_id, path):
            out += self._walk(run_id, f.path) if f.is_dir else [f.path]
        return out

    def matching(self, run_id: str, patterns: Sequence[str]) -> list[str]:
        """Artifact paths matching any pattern (case-insensitive), the shortest file name first."""
        hits = [p for p in self.paths(run_id) if any(fnmatch.fnmatch(p.lower(), pat.lower()) for pat in patterns)]
        return sorted(hits, key=lambda p: (len(Path(p).name), p))

    def read(self, run_id: str, path: str) -> bytes | None:
        try:
            dst = Path(tempfile.mkdtemp(dir=self.workdir))
            local = self.client.download_artifacts(run_id, path, dst_path=str(dst))
            return Path(local).read_bytes()
        except Exception as err:  # noqa: BLE001
            self.remarks.append(f"artifact {path} of run {run_id[:8]} could not be read: {err}")
            return None


def read_roc(art: Artifacts, run: RunInfo, patterns: Sequence[str]) -> pd.DataFrame | None:
    for path in art.matching(run.run_id, patterns):
        raw = art.read(run.run_id, path)
        if raw is None:
            continue
        try:
            frame = pd.read_csv(io.BytesIO(raw))
        except (ValueError, pd.errors.ParserError) as err:
            art.remarks.append(f"{path} of run {run.run_id[:8]} is not a readable CSV: {err}")
            continue
        cols = {c.lower().strip(): c for c in frame.columns}
        if "fpr" in cols and "tpr" in cols:
            out = frame[[cols["fpr"], cols["tpr"]]].apply(pd.to_numeric, errors="coerce").dropna()
            out.columns = ["fpr", "tpr"]
            return out.sort_values(["fpr", "tpr"]).reset_index(drop=True)
        art.remarks.append(f"{path} of run {run.run_id[:8]} has no fpr,tpr columns (has {list(frame.columns)})")
    return None


def epoch_of(path: str) -> int | None:
    numbers = re.findall(r"\d+", Path(path).stem)
    return int(numbers[-1]) if numbers else None


def sample_grids(art: Artifacts, run: RunInfo, patterns: Sequence[str]) -> list[tuple[int, str]]:
    """(epoch, artifact path) of the run's sample grids, by epoch (the first file per epoch)."""
    by_epoch: dict[int, str] = {}
    for path in art.matching(run.run_id, patterns):
        epoch = epoch_of(path)
        if epoch is not None and path.lower().endswith(".png"):
            by_epoch.setdefault(epoch, path)
    return sorted(by_epoch.items())


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """At most ``n`` items evenly spread over ``items``, first and last included."""
    if len(items) <= n:
        return list(items)
    if n == 1:
        return [items[-1]]
    idx = sorted({round(k * (len(items) - 1) / (n - 1)) for k in range(n)})
    return [items[i] for i in idx]


def curve_keys(client: Any, run: RunInfo, wanted: Sequence[str], exclude: Sequence[str]
               ) -> dict[str, list[tuple[int, float]]]:
    """Metric histories (step, value) of a training run: ``wanted`` keys, or every per-epoch metric."""
    keys = [k for k in wanted if k in run.metrics]
    auto = not keys
    if auto:
        keys = [k for k in sorted(run.metrics) if not any(fnmatch.fnmatch(k, pat) for pat in exclude)]
    out: dict[str, list[tuple[int, float]]] = {}
    for key in keys:
        points = sorted((int(m.step), float(m.value)) for m in client.get_metric_history(run.run_id, key))
        if not auto or len(points) > 1:
            out[key] = points
    return out


# ---------------------------------------------------------------- tracks


def build_track(spec: TrackSpec, runs: Sequence[RunInfo], p: ReportParams, client: Any, art: Artifacts) -> TrackData:
    if spec is CLASSIFIER:
        names, primary, wanted = list(p.classifier_metrics), p.classifier_primary, p.classifier_curves
    else:
        names, primary, wanted = list(p.generator_metrics), p.generator_primary, p.generator_curves
    lower = frozenset(p.lower_is_better)
    iterations = build_iterations(spec, runs, names, lower)
    used = next((m for m in [primary, *names] if any(it.metrics.get(m) is not None for it in iterations)), primary)
    track = TrackData(spec, names, used, lower, iterations, best_index(iterations, used, used in lower),
                      requested_primary=primary if used != primary else "")
    if not iterations:
        return track
    best, latest = track.best_iteration, track.latest_iteration
    for it in {id(x): x for x in (latest, best) if x is not None}.values():
        if it.train is not None:
            track.curves[it.number] = curve_keys(client, it.train, wanted, p.curve_exclude)
    recent = list(iterations[-p.max_curves:])
    if best is not None and all(it is not best for it in recent):
        recent.insert(0, best)
    if spec is CLASSIFIER:
        for it in recent:
            if it.eval is not None:
                it.roc = read_roc(art, it.eval, p.roc_artifacts)
        for it in {id(x): x for x in (latest, best) if x is not None}.values():
            if it.eval is not None:
                it.eval_json = read_json_artifact(art, it.eval, "metrics.json")
        source = best or latest
        if source is not None and source.eval is not None:
            track.confusion = _first_image(art, source.eval, p.confusion_artifacts)
            track.misclassified = _first_image(art, source.eval, p.misclassified_artifacts)
    else:
        for it in recent:
            found = [(epoch, run, path) for run in (it.train, it.eval) if run is not None
                     for epoch, path in sample_grids(art, run, p.sample_artifacts)]
            if found:
                epoch, run, path = max(found, key=lambda f: f[0])
                raw = art.read(run.run_id, path)
                it.final_grid = (epoch, raw) if raw is not None else None
        source = best or latest
        if source is not None and source.train is not None:
            for epoch, path in spread(sample_grids(art, source.train, p.sample_artifacts), p.grid_epochs):
                raw = art.read(source.train.run_id, path)
                if raw is not None:
                    track.epoch_grids.append((epoch, raw))
    return track


def read_json_artifact(art: Artifacts, run: RunInfo, path: str) -> dict[str, Any] | None:
    """The run's JSON artifact at ``path`` as a dict; None (with a remark when unreadable) otherwise."""
    if path not in art.paths(run.run_id) or (raw := art.read(run.run_id, path)) is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError as err:
        art.remarks.append(f"{path} of run {run.run_id[:8]} is not valid JSON: {err}")
        return None
    return data if isinstance(data, dict) else None


def _first_image(art: Artifacts, run: RunInfo, patterns: Sequence[str]) -> bytes | None:
    for path in art.matching(run.run_id, patterns):
        if path.lower().endswith(".png") and (raw := art.read(run.run_id, path)) is not None:
            return raw
    return None


# ---------------------------------------------------------------- setup facts


def read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def hardware() -> dict[str, str]:
    """The machine that runs the report (the runs' own devices are in their tags)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(errors="replace"), re.M)
        cpu = model.group(1).strip() if model else cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = {"CPU": cpu, "CPU cores": f"{os.cpu_count()} logical, {usable} usable by this process",
           "Python": platform.python_version(), "OS": platform.platform()}
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        mem = re.search(r"^MemTotal:\s*(\d+) kB", meminfo.read_text(), re.M)
        if mem:
            out["Memory"] = f"{int(mem.group(1)) / 1024 ** 2:.1f} GiB"
    try:
        out["torch"] = importlib.metadata.version("torch")
        import torch

        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            out["CUDA"] = f"{torch.version.cuda}: {names}"
        else:
            out["CUDA"] = f"not available (torch built with CUDA {torch.version.cuda or 'none'})"
    except (importlib.metadata.PackageNotFoundError, ImportError):
        out["torch"] = "not installed"
    return out


def wall_times(runs: Sequence[RunInfo]) -> list[dict[str, Any]]:
    rows = []
    stages = sorted({r.stage for r in runs}, key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else 99, s))
    for stage in stages:
        durations = [d for r in runs if r.stage == stage and (d := r.duration) is not None]
        if durations:
            rows.append({"stage": stage, "runs": len(durations), "latest_s": durations[-1],
                         "median_s": statistics.median(durations), "total_s": sum(durations)})
    return rows


def devices(runs: Sequence[RunInfo]) -> dict[str, str]:
    """stage -> the device of its latest run, with the data-parallel process count when > 1."""
    out: dict[str, str] = {}
    for run in runs:  # time order: the latest wins
        device = next((v for k, v in run.tags.items() if k.endswith(".device")), None)
        world = next((v for k, v in run.tags.items() if k.endswith(".world_size")), "1")
        if device is not None:
            out[run.stage] = device if world == "1" else f"{device} × {world} processes"
    return out


def latest_params(runs: Sequence[RunInfo], stage: str) -> dict[str, str]:
    mine = [r for r in runs if r.stage == stage]
    return dict(mine[-1].params) if mine else {}


def setup_data(runs: Sequence[RunInfo]) -> SetupData:
    return SetupData(data_params=latest_params(runs, "download"), faces_params=latest_params(runs, "faces"),
                     split_params=latest_params(runs, "split"), split_summary=read_json(SPLIT_SUMMARY),
                     face_metrics=read_json(FACE_METRICS), hardware=hardware(), devices=devices(runs),
                     wall_times=wall_times(runs))


# ---------------------------------------------------------------- dvc exp show


def dvc_experiments(repo: Path, timeout: float) -> tuple[list[DvcExp], str | None]:
    """Experiments listed by ``dvc exp show --json`` in ``repo``; an error message instead when it fails."""
    exe = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        proc = subprocess.run([exe, "exp", "show", "--json", "--all-commits"], cwd=repo, capture_output=True, text=True,
                              timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as err:
        return [], f"dvc exp show did not run: {err}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return [], f"dvc exp show failed: {lines[-1] if lines else f'exit {proc.returncode}'}"
    try:
        return parse_exp_show(json.loads(proc.stdout)), None
    except (json.JSONDecodeError, AttributeError, TypeError) as err:
        return [], f"dvc exp show output not understood: {err}"


def parse_exp_show(entries: list[dict[str, Any]]) -> list[DvcExp]:
    out: list[DvcExp] = []
    for commit in entries:
        baseline = (commit.get("name") or str(commit.get("rev", ""))[:7]) or "?"
        for group in commit.get("experiments") or []:
            for rev in group.get("revs") or []:
                data = rev.get("data") or {}
                out.append(DvcExp(name=rev.get("name") or group.get("name") or "", rev=str(rev.get("rev", ""))[:7],
                                  baseline=baseline, timestamp=str(data.get("timestamp") or "")))
    return out


# ---------------------------------------------------------------- everything


def collect(p: ReportParams, experiment: str, uri: str, repo: Path | None, exclude: str | None = None) -> ReportData:
    """Read every finished run of ``experiment`` at ``uri`` into a ReportData (artifacts read into memory)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs, left_out = load_runs(client, experiment, exclude)
    with tempfile.TemporaryDirectory(prefix="report-artifacts-") as tmp:
        art = Artifacts(client, Path(tmp))
        tracks = [build_track(spec, runs, p, client, art) for spec in (CLASSIFIER, GENERATOR)]
        for track in tracks:
            track.remarks += [r for r in art.remarks if r not in track.remarks]
            art.remarks.clear()
    exps, dvc_error = dvc_experiments(repo, p.dvc_timeout_s) if (p.dvc_exp_show and repo is not None) else (
        [], "dvc exp show not asked for (report.dvc_exp_show: false)")
    return ReportData(experiment=experiment, tracking_uri=uri, generated=time.strftime("%Y-%m-%d %H:%M:%S"),
                      runs=runs, left_out=left_out, tracks=tracks, setup=setup_data(runs), dvc_exps=exps,
                      dvc_error=dvc_error)


def summary(data: ReportData) -> dict[str, Any]:
    """The iteration tables as JSON (results/report/iterations.json): what the report shows, machine-readable."""
    tracks: dict[str, Any] = {}
    for track in data.tracks:
        rows = []
        for it in track.iterations:
            rows.append({
                "number": it.number, "train_run": it.train.run_id if it.train else None,
                "eval_run": it.eval.run_id if it.eval else None, "reused_train_of": it.reused_train_of,
                "exp_name": it.exp_name, "note": it.note, "best": it is track.best_iteration,
                "changes": [{"key": c.key, "old": c.old, "new": c.new} for c in it.changes],
                "metrics": it.metrics, "metric_keys": it.metric_keys, "deltas": it.deltas, "better": it.better,
                "has_roc": it.roc is not None, "final_grid_epoch": it.final_grid[0] if it.final_grid else None,
            })
        best = track.best_iteration
        tracks[track.spec.name] = {"primary": track.primary, "requested_primary": track.requested_primary or None,
                                   "best": best.number if best else None,
                                   "iterations": rows, "remarks": track.remarks}
    return {"experiment": data.experiment, "generated": data.generated, "runs": len(data.runs),
            "left_out": data.left_out, "tracks": tracks, "dvc_error": data.dvc_error,
            "dvc_experiments": len(data.dvc_exps)}
