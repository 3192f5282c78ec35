"""The report's sections as blocks of report.document (setup, one part per track, the appendix): ``build_document``."""

from __future__ import annotations

from typing import Any

from core.params import ReportParams
from core.schema import SPLITS
from report.collect import ReportData
from report.document import MISSING, Block, Cell, Figure, Heading, Para, Span, Table, fmt, fmt_delta, fmt_seconds
from report.federated import federated_blocks
from report.figures import curves_figure, metrics_figure, montage, roc_figure
from report.iterations import CLASSIFIER, Iteration, TrackData, TrackSpec
from report.runs import RunInfo
from report.shortcuts import shortcut_blocks, warnings_column
from report.study import study_blocks
from report.uncertainty import uncertainty_blocks

MAX_CHANGES_SHOWN = 8


def kv_table(caption: str, pairs: dict[str, Any], key_header: str = "parameter", key_kind: str = "code") -> Table:
    return Table(caption, [key_header, "value"], [[Cell.of(k, key_kind), Cell.of(fmt(v))] for k, v in pairs.items()])


def setup_section(data: ReportData) -> list[Block]:
    s = data.setup
    out: list[Block] = [Heading(2, "1 Setup", "setup")]
    out.append(Heading(3, "Dataset"))
    if s.data_params:
        d = s.data_params
        out.append(
            Para(
                f"Images come from source `{d.get('data.source', '?')}` "
                f"({d.get('data.per_source', '?')} images per source, subset seed "
                f"{d.get('data.seed', '?')}); the parameters of the latest `download` run are listed below."
            )
        )
        out.append(kv_table("Dataset parameters (latest download run).", d))
    else:
        out.append(Para("No `download` run is recorded, so the dataset parameters are unknown."))
    out += faces_blocks(data)
    out += split_blocks(data)
    out.append(Heading(3, "Hardware and wall time"))
    hw = dict(s.hardware)
    for stage, device in s.devices.items():
        hw[f"device of {stage}"] = device
    out.append(
        Para(
            "The machine below is the one that generated this report; the device rows are the devices "
            "recorded by the latest run of each stage."
        )
    )
    out.append(kv_table("Hardware and software.", hw, "item", ""))
    if s.wall_times:
        rows = [
            [
                Cell.of(r["stage"], "code"),
                Cell.of(str(r["runs"])),
                Cell.of(fmt_seconds(r["latest_s"])),
                Cell.of(fmt_seconds(r["median_s"])),
                Cell.of(fmt_seconds(r["total_s"])),
            ]
            for r in s.wall_times
        ]
        out.append(
            Table("Wall time per stage (finished MLflow runs).", ["stage", "runs", "latest", "median", "total"], rows)
        )
    return out


def faces_blocks(data: ReportData) -> list[Block]:
    s = data.setup
    out: list[Block] = [Heading(3, "Face crops")]
    f = s.faces_params
    if f:
        out.append(
            Para(
                f"Faces are cropped with MTCNN to {f.get('faces.crop_size', '?')} px squares with margin "
                f"{f.get('faces.margin', '?')}; detections below probability {f.get('faces.min_prob', '?')} "
                f"count as misses, which are handled by `{f.get('faces.on_miss', '?')}`."
            )
        )
    m = s.face_metrics
    if not m:
        out.append(Para("`data/faces/metrics.json` is absent: no face-crop statistics."))
        return out
    groups = {**{str(k): v for k, v in (m.get("generator") or {}).items()}, "all": m.get("overall") or {}}
    rows = []
    for name, g in groups.items():
        rows.append(
            [
                Cell.of(name, "strong" if name == "all" else "code"),
                Cell.of(fmt(g.get("inputs"))),
                Cell.of(fmt(g.get("kept"))),
                Cell.of(fmt(g.get("dropped"))),
                Cell.of(_pct(g.get("drop_rate"))),
                Cell.of(_pct(g.get("detection_rate"))),
            ]
        )
    out.append(
        Table(
            "Face-crop outcome per generator (data/faces/metrics.json): inputs, kept crops, dropped "
            "images and the drop and detection rates.",
            ["generator", "inputs", "kept", "dropped", "drop rate", "detection rate"],
            rows,
        )
    )
    return out


def _pct(v: Any) -> str:
    return f"{100 * float(v):.1f} %" if isinstance(v, (int, float)) else MISSING


