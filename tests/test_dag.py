"""dvc.yaml and the Snakefile describe the same DAG: stages, commands, inputs, outputs, params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.code_deps import code_packages, is_code_dep, local_imports
from tests.conftest import PROJECT_ROOT

# Top-level folders that hold the project's Python code (a stage's code deps live in these).
CODE_PACKAGES = code_packages()
# Modules that define a training loop, and the entry points that only run trained models: those must not
# import these (so editing a loop reruns training, never evaluate or fid).
TRAINING_LOOPS = ("classifier/train.py", "generator/train.py", "generator/trainers.py")
INFERENCE_ENTRY_POINTS = ("stages.evaluate", "stages.fid", "stages.predict", "stages.sample", "stages.app")


def dvc_stages() -> dict[str, dict[str, Any]]:
    spec = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in spec.items():
        outs = [o if isinstance(o, str) else next(iter(o)) for o in stage.get("outs", [])]
        for kind in ("metrics", "plots"):
            outs += [o if isinstance(o, str) else next(iter(o)) for o in stage.get(kind, [])]
        out[name] = {
            "cmd": stage["cmd"],
            "deps": sorted(stage.get("deps", [])),
            "outs": sorted(outs),
            "params": sorted(stage.get("params", [])),
        }
    return out


def snakemake_rules() -> dict[str, Any]:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet=True)) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(), snakefile=PROJECT_ROOT / "Snakefile", workdir=PROJECT_ROOT
        )._workflow
        return {rule.name: rule for rule in workflow.rules}


def block_names(rule: Any, params: dict[str, Any]) -> list[str]:
    """The params.yaml blocks a rule declares: ``params: <block>=config["<block>"]``."""
    declared = dict(rule.params.items())
    for name, value in declared.items():
        assert value == params.get(name), f"rule {rule.name}: params {name} is not params.yaml block {name!r}"
    return sorted(declared)


def test_dvc_and_snakemake_describe_the_same_dag() -> None:
    stages = dvc_stages()
    rules = snakemake_rules()
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert set(rules) - {"all"} == set(stages)
    for name, stage in stages.items():
        rule = rules[name]
        assert rule.shellcmd.replace(" > {log} 2>&1", "") == stage["cmd"], name
        assert sorted(rule.input) == stage["deps"], name
        assert sorted(rule.output) == stage["outs"], name
        assert block_names(rule, params) == stage["params"], name


def test_every_rule_logs_and_all_is_the_default_target() -> None:
    rules = snakemake_rules()
    first = (PROJECT_ROOT / "Snakefile").read_text().split("\nrule ", 1)[1].split(":", 1)[0]
    assert first == "all"
    for name, rule in rules.items():
        if name != "all":
            assert list(rule.log), f"rule {name} has no log:"
    consumed = {f for rule in rules.values() for f in rule.input}
    leaves = {f for name, rule in rules.items() if name != "all" for f in rule.output} - consumed
    assert leaves <= set(rules["all"].input), f"rule all misses {sorted(leaves - set(rules['all'].input))}"


def test_every_dependency_file_exists() -> None:
    for name, stage in dvc_stages().items():
        for dep in stage["deps"]:
            if not dep.startswith(("data/", "results/")):
                assert (PROJECT_ROOT / dep).exists(), f"{name}: dependency {dep} does not exist"


def test_stage_params_blocks_exist() -> None:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for name, stage in dvc_stages().items():
        for block in stage["params"]:
            assert block in params, f"{name}: params block {block!r} missing from params.yaml"
    assert Path(PROJECT_ROOT / "Snakefile").exists()


def test_code_deps_are_exactly_what_each_stage_imports() -> None:
    """A stage reruns when code it runs changes, and only then."""
    for name, stage in dvc_stages().items():
        module = stage["cmd"].split("python -m ", 1)[1].split()[0]
        code_deps = {d for d in stage["deps"] if is_code_dep(d, CODE_PACKAGES)}
        imported = local_imports(module)
        assert code_deps == imported, (
            f"{name}: dvc.yaml code deps differ from its imports (python -m tests.code_deps fixes it): "
            f"missing {sorted(imported - code_deps)}, not imported {sorted(code_deps - imported)}"
        )


def test_inference_entry_points_import_no_training_loop() -> None:
    """evaluate, fid, predict, sample and app run trained models: no training loop among their imports."""
    for path in TRAINING_LOOPS:
        assert (PROJECT_ROOT / path).exists(), f"{path} is gone: update TRAINING_LOOPS"
    assert "classifier/train.py" in local_imports("stages.train_classifier")
    assert {"generator/train.py", "generator/trainers.py"} <= local_imports("stages.train_generator")
    for module in INFERENCE_ENTRY_POINTS:
        loops = sorted(local_imports(module) & set(TRAINING_LOOPS))
        assert not loops, (
            f"{module} imports the training loop(s) {loops} (directly or through another module): "
            "move what it needs into an inference module (e.g. classifier/infer.py, "
            "generator/sampling.py)"
        )
