"""The report stage on synthetic MLflow history: iteration tables, diffs, deltas, self-contained HTML."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from PIL import Image

from core.io import write_json
from core.params import ParamsError, ReportParams, parse_block
from core.tracking import stage_run
from report.document import Block, Cell, Figure, Heading, Para, Span, Table
from report.iterations import CLASSIFIER, build_iterations, pair_runs, params_diff
from report.render import PAGE_TEMPLATE, environment, to_html
from report.runs import RunInfo, resolve_metric, spread
from report.setup import devices
from tests.conftest import PROJECT_ROOT
from tests.helpers import set_params

CHROMIUM = Path("/usr/bin/chromium")
CLASSIFIER_BASE = {"arch": "cnn", "init": "none", "lr": 0.001, "dropout": 0.2, "epochs": 3}
# (exp name, note, classifier changes, split seed, test metrics, train-loss scale)
CLASSIFIER_ITERATIONS = [
    ("exp-a", "baseline cnn", {}, 0, {"roc_auc": 0.80, "f1": 0.70, "ece": 0.10, "accuracy": 0.75}, 1.0),
    (
        "exp-b",
        "lower the learning rate",
        {"lr": 0.0003},
        0,
        {"roc_auc": 0.90, "f1": 0.80, "ece": 0.05, "accuracy": 0.85},
        0.8,
    ),
    (
        "exp-c",
        "more dropout, other split seed",
        {"lr": 0.0003, "dropout": 0.5},
        1,
        {"roc_auc": 0.85, "f1": 0.82, "ece": 0.08},
        0.9,
    ),
]
# the shortcut checks in the latest evaluation's metrics.json (shortcuts.audit + the counterfactual probes)
SHORTCUT_WARNING = "border_constant (crop feature) alone separates real from fake: test ROC-AUC 0.990 overall"
SHORTCUT_METRICS = {
    "shortcut_audit": {
        "metadata_roc_auc": 0.6,
        "crop_features": {
            "warn_auc": 0.75,
            "n_train": 14,
            "n_test": 4,
            "warnings": [SHORTCUT_WARNING],
            "n_warnings": 1,
            "features": {
                "border_constant": {
                    "kind": "crop",
                    "test_auc": 0.99,
                    "train_auc": 0.97,
                    "direction": "higher = fake",
                    "per_generator": {"sd": {"test_auc": 0.99}, "swap": {"test_auc": 0.98}},
                },
                "jpeg_quality": {
                    "kind": "source",
                    "test_auc": 0.52,
                    "train_auc": 0.55,
                    "direction": "lower = fake",
                    "per_generator": {"sd": {"test_auc": 0.6}},
                },
            },
            "combined": {"test_auc": 0.97, "per_generator": {}},
            "skipped": {"margin_used": "no margin_used column"},
        },
    },
    "counterfactual": {
        "threshold": 0.5,
        "flagged": ["tighter_framing"],
        "max_auc_drop": 0.3,
        "probes": {
            "tighter_framing": {
                "description": "the face box with half the margin",
                "n": 4,
                "n_scored": 4,
                "n_no_face": 0,
                "roc_auc": 0.6,
                "tpr": 0.5,
                "tnr": 0.5,
                "clean_roc_auc": 0.9,
                "clean_tpr": 1.0,
                "clean_tnr": 1.0,
                "auc_drop": 0.3,
                "tpr_drop": 0.5,
                "flag": True,
            },
            "jpeg_q75": {
                "description": "raw re-encoded as JPEG q75",
                "n": 4,
                "n_scored": 3,
                "n_no_face": 1,
                "roc_auc": None,
                "tpr": 1.0,
                "tnr": None,
                "clean_roc_auc": 0.9,
                "clean_tpr": 1.0,
                "clean_tnr": 1.0,
                "auc_drop": None,
                "tpr_drop": 0.0,
                "flag": False,
            },
        },
    },
}
# as stages.fid logs them when the Inception weights are absent: no fid / kid, fd_mobilenet only
GENERATOR_ITERATIONS = [
    ("gen-a", "dcgan baseline", {"model": "dcgan", "epochs": 3}, {"generator.fd_mobilenet": 30.0}),
    ("gen-b", "try wgan-gp", {"model": "wgan_gp", "epochs": 3}, {"generator.fd_mobilenet": 25.0}),
]


def _png(path: Path, seed: int, side: int = 24) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def _log_run(
    mp: pytest.MonkeyPatch,
    stage: str,
    block: str,
    params: dict[str, Any],
    note: str = "",
    exp: str = "",
    metrics: dict[str, float] | None = None,
    history: dict[str, list[float]] | None = None,
    artifacts: list[tuple[Path, str | None]] | None = None,
) -> str:
    """One run through the real tracking helper (tags note / dvc_exp_name / stage, params <block>.<key>)."""
    set_params(Path("params.yaml"), "tracking", note=note)
    mp.setenv("DVC_EXP_NAME", exp)
    with stage_run(stage=stage, block=block, params=params) as run:
        for key, values in (history or {}).items():
            for step, value in enumerate(values):
                mlflow.log_metric(key, value, step=step)
        if metrics:
            mlflow.log_metrics(metrics)
        for local, folder in artifacts or []:
            mlflow.log_artifact(str(local), folder)
    return run.info.run_id


def _write_setup_files() -> None:
    write_json(
        Path("data/splits/summary.json"),
        {
            "protocol": "random",
            "seed": 0,
            "groups": {"train": 7, "val": 2, "test": 2},
            "groups_crossing_splits": 0,
            "total": {"train": 14, "val": 4, "test": 4},
            "counts": {
                "train": {"real": {"real": 7}, "fake": {"sd": 4, "swap": 3}},
                "val": {"real": {"real": 2}, "fake": {"sd": 1, "swap": 1}},
                "test": {"real": {"real": 2}, "fake": {"sd": 1, "swap": 1}},
            },
        },
    )
    group = {"inputs": 10, "kept": 9, "dropped": 1, "drop_rate": 0.1, "detection_rate": 0.9}
    write_json(
        Path("data/faces/metrics.json"),
        {
            "overall": {**group, "inputs": 30, "kept": 27, "dropped": 3},
            "label": {},
            "generator": {"real": group, "sd": group, "swap": group},
        },
    )


def make_history(mp: pytest.MonkeyPatch, work: Path) -> dict[str, list[str]]:
    """Upstream runs, 3 classifier iterations and 2 generator iterations, in time order."""
    ids: dict[str, list[str]] = {"train": [], "eval": []}
    _log_run(mp, "download", "data", {"source": "synthetic", "per_source": 20, "seed": 0})
    _log_run(mp, "faces", "faces", {"crop_size": 64, "margin": 0.25, "min_prob": 0.9, "on_miss": "center"})
    for k, (exp, note, changes, split_seed, test, scale) in enumerate(CLASSIFIER_ITERATIONS):
        _log_run(mp, "split", "split", {"protocol": "random", "seed": split_seed}, note, exp)
        history = {
            "train_loss": [scale * v for v in (0.7, 0.5, 0.4)],
            "val_loss": [scale * v for v in (0.72, 0.6, 0.55)],
            "val_roc_auc": [0.6, 0.7, test["roc_auc"]],
            "lr": [1e-3, 5e-4, 1e-4],
        }
        ids["train"].append(
            _log_run(mp, "train_classifier", "classifier", {**CLASSIFIER_BASE, **changes}, note, exp, history=history)
        )
        fpr = np.linspace(0, 1, 21)
        roc = work / f"roc{k}" / "roc.csv"
        roc.parent.mkdir(parents=True)
        roc.write_text("fpr,tpr\n" + "\n".join(f"{x:.3f},{x ** (1 / (2 + k)):.4f}" for x in fpr) + "\n")
        arts = [
            (roc, "plots"),
            (_png(work / f"c{k}" / "confusion.png", k), "figures"),
            (_png(work / f"m{k}" / "worst_misclassified.png", 10 + k), "figures"),
            (_png(work / f"r{k}" / "roc.png", 20 + k), "figures"),
        ]
        if k == len(CLASSIFIER_ITERATIONS) - 1:  # only the latest evaluation recorded the shortcut checks
            write_json(work / "s" / "metrics.json", SHORTCUT_METRICS)
            arts.append((work / "s" / "metrics.json", None))
        # as stages.evaluate logs them: test.<metric>
        ids["eval"].append(
            _log_run(
                mp,
                "evaluate",
                "evaluate",
                {"ece_bins": 15},
                note,
                exp,
                metrics={f"test.{m}": v for m, v in test.items()},
                artifacts=arts,
            )
        )
    for k, (exp, note, gparams, scores) in enumerate(GENERATOR_ITERATIONS):
        arts = [(_png(work / f"g{k}" / f"epoch_{e:03d}.png", 100 * k + e), "samples") for e in (1, 2, 3)]
        _log_run(
            mp,
            "train_generator",
            "generator",
            gparams,
            note,
            exp,
            artifacts=arts,
            history={
                "g_loss": [2.0, 1.5, 1.2],
                "d_loss": [0.7, 0.6, 0.65],
                "lr_g": [2e-4] * 3,
                "fd_mobilenet": [60.0, 45.0, scores["generator.fd_mobilenet"]],
            },
        )
        _log_run(mp, "fid", "fid", {"n_samples": 500}, note, exp, metrics=scores)
    # as stages.train_federated logs them: comparison.csv and history.csv artifacts, <model>.test.* metrics
    fed = work / "federated"
    fed.mkdir()
    (fed / "comparison.csv").write_text(
        "model,roc_auc,eer,roc_auc.sd,roc_auc.swap\n"
        "federated_fedavg,0.81,0.3,0.84,0.78\ncentral,0.9,0.2,0.93,0.87\nalone_sd,0.66,0.4,0.91,0.41\n"
    )
    (fed / "history.csv").write_text("round,val_loss,val_roc_auc\n0,0.7,0.5\n1,0.6,0.75\n2,0.62,0.72\n")
    _log_run(
        mp,
        "train_federated",
        "federated",
        {"strategy": "fedavg", "num_clients": 2, "rounds": 2},
        metrics={"federated_fedavg.test.roc_auc": 0.81, "central.test.roc_auc": 0.9},
        artifacts=[(fed / "comparison.csv", None), (fed / "history.csv", None)],
    )
    return ids


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, list[str]]]]:
    """A temp project (like ``in_tmp_project``) with synthetic history, after ``python -m stages.report``."""
    from stages import report

    root = tmp_path_factory.mktemp("report_project")
    (root / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        _write_setup_files()
        ids = make_history(mp, root / "work")
        mp.setenv("DVC_EXP_NAME", "")
        report.main()
        yield root, ids


def _summary(root: Path) -> dict[str, Any]:
    return json.loads((root / "results/report/iterations.json").read_text())


def _table(html_text: str, caption_start: str) -> str:
    match = re.search(r'<p class="caption">Table \d+\. ' + re.escape(caption_start) + r".*?</table>", html_text, re.S)
    assert match, f"no table captioned {caption_start!r}"
    return match.group(0)


def test_classifier_iterations_pair_runs_and_diff_params(built: tuple[Path, dict[str, list[str]]]) -> None:
    root, ids = built
    clf = _summary(root)["tracks"]["classifier"]
    rows = clf["iterations"]
    assert [r["number"] for r in rows] == [1, 2, 3]
    assert [r["train_run"] for r in rows] == ids["train"]
    assert [r["eval_run"] for r in rows] == ids["eval"]
    assert [r["note"] for r in rows] == [it[1] for it in CLASSIFIER_ITERATIONS]
    assert [r["exp_name"] for r in rows] == ["exp-a", "exp-b", "exp-c"]
    assert rows[0]["changes"] == []
    assert rows[1]["changes"] == [{"key": "classifier.lr", "old": "0.001", "new": "0.0003"}]
    # the track's own block first, then the upstream split parameter
    assert rows[2]["changes"] == [
        {"key": "classifier.dropout", "old": "0.2", "new": "0.5"},
        {"key": "split.seed", "old": "0", "new": "1"},
    ]
    assert clf["best"] == 2


def test_deltas_respect_lower_is_better(built: tuple[Path, dict[str, list[str]]]) -> None:
    root, _ = built
    rows = _summary(root)["tracks"]["classifier"]["iterations"]
    assert rows[0]["deltas"] == {"roc_auc": None, "f1": None, "ece": None, "accuracy": None}
    assert rows[1]["deltas"]["roc_auc"] == pytest.approx(0.10)
    assert rows[1]["better"] == {"roc_auc": True, "f1": True, "ece": True, "accuracy": True}  # ece went down
    assert rows[2]["deltas"]["roc_auc"] == pytest.approx(-0.05)
    assert rows[2]["deltas"]["ece"] == pytest.approx(0.03)
    assert rows[2]["better"] == {"roc_auc": False, "f1": True, "ece": False, "accuracy": None}
    assert rows[2]["metrics"]["accuracy"] is None
    assert rows[2]["metric_keys"]["roc_auc"] == "test.roc_auc"
    gen = _summary(root)["tracks"]["generator"]
    assert (gen["best"], gen["primary"], gen["requested_primary"]) == (2, "fd_mobilenet", "fid")
    assert gen["iterations"][1]["metrics"]["fid"] is None
    assert gen["iterations"][1]["deltas"]["fd_mobilenet"] == pytest.approx(-5.0)
    assert gen["iterations"][1]["better"]["fd_mobilenet"] is True
    assert gen["iterations"][1]["changes"][0] == {"key": "generator.model", "old": "dcgan", "new": "wgan_gp"}
    assert [r["final_grid_epoch"] for r in gen["iterations"]] == [3, 3]


def test_html_table_shows_changes_notes_and_coloured_deltas(built: tuple[Path, dict[str, list[str]]]) -> None:
    root, _ = built
    page = (root / "results/report/index.html").read_text()
    table = _table(page, "Classifier iterations")
    body_rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>")[1], re.S)
    assert len(body_rows) == 3
    assert "first iteration (baseline)" in body_rows[0]
    assert "<code>classifier.lr</code>: 0.001 → 0.0003" in body_rows[1]
    assert "<code>classifier.dropout</code>: 0.2 → 0.5" in body_rows[2]
    assert "<code>split.seed</code>: 0 → 1" in body_rows[2]
    for row, (_, note, *_rest) in zip(body_rows, CLASSIFIER_ITERATIONS):
        assert note in row
    assert '<span class="good"> (+0.1)</span>' in body_rows[1]  # roc_auc up
    assert '<span class="good"> (-0.05)</span>' in body_rows[1]  # ece down: better
    assert '<span class="bad"> (-0.05)</span>' in body_rows[2]  # roc_auc down
    assert '<span class="bad"> (+0.03)</span>' in body_rows[2]  # ece up: worse
    assert '<span class="muted">—</span>' in body_rows[2]  # accuracy missing
    assert "★ best" in body_rows[1] and "★ best" not in body_rows[0] + body_rows[2]


def test_html_is_self_contained_with_embedded_images(built: tuple[Path, dict[str, list[str]]]) -> None:
    root, _ = built
    page = (root / "results/report/index.html").read_text()
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "http://" not in page and "https://" not in page
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert refs and all(r.startswith("data:image/png;base64,") or r.startswith("#") for r in refs)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # classifier: metrics, curves, ROC, confusion, misclassified; generator: metrics, curves, epochs, finals;
    # federated: validation ROC-AUC per round
    assert len(images) == 10
    for b64 in images:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as img:
            assert img.format == "PNG" and img.width > 0
    assert "Not shown" not in _table(page, "Classifier iterations")
    assert "url(" not in page


def test_markdown_and_figure_files_written(built: tuple[Path, dict[str, list[str]]]) -> None:
    root, _ = built
    out = root / "results/report"
    md = (out / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md)
    assert len(figures) == 10  # 9 of the tracks + the federated rounds
    assert all((out / f).is_file() for f in figures)
    table_rows = [line for line in md.splitlines() if line.startswith("| **#")]
    assert len(table_rows) == 3 + 2  # classifier + generator iterations
    assert "`classifier.lr`: 0.001 → 0.0003" in md
    assert "0.9 (+0.1) ✓" in md and "0.08 (+0.03) ✗" in md
    # setup section from the manifests and the upstream runs
    assert "| real | `real` | 7 | 2 | 2 | 11 |" in md
    assert "| `sd` | 10 | 9 | 1 | 10.0 % | 90.0 % |" in md
    assert "source `synthetic`" in md
    assert re.search(r"\| `train_classifier` \| 3 \|", md)


def test_shortcuts_part_shows_the_crop_audit_and_the_probes(built: tuple[Path, dict[str, list[str]]]) -> None:
    root, _ = built
    page = (root / "results/report/index.html").read_text()
    crop = _table(page, "Crop audit")
    assert "<code>border_constant</code>" in crop and "⚠ warning" in crop and "higher = fake (0.970)" in crop
    assert "<code>sd</code> 0.990" in crop  # the generator farthest from 0.5
    assert SHORTCUT_WARNING in _table(page, "Crop-audit warnings")
    probes = _table(page, "Counterfactual probes")
    assert "<code>tighter_framing</code>" in probes and "0.900 → 0.600" in probes and "⚠ flagged" in probes
    assert "0.900 → —" in probes and "3 / 4 (1 no face)" in probes  # jpeg_q75: no AUC recorded
    assert (
        "<strong>Shortcut warning</strong>: 1 crop-audit warning (<code>border_constant</code>) and flagged "
        "probe <code>tighter_framing</code>" in page
    )
    assert "Iteration #2 (best)" in page and "Shortcut checks not recorded" in page  # #2 predates the audit
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", _table(page, "Classifier iterations").split("<tbody>")[1], re.DOTALL)
    assert '<span class="bad">1 feature + 1 probe</span>' in rows[2] and "feature" not in rows[0] + rows[1]
    assert "Not computed: `margin_used` (no margin_used column)." in (root / "results/report/report.md").read_text()


def test_federated_section_compares_central_federated_and_alone(built: tuple[Path, dict[str, list[str]]]) -> None:
    root, _ = built
    html_text = (root / "results/report/index.html").read_text()
    assert 'id="federated"' in html_text
    table = _table(html_text, "Test ROC-AUC of each model")
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    texts = [re.sub(r"<[^>]+>", " ", r).split() for r in rows]
    assert texts[0] == ["model", "ROC-AUC", "ROC-AUC", "sd", "ROC-AUC", "swap"]
    assert [t[-3:] for t in texts[1:]] == [
        ["0.900", "0.930", "0.870"],
        ["0.810", "0.840", "0.780"],
        ["0.660", "0.910", "0.410"],
    ]
    assert "federated (FedAvg)" in table and "client sd alone" in table
    assert (root / "results/report/figures/federated_rounds.png").stat().st_size > 0
    assert re.search(r"^## \d Federated$", (root / "results/report/report.md").read_text(), re.M)
    fed = _summary(root)["federated"]
    assert fed["source"] == "comparison.csv" and [r["model"] for r in fed["comparison"]][0] == "federated_fedavg"


def test_report_without_runs_says_so(in_tmp_project: Path) -> None:
    from stages import report

    set_params(in_tmp_project / "params.yaml", "report", dvc_exp_show=False)
    report.main()
    md = (in_tmp_project / "results/report/report.md").read_text()
    assert "No finished MLflow runs were found" in md
    assert "No classifier iterations are recorded yet" in md
    assert (in_tmp_project / "results/report/index.html").read_text().count("<table>") == 1  # hardware only
    assert _summary(in_tmp_project)["tracks"]["classifier"]["iterations"] == []


HOSTILE = "<script>alert('x')</script> & <b>bold</b>"


def test_text_from_mlflow_is_escaped_in_the_html(in_tmp_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run note and a DVC experiment name with markup reach the page as text, never as tags."""
    from stages import report

    set_params(in_tmp_project / "params.yaml", "report", dvc_exp_show=False)
    _log_run(monkeypatch, "train_classifier", "classifier", CLASSIFIER_BASE, HOSTILE, "exp-<script>")
    _log_run(
        monkeypatch, "evaluate", "evaluate", {"ece_bins": 15}, HOSTILE, "exp-<script>", metrics={"test.roc_auc": 0.9}
    )
    monkeypatch.setenv("DVC_EXP_NAME", "")
    report.main()
    page = (in_tmp_project / "results/report/index.html").read_text()
    assert "<script" not in page.lower() and "<b>" not in page
    row = re.findall(r"<tr[^>]*>(.*?)</tr>", _table(page, "Classifier iterations").split("<tbody>")[1], re.DOTALL)[0]
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in row
    assert "<code>exp-&lt;script&gt;</code>" in row