def split_blocks(data: ReportData) -> list[Block]:
    out: list[Block] = [Heading(3, "Split")]
    summary = data.setup.split_summary
    if not summary:
        out.append(Para("`data/splits/summary.json` is absent: no split statistics."))
        return out
    facts = [f"protocol `{summary.get('protocol', '?')}`", f"seed {summary.get('seed', '?')}"]
    if summary.get("holdout_generator"):
        facts.append(f"held-out generator `{summary['holdout_generator']}`")
    groups = summary.get("groups") or {}
    groups = {s: groups[s] for s in sorted(groups, key=lambda s: (SPLITS.index(s) if s in SPLITS else 9, s))}
    out.append(
        Para(
            "Splits are group-disjoint (an identity or near-duplicate group never crosses splits): "
            + ", ".join(facts)
            + f"; groups per split {fmt_mapping(groups)}; groups crossing splits: "
            f"{summary.get('groups_crossing_splits', '?')}."
        )
    )
    counts: dict[str, dict[str, dict[str, int]]] = summary.get("counts") or {}
    splits = [s for s in ("train", "val", "test") if s in counts] + sorted(set(counts) - {"train", "val", "test"})
    keys = sorted(
        {(label, gen) for sp in counts.values() for label, gens in sp.items() for gen in gens},
        key=lambda lg: (lg[0] != "real", lg),
    )
    rows = []
    for label, gen in keys:
        values = [int(counts[sp].get(label, {}).get(gen, 0)) for sp in splits]
        rows.append(
            [Cell.of(label), Cell.of(gen, "code"), *(Cell.of(str(v)) for v in values), Cell.of(str(sum(values)))]
        )
    totals = [sum(int(n) for gens in counts[sp].values() for n in gens.values()) for sp in splits]
    rows.append(
        [
            Cell.of("all", "strong"),
            Cell.of(""),
            *(Cell.of(str(v), "strong") for v in totals),
            Cell.of(str(sum(totals)), "strong"),
        ]
    )
    out.append(
        Table(
            "Face crops per split, label and generator (data/splits/summary.json).",
            ["label", "generator", *splits, "total"],
            rows,
        )
    )
    return out


def fmt_mapping(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in mapping.items()) or MISSING


def iteration_rows(track: TrackData) -> tuple[list[list[Cell]], list[str]]:
    rows, classes = [], []
    for it in track.iterations:
        is_best = it is track.best_iteration
        label = Cell([[Span(f"#{it.number}", "strong")] + ([Span(" ★ best", "star")] if is_best else [])])
        run = it.eval if it.reused_train_of is not None else (it.train or it.eval)
        when = Cell([[Span(run.started if run else MISSING)]] + ([[Span(it.exp_name, "code")]] if it.exp_name else []))
        rows.append(
            [
                label,
                when,
                changes_cell(it, track.spec),
                Cell.of(it.note or MISSING, "" if it.note else "muted"),
                *(metric_cell(track, it, name) for name in track.metric_names),
            ]
        )
        classes.append("best" if is_best else "")
    return rows, classes


def changes_cell(it: Iteration, spec: TrackSpec) -> Cell:
    lines: list[list[Span]] = []
    if it.reused_train_of is not None:
        lines.append([Span(f"evaluation re-run (training of #{it.reused_train_of})", "muted")])
    elif it.eval is None:
        lines.append([Span(f"no finished {spec.eval_stage} run", "bad")])
    if it.number == 1:
        return Cell(lines + [[Span("first iteration (baseline)", "muted")]])
    for c in it.changes[:MAX_CHANGES_SHOWN]:
        lines.append([Span(c.key, "code"), Span(f": {fmt_param(c.old)} → {fmt_param(c.new)}")])
    if len(it.changes) > MAX_CHANGES_SHOWN:
        lines.append([Span(f"… and {len(it.changes) - MAX_CHANGES_SHOWN} more", "muted")])
    if not it.changes:
        lines.append([Span("no parameter change (rerun)", "muted")])
    return Cell(lines)


def fmt_param(value: str | None) -> str:
    return "(unset)" if value is None else (value if value != "" else '""')


def metric_cell(track: TrackData, it: Iteration, name: str) -> Cell:
    value = it.metrics.get(name)
    line = [Span(fmt(value), "" if value is not None else "muted")]
    delta = it.deltas.get(name)
    if delta is not None:
        better = it.better.get(name)
        line.append(Span(f" ({fmt_delta(delta)})", "muted" if better is None else ("good" if better else "bad")))
    return Cell([line])


