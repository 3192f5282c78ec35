"""The runs grouped into two *tracks* of *iterations*, with what changed and which one is best.

Tracks: classifier (train_classifier + evaluate) and generator (train_generator + fid). An *iteration*
pairs a training run with the evaluation run of the same iteration: the evaluation run with the same
``dvc_exp_name``, else the next evaluation run started after the training run and before the next one.
An evaluation run left over (only the evaluation re-ran, e.g. an ``evaluate`` param changed) is an
iteration of its own that reuses the previous training run.

The best iteration is chosen by the primary metric, or, when no iteration has it (e.g. FID without
Inception weights), by the first listed metric that some iteration has.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from core.params import ReportParams
from report.runs import (
    Artifacts,
    RunInfo,
    curve_keys,
    first_image,
    read_json_artifact,
    read_roc,
    resolve_metric,
    sample_grids,
    spread,
)

UPSTREAM_STAGES = ("download", "faces", "split")


@dataclass(frozen=True)
class TrackSpec:
    name: str  # classifier | generator
    title: str
    train_stage: str
    eval_stage: str
    blocks: tuple[str, ...]  # params blocks of this track (diffed between iterations)


CLASSIFIER = TrackSpec("classifier", "Classifier", "train_classifier", "evaluate", ("classifier", "evaluate"))
GENERATOR = TrackSpec("generator", "Generator", "train_generator", "fid", ("generator", "fid"))


@dataclass(frozen=True)
class Change:
    key: str
    old: str | None  # None: absent in the previous iteration
    new: str | None  # None: absent in this iteration


@dataclass(eq=False)
class Iteration:
    number: int  # 1-based, time order
    train: RunInfo | None
    eval: RunInfo | None
    reused_train_of: int | None = None  # evaluation-only iteration: number of the iteration whose training it reuses
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)  # configured name -> value
    metric_keys: dict[str, str] = field(default_factory=dict)  # configured name -> MLflow key found
    deltas: dict[str, float | None] = field(default_factory=dict)  # versus the previous iteration that had it
    better: dict[str, bool | None] = field(default_factory=dict)  # delta is an improvement (None: no change)
    changes: list[Change] = field(default_factory=list)
    roc: pd.DataFrame | None = None  # fpr, tpr (classifier)
    final_grid: tuple[int, bytes] | None = None  # (epoch, PNG) last sample grid (generator)
    eval_json: dict[str, Any] | None = None  # evaluation's metrics.json (latest, best)

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
    best: int | None = None  # index into iterations
    curves: dict[int, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)  # number -> key -> points
    epoch_grids: list[tuple[int, bytes]] = field(default_factory=list)  # best iteration, (epoch, PNG)
    confusion: bytes | None = None
    misclassified: bytes | None = None
    remarks: list[str] = field(default_factory=list)  # what was skipped and why
    requested_primary: str = ""  # the configured primary, when it was absent

    @property
    def best_iteration(self) -> Iteration | None:
        return self.iterations[self.best] if self.best is not None else None

    @property
    def latest_iteration(self) -> Iteration | None:
        return self.iterations[-1] if self.iterations else None

    def lower_better(self, name: str) -> bool:
        return name in self.lower_is_better


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
            pick = next(
                (
                    e
                    for e in later
                    if e.start < next_start and (not e.exp_name or not t.exp_name or e.exp_name == t.exp_name)
                ),
                None,
            )
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


def build_iterations(
    spec: TrackSpec, runs: Sequence[RunInfo], metric_names: Sequence[str], lower_is_better: frozenset[str]
) -> list[Iteration]:
    trains = [r for r in runs if r.stage == spec.train_stage]
    evals = [r for r in runs if r.stage == spec.eval_stage]
    iterations: list[Iteration] = []
    for train, ev in pair_runs(trains, evals):
        reused = None
        if train is None and ev is not None:
            owner = next(
                (it for it in reversed(iterations) if it.train is not None and it.train.start <= ev.start), None
            )
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
    scored = [(k, v) for k, it in enumerate(iterations) if (v := it.metrics.get(primary)) is not None]
    if not scored:
        return None
    pick = min if lower else max
    return pick(scored, key=lambda kv: kv[1])[0]


def build_track(spec: TrackSpec, runs: Sequence[RunInfo], p: ReportParams, client: Any, art: Artifacts) -> TrackData:
    if spec is CLASSIFIER:
        names, primary, wanted = list(p.classifier_metrics), p.classifier_primary, p.classifier_curves
    else:
        names, primary, wanted = list(p.generator_metrics), p.generator_primary, p.generator_curves
    lower = frozenset(p.lower_is_better)
    iterations = build_iterations(spec, runs, names, lower)
    used = next((m for m in [primary, *names] if any(it.metrics.get(m) is not None for it in iterations)), primary)
    track = TrackData(
        spec,
        names,
        used,
        lower,
        iterations,
        best_index(iterations, used, used in lower),
        requested_primary=primary if used != primary else "",
    )
    if not iterations:
        return track
    best, latest = track.best_iteration, track.latest_iteration
    for it in {id(x): x for x in (latest, best) if x is not None}.values():
        if it.train is not None:
            track.curves[it.number] = curve_keys(client, it.train, wanted, p.curve_exclude)
    recent = list(iterations[-p.max_curves :])
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
            track.confusion = first_image(art, source.eval, p.confusion_artifacts)
            track.misclassified = first_image(art, source.eval, p.misclassified_artifacts)
    else:
        for it in recent:
            found = [
                (epoch, run, path)
                for run in (it.train, it.eval)
                if run is not None
                for epoch, path in sample_grids(art, run, p.sample_artifacts)
            ]
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