def test_every_block_kind_escapes_its_text() -> None:
    png = b"\x89PNG any bytes"
    spans = [Span(HOSTILE, kind) for kind in ("", "code", "strong", "muted")]
    doc: list[Block] = [
        Heading(1, HOSTILE),
        Heading(2, HOSTILE, 'a"><script>'),
        Para(f"`{HOSTILE}` **{HOSTILE}** *x<y*"),
        Table(HOSTILE, [HOSTILE], [[Cell([spans])]], ['x"><script>']),
        Figure("f.png", png, HOSTILE),
    ]
    page = to_html(doc)
    assert "<script" not in page.lower() and "<b>" not in page
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"
    # title, h1, nav, h2, para code + strong, caption, th, 4 spans, img alt, figcaption
    assert page.count(escaped) == 14
    assert f"<p><code>{escaped}</code> <strong>{escaped}</strong> <em>x&lt;y</em></p>" in page
    assert f'<h2 id="a&#34;&gt;&lt;script&gt;">{escaped}</h2>' in page
    assert '<tr class="x&#34;&gt;&lt;script&gt;">' in page
    assert f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{escaped}">' in page


def test_templates_are_package_data_found_through_importlib_resources() -> None:
    import tomllib
    from importlib.resources import files

    globs = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["report"]
    templates = sorted((PROJECT_ROOT / "report/templates").iterdir())
    assert templates and all(any(t.relative_to(PROJECT_ROOT / "report").match(g) for g in globs) for t in templates)
    assert environment().autoescape is True
    for path in templates:
        assert files("report").joinpath("templates", path.name).read_text() == path.read_text()
        environment().get_template(path.name)  # compiles
    assert PAGE_TEMPLATE in {t.name for t in templates}