def track_section(number: int, track: TrackData, p: ReportParams) -> list[Block]:
    spec = track.spec
    out: list[Block] = [Heading(2, f"{number} {spec.title}", spec.name)]
    if not track.iterations:
        out.append(
            Para(
                f"No {spec.name} iterations are recorded yet (no finished `{spec.train_stage}` or "
                f"`{spec.eval_stage}` run in the experiment)."
            )
        )
        return out
    n = len(track.iterations)
    lower = [m for m in track.metric_names if track.lower_better(m)]
    best = track.best_iteration
    best_text = (
        f"The best iteration by `{track.primary}` is **#{best.number}** ({fmt(best.metrics[track.primary])})."
        if best is not None
        else f"No iteration has the metric `{track.primary}` yet, so none is marked best."
    )
    if track.requested_primary and best is not None:
        best_text += f" (`{track.requested_primary}` is missing in every iteration, so `{track.primary}` decides.)"
    out.append(
        Para(
            f"The {spec.name} went through {n} iteration{'s' if n != 1 else ''}, listed below in the order they ran. "
            f"Each row pairs a `{spec.train_stage}` run with its `{spec.eval_stage}` run; *what changed* lists the "
            f"parameters that differ from the previous row ({', '.join(f'`{b}`' for b in spec.blocks)} first, then the "
            f"upstream data parameters, input hashes and the code commit). Each metric shows its change against the "
            f"previous iteration that has it, green when better and red when worse"
            + (f" (lower is better for {', '.join(f'`{m}`' for m in lower)})" if lower else "")
            + ". "
            + best_text
        )
    )
    rows, classes = iteration_rows(track)
    header = ["#", "run", "what changed", "note", *track.metric_names]
    if spec is CLASSIFIER:
        header = warnings_column(track, header, rows)
    out.append(
        Table(
            f"{spec.title} iterations: change, note and key metrics of the evaluation run "
            f"(Δ versus the previous iteration in brackets).",
            header,
            rows,
            classes,
        )
    )
    if (png := metrics_figure(track)) is not None:
        out.append(
            Figure(
                f"{spec.name}_metrics.png",
                png,
                f"{spec.title} key metrics over iterations; the star marks the best iteration by {track.primary}.",
            )
        )
    if (png := curves_figure(track)) is not None:
        out.append(
            Figure(
                f"{spec.name}_curves.png",
                png,
                "Learning curves from the MLflow metric history of the training run: latest iteration "
                "solid, best iteration dashed.",
            )
        )
    remarks = list(track.remarks)
    if spec is CLASSIFIER:
        out += classifier_figures(track, remarks)
    else:
        out += generator_figures(track, p, remarks)
    if remarks:
        out.append(Para("Not shown: " + "; ".join(remarks) + "."))
    if spec is CLASSIFIER:
        out += shortcut_blocks(track) + uncertainty_blocks(track)
    return out


def classifier_figures(track: TrackData, remarks: list[str]) -> list[Block]:
    out: list[Block] = []
    best = track.best_iteration or track.latest_iteration
    if (png := roc_figure(track)) is not None:
        out.append(
            Figure(
                "classifier_roc.png",
                png,
                "ROC curves of the iterations on the test split (the best "
                "iteration in red; AUC from the logged curve).",
            )
        )
    else:
        remarks.append("ROC curves (no evaluation run logged an artifact with fpr,tpr columns)")
    which = f"#{best.number}" if best is not None else ""
    if track.confusion is not None:
        out.append(
            Figure(
                "classifier_confusion.png", track.confusion, f"Confusion matrix of iteration {which} on the test split."
            )
        )
    else:
        remarks.append(f"confusion matrix (no matching PNG artifact in the evaluation run of {which})")
    if track.misclassified is not None:
        out.append(
            Figure(
                "classifier_misclassified.png", track.misclassified, f"Misclassified test faces of iteration {which}."
            )
        )
    else:
        remarks.append(f"misclassified grid (no matching PNG artifact in the evaluation run of {which})")
    return out


