"""Scale-out files: the Snakefile lints clean and the SLURM profile plans every rule."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT
from tests.test_dag import snakemake_rules
from tests.test_pipeline import project_copy, run


def test_snakemake_lint_is_clean(tmp_path: Path) -> None:
    root = project_copy(tmp_path / "proj")
    proc = run([str(Path(sys.executable).parent / "snakemake"), "--lint"], root)
    output = proc.stdout + proc.stderr
    assert "Lints for" not in output, output
    assert "in a good condition" in output


def test_slurm_profile_names_real_rules_and_gives_training_a_gpu() -> None:
    profile = yaml.safe_load((PROJECT_ROOT / "profiles/slurm/config.yaml").read_text())
    rules = set(snakemake_rules())
    assert profile["executor"] == "slurm"
    assert set(profile["set-resources"]) <= rules
    assert set(profile["set-threads"]) <= rules
    for rule in ("train_classifier", "train_generator"):
        if rule in rules:
            assert profile["set-resources"][rule]["gpu"] >= 1
    assert "gpu" not in profile["set-resources"]["faces"]


def test_slurm_profile_dry_run_plans_the_whole_dag(tmp_path: Path) -> None:
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install snakemake-executor-plugin-slurm")
    root = project_copy(tmp_path / "proj")
    proc = run([str(Path(sys.executable).parent / "snakemake"), "--profile", "profiles/slurm", "-n"], root)
    planned = proc.stdout + proc.stderr
    for rule in set(snakemake_rules()) - {"all"}:
        assert f"rule {rule}:" in planned or f"localrule {rule}:" in planned, rule