def _run(stage: str, start: float, exp: str = "") -> RunInfo:
    return RunInfo(f"{stage}-{start}", stage, "FINISHED", start, start + 1, {}, {}, {"dvc_exp_name": exp})


def test_pairing_by_experiment_name_then_time() -> None:
    # two queued experiments interleaved: pairing follows dvc_exp_name, not time
    t1, t2 = _run("train", 0, "a"), _run("train", 1, "b")
    e2, e1 = _run("eval", 2, "b"), _run("eval", 3, "a")
    assert pair_runs([t1, t2], [e2, e1]) == [(t1, e1), (t2, e2)]
    # plain `dvc repro`: the next evaluation before the next training run; a later lone one stands alone
    t1, t2 = _run("train", 0), _run("train", 2)
    e1, e2, e_rerun = _run("eval", 1), _run("eval", 3), _run("eval", 4)
    assert pair_runs([t1, t2], [e1, e2, e_rerun]) == [(t1, e1), (t2, e2), (None, e_rerun)]
    # a training run whose evaluation failed keeps its row
    assert pair_runs([t1, t2], [e2]) == [(t1, None), (t2, e2)]


def test_evaluation_rerun_is_its_own_iteration_reusing_the_training() -> None:
    train = RunInfo("t1", "train_classifier", "FINISHED", 0, 1, {"classifier.lr": "0.001"}, {}, {"note": "base"})
    ev1 = RunInfo("e1", "evaluate", "FINISHED", 2, 3, {"evaluate.ece_bins": "15"}, {"test_ece": 0.10}, {})
    ev2 = RunInfo(
        "e2",
        "evaluate",
        "FINISHED",
        4,
        5,
        {"evaluate.ece_bins": "10"},
        {"test_ece": 0.12},
        {"note": "coarser ECE bins"},
    )
    its = build_iterations(CLASSIFIER, [train, ev1, ev2], ["ece", "roc_auc"], frozenset({"ece"}))
    assert [(it.train.run_id, it.eval.run_id, it.reused_train_of) for it in its] == [
        ("t1", "e1", None),
        ("t1", "e2", 1),
    ]
    assert its[1].note == "coarser ECE bins" and its[0].note == "base"
    assert [(c.key, c.old, c.new) for c in its[1].changes] == [("evaluate.ece_bins", "15", "10")]
    assert its[1].metric_keys["ece"] == "test_ece" and its[1].better["ece"] is False
    assert its[1].metrics["roc_auc"] is None and its[1].deltas["roc_auc"] is None