def generator_figures(track: TrackData, p: ReportParams, remarks: list[str]) -> list[Block]:
    out: list[Block] = []
    best = track.best_iteration or track.latest_iteration
    which = f"#{best.number}" if best is not None else ""
    if track.epoch_grids and (
        png := montage(
            [(f"epoch {e}", raw) for e, raw in track.epoch_grids],
            f"Iteration {which}: fixed noise across epochs",
            ncols=p.grid_epochs,
        )
    ):
        out.append(
            Figure(
                "generator_epochs.png",
                png,
                f"Samples from the same fixed noise across the training of iteration {which}.",
            )
        )
    else:
        remarks.append(
            f"samples across epochs (no artifact matching {', '.join(p.sample_artifacts)} "
            f"in the training run of {which})"
        )
    finals = [
        (
            f"#{it.number} (epoch {it.final_grid[0]}"
            + (
                f", {track.primary} {fmt(it.metrics.get(track.primary))})"
                if it.metrics.get(track.primary) is not None
                else ")"
            ),
            it.final_grid[1],
        )
        for it in track.iterations
        if it.final_grid is not None
    ]
    if finals and (png := montage(finals, "Final samples of each iteration")):
        out.append(Figure("generator_final.png", png, "The final fixed-noise grid of each iteration, side by side."))
    elif not finals:
        remarks.append("final sample grids (no iteration logged sample grids)")
    return out


def appendix(data: ReportData) -> list[Block]:
    out: list[Block] = [Heading(2, "Appendix: runs and experiments", "appendix")]
    revs = {e.name: e.rev for e in data.dvc_exps if e.name}
    for track in data.tracks:
        if not track.iterations:
            continue
        rows = [
            [
                Cell.of(f"#{it.number}"),
                _run_cell(it.train),
                _run_cell(it.eval),
                Cell(
                    [
                        [Span(it.exp_name or MISSING)]
                        + ([Span(f" ({revs[it.exp_name]})", "muted")] if it.exp_name in revs else [])
                    ]
                ),
            ]
            for it in track.iterations
        ]
        out.append(
            Table(
                f"MLflow runs of the {track.spec.name} iterations (look them up with `make ui`) and "
                f"their DVC experiment (rev in brackets when `dvc exp show` lists it).",
                ["#", track.spec.train_stage, track.spec.eval_stage, "dvc experiment"],
                rows,
            )
        )
    if data.dvc_exps:
        out.append(
            Para(
                "Any listed experiment can be restored into the workspace with `dvc exp apply <name>` "
                "and rerun with `dvc repro`."
            )
        )
        rows = [
            [Cell.of(e.name, "code"), Cell.of(e.rev, "code"), Cell.of(e.baseline), Cell.of(e.timestamp)]
            for e in data.dvc_exps
        ]
        out.append(Table("DVC experiments (`dvc exp show --json`).", ["name", "rev", "baseline", "created"], rows))
    else:
        out.append(Para(f"No DVC experiment list: {data.dvc_error or 'dvc exp show listed none'}."))
    if data.left_out:
        parts = [
            f"{stage}: " + ", ".join(f"{n} {status.lower()}" for status, n in counts.items())
            for stage, counts in sorted(data.left_out.items())
        ]
        out.append(Para("Runs left out because they did not finish: " + "; ".join(parts) + "."))
    return out


def _run_cell(run: RunInfo | None) -> Cell:
    return Cell.of(run.run_id, "code") if run is not None else Cell.of(MISSING, "muted")


def build_document(data: ReportData, p: ReportParams) -> list[Block]:
    doc: list[Block] = [Heading(1, p.title)]
    if data.runs:
        doc.append(
            Para(
                f"Generated {data.generated} from {len(data.runs)} finished MLflow runs of experiment "
                f"`{data.experiment}` (`{data.tracking_uri}`)."
            )
        )
    else:
        doc.append(
            Para(
                f"No finished MLflow runs were found in experiment `{data.experiment}` "
                f"(`{data.tracking_uri}`), so there are no results to report yet. Run the pipeline first "
                f"(`dvc repro`, or `make demo` offline), then `python -m stages.report`."
            )
        )
    doc += setup_section(data)
    for k, track in enumerate(data.tracks):
        doc += track_section(k + 2, track, p)
    study = study_blocks(data.tracks[0], data.pretrain, len(data.tracks) + 2)
    doc += study + federated_blocks(data.federated, len(data.tracks) + 2 + bool(study)) + appendix(data)
    return doc
