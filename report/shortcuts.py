"""The classifier track's "Shortcuts" part of the report: can the model be right for the wrong reason?

Data: the evaluation run's ``metrics.json`` artifact, which report.iterations reads into
``Iteration.eval_json`` for the latest and the best iteration:

- ``shortcut_audit.crop_features`` (shortcuts.audit): each crop/source feature's test ROC-AUC
  on its own (direction fitted on train), per generator, a logistic regression on all of them, and
  the warning lines;
- ``counterfactual`` (written by evaluate's counterfactual probes, when present): per probe the
  ROC-AUC, TPR and TNR on the clean test crops and after a content-keeping change, the drop and a flag.

The per-iteration warning count in the iterations table comes from that JSON where it was read, else
from the run's MLflow metrics ``shortcut_audit.n_warnings`` and ``counterfactual.n_flagged``.
Anything missing shows as "—" or "not recorded".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from report.document import MISSING, Block, Cell, Heading, Para, Span, Table
from report.iterations import Iteration, TrackData

N_WARNINGS_METRIC = "shortcut_audit.n_warnings"  # as stages.evaluate logs it (shortcuts.audit.N_WARNINGS_METRIC)
N_FLAGGED_METRIC = "counterfactual.n_flagged"


@dataclass(frozen=True)
class Findings:
    crop: dict[str, Any] | None  # metrics["shortcut_audit"]["crop_features"]
    counterfactual: dict[str, Any] | None  # metrics["counterfactual"]

    @property
    def warnings(self) -> list[str]:
        return [str(w) for w in (self.crop or {}).get("warnings") or []]

    @property
    def flagged(self) -> list[str]:
        cf = self.counterfactual or {}
        named = cf.get("flagged")
        if isinstance(named, list):
            return [str(n) for n in named]
        return [n for n, p in _probes(cf).items() if p.get("flag")]


def findings(it: Iteration) -> Findings:
    data = it.eval_json or {}
    audit = data.get("shortcut_audit")
    crop = audit.get("crop_features") if isinstance(audit, dict) else None
    cf = data.get("counterfactual")
    return Findings(crop if isinstance(crop, dict) else None, cf if isinstance(cf, dict) else None)


def _probes(cf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    probes = cf.get("probes")
    return {str(k): v for k, v in probes.items() if isinstance(v, dict)} if isinstance(probes, dict) else {}


def _num(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else MISSING


def _arrow(clean: Any, probe: Any) -> str:
    return f"{_num(clean)} → {_num(probe)}"


# ---------------------------------------------------------------- iterations table column


def warnings_column(track: TrackData, header: list[str], rows: list[list[Cell]]) -> list[str]:
    """Append a "shortcut warnings" cell to each iteration row; returns the extended header."""
    for row, it in zip(rows, track.iterations):
        row.append(warning_count_cell(it))
    return [*header, "shortcut warnings"]


def warning_count_cell(it: Iteration) -> Cell:
    f = findings(it)
    metrics = it.eval.metrics if it.eval is not None else {}
    n_warn = len(f.warnings) if f.crop is not None else metrics.get(N_WARNINGS_METRIC)
    n_flag = len(f.flagged) if f.counterfactual is not None else metrics.get(N_FLAGGED_METRIC)
    if n_warn is None and n_flag is None:
        return Cell.of(MISSING, "muted")
    parts = [
        f"{int(n_warn)} feature" if n_warn is not None else "",
        f"{int(n_flag)} probe" if n_flag is not None else "",
    ]
    total = int(n_warn or 0) + int(n_flag or 0)
    return Cell.of(" + ".join(p for p in parts if p), "bad" if total else "good")


# ---------------------------------------------------------------- the section


def shortcut_blocks(track: TrackData) -> list[Block]:
    """Heading, verdict and tables for the latest and (when different) the best iteration."""
    latest, best = track.latest_iteration, track.best_iteration
    if latest is None:
        return []
    out: list[Block] = [
        Heading(3, "Shortcuts"),
        Para(
            "A detector can score well by learning a shortcut (black padding, grayscale, image size, JPEG "
            "compression, framing) instead of the face. The *crop audit* asks how well one simple property of "
            "the test crops or of their source photos separates real from fake on its own (ROC-AUC, direction "
            "fitted on train; 0.5 = no signal). The *counterfactual probes* re-score the test photos after a "
            "change that keeps the face (tighter framing, grayscale, stretch, JPEG): a large drop means the "
            "model leans on what the change removed."
        ),
    ]
    roles = [(latest, "latest = best" if best is latest else "latest")]
    if best is not None and best is not latest:
        roles.append((best, "best"))
    for it, role in roles:
        out += iteration_blocks(it, role)
    return out


def iteration_blocks(it: Iteration, role: str) -> list[Block]:
    out: list[Block] = [Heading(4, f"Iteration #{it.number} ({role})")]
    if it.eval is None:
        return out + [Para("No evaluation run: the shortcut checks are not recorded.")]
    f = findings(it)
    out.append(Para(verdict(f)))
    if f.crop is not None:
        out += crop_blocks(f.crop)
    if f.counterfactual is not None:
        out += counterfactual_blocks(f.counterfactual)
    return out


def verdict(f: Findings) -> str:
    if f.crop is None and f.counterfactual is None:
        return (
            "Shortcut checks not recorded: the evaluation's `metrics.json` has neither "
            "`shortcut_audit.crop_features` nor `counterfactual` (an older run, or the artifact is missing)."
        )
    warn, flag = f.warnings, f.flagged
    missing = [name for name, v in (("crop audit", f.crop), ("counterfactual probes", f.counterfactual)) if v is None]
    tail = f" ({' and '.join(missing)} not recorded)" if missing else ""
    if not warn and not flag:
        return (
            "**No shortcut warning**: no crop or source feature alone passes the warning bound and no "
            f"counterfactual probe is flagged{tail}."
        )
    parts = []
    if warn:
        names = sorted({w.split(" (", 1)[0] for w in warn})
        parts.append(
            f"{len(warn)} crop-audit warning{'s' if len(warn) != 1 else ''} ({', '.join(f'`{n}`' for n in names)})"
        )
    if flag:
        parts.append(f"flagged probe{'s' if len(flag) != 1 else ''} {', '.join(f'`{n}`' for n in flag)}")
    return (
        f"**Shortcut warning**: {' and '.join(parts)}. The test score may rest on these cues rather than on "
        f"the face{tail}."
    )


def crop_blocks(crop: dict[str, Any]) -> list[Block]:
    warn_auc = crop.get("warn_auc")
    bound = float(warn_auc) if isinstance(warn_auc, (int, float)) else 0.75
    rows = []
    for name, feat in (crop.get("features") or {}).items():
        rows.append(_feature_row(str(name), str(feat.get("kind", "")), feat, bound))
    combined = crop.get("combined") or {}
    if combined:
        rows.append(_feature_row("all features", "logistic regression", combined, bound))
    out: list[Block] = [
        Table(
            f"Crop audit (test n={crop.get('n_test', MISSING)}, train n={crop.get('n_train', MISSING)}): each "
            f"feature's test ROC-AUC alone, with the direction fitted on train; the generator column names the "
            f"generator (its fakes vs all reals) farthest from 0.5. Warning: AUC ≥ {bound:g} or ≤ {1 - bound:.2f}.",
            ["feature", "kind", "test ROC-AUC", "direction (train AUC)", "strongest generator", "warning"],
            rows,
        )
    ]
    skipped = crop.get("skipped") or {}
    if skipped:
        out.append(Para("Not computed: " + "; ".join(f"`{k}` ({v})" for k, v in skipped.items()) + "."))
    if crop.get("warnings"):
        out.append(
            Table(
                "Crop-audit warnings, as `evaluate` printed them.",
                ["warning"],
                [[Cell.of(str(w))] for w in crop["warnings"]],
            )
        )
    return out


def _feature_row(name: str, kind: str, feat: dict[str, Any], bound: float) -> list[Cell]:
    aucs = [feat.get("test_auc")] + [g.get("test_auc") for g in (feat.get("per_generator") or {}).values()]
    flagged = any(isinstance(a, (int, float)) and (a >= bound or a <= 1 - bound) for a in aucs)
    strongest = feat.get("strongest_generator")
    if not strongest:
        scored = [
            (g, v.get("test_auc"))
            for g, v in (feat.get("per_generator") or {}).items()
            if isinstance(v.get("test_auc"), (int, float))
        ]
        pick = max(scored, key=lambda gv: abs(gv[1] - 0.5), default=None)
        strongest = {"name": pick[0], "test_auc": pick[1]} if pick else None
    direction = feat.get("direction")
    return [
        Cell.of(name, "code"),
        Cell.of(kind or MISSING),
        Cell.of(_num(feat.get("test_auc")), "bad" if flagged and feat.get("test_auc") is not None else ""),
        Cell.of(f"{direction} ({_num(feat.get('train_auc'))})" if direction else _num(feat.get("train_auc"))),
        Cell([[Span(str(strongest["name"]), "code"), Span(f" {_num(strongest.get('test_auc'))}")]])
        if strongest
        else Cell.of(MISSING, "muted"),
        Cell.of("⚠ warning", "bad") if flagged else Cell.of("no", "muted"),
    ]


def counterfactual_blocks(cf: dict[str, Any]) -> list[Block]:
    rows = []
    for name, probe in _probes(cf).items():
        scored = f"{probe.get('n_scored', MISSING)} / {probe.get('n', MISSING)}"
        if probe.get("n_no_face"):
            scored += f" ({probe['n_no_face']} no face)"
        rows.append(
            [
                Cell.of(name, "code"),
                Cell.of(str(probe.get("description") or MISSING)),
                Cell.of(scored),
                Cell.of(_arrow(probe.get("clean_roc_auc"), probe.get("roc_auc"))),
                Cell.of(_arrow(probe.get("clean_tpr"), probe.get("tpr"))),
                Cell.of(_arrow(probe.get("clean_tnr"), probe.get("tnr"))),
                Cell.of(" / ".join(_num(probe.get(k)) for k in ("auc_drop", "tpr_drop", "tnr_drop"))),
                Cell.of("⚠ flagged", "bad") if probe.get("flag") else Cell.of("no", "muted"),
            ]
        )
    if not rows:
        return [Para("Counterfactual probes: recorded without any probe.")]
    facts = [f"threshold {_num(cf.get('threshold'))} from validation"]
    if "max_auc_drop_seen" in cf:  # max_auc_drop / max_rate_drop are then the flag bounds
        bounds = (
            f"flagged when the ROC-AUC drops by more than {_num(cf.get('max_auc_drop'))} or TPR or TNR by "
            f"more than {_num(cf.get('max_rate_drop'))}"
        )
        facts += [bounds, f"largest ROC-AUC drop {_num(cf['max_auc_drop_seen'])}"]
    else:
        facts.append(f"largest ROC-AUC drop {_num(cf.get('max_auc_drop'))}")
    return [
        Table(
            f"Counterfactual probes ({'; '.join(facts)}): clean test crops → the same photos after the change.",
            ["probe", "description", "scored / n", "ROC-AUC", "TPR", "TNR", "drop AUC / TPR / TNR", "flag"],
            rows,
        )
    ]