def test_setup_lists_each_stage_latest_device_and_data_parallel_processes() -> None:
    def run(stage: str, start: int, **tags: str) -> RunInfo:
        return RunInfo(f"{stage}{start}", stage, "FINISHED", start, start + 1, {}, {}, tags)

    runs = [
        run("train_classifier", 0, **{"classifier.device": "cpu", "classifier.world_size": "2"}),
        run("train_generator", 1, **{"generator.device": "cuda:0", "generator.world_size": "4"}),
        run("train_generator", 2, **{"generator.device": "cuda:0", "generator.world_size": "1"}),
        run("split", 3),
    ]
    assert devices(runs) == {"train_classifier": "cpu × 2 processes", "train_generator": "cuda:0"}


def test_metric_lookup_and_helpers() -> None:
    assert resolve_metric({"test_roc_auc": 0.9, "val_roc_auc": 0.8}, "roc_auc") == "test_roc_auc"
    assert resolve_metric({"roc_auc": 0.9, "test_roc_auc": 0.8}, "roc_auc") == "roc_auc"
    assert resolve_metric({"kid_mean": 0.1, "kid_std": 0.01}, "kid") == "kid_mean"
    assert resolve_metric({"val_roc_auc": 0.8}, "roc_auc") is None
    changes = params_diff(
        {"split.seed": "0", "classifier.lr": "1"},
        {"split.seed": "1", "classifier.lr": "2", "classifier.new": "x"},
        ["classifier"],
    )
    assert [c.key for c in changes] == ["classifier.lr", "classifier.new", "split.seed"]
    assert changes[1].old is None
    assert spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert spread([1, 2], 6) == [1, 2]
    with pytest.raises(ParamsError, match="report.classifier_primary.*one of report.classifier_metrics"):
        parse_block("report", ReportParams, {"classifier_primary": "eer"})


def test_chromium_renders_the_report(built: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install chromium): headless rendering check skipped")
    root, _ = built
    page = (root / "results/report/index.html").resolve()
    shot = tmp_path / "shot.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    subprocess.run(
        [str(CHROMIUM), *flags, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert shot.exists(), "chromium wrote no screenshot"
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 10, "the screenshot is blank"
    dom = subprocess.run(
        [str(CHROMIUM), *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180, check=False
    ).stdout
    assert "Classifier iterations" in dom and "lower the learning rate" in dom
    assert dom.count('src="data:image/png;base64,') == 10
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
