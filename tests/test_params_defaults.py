"""Each params fact once: the dataclass defaults are params.yaml's values, and the code implements exactly
the choices core/params.py lists."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from core.params import CLASSIFIER_ARCHS, DIFFAUGMENT_OPS, GENERATOR_MODELS, ClassifierParams, parse_block
from tests.conftest import PROJECT_ROOT
from tests.test_params_keys import block_class

BLOCKS = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def defaults(cls: type) -> dict[str, Any]:
    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        for f in dataclasses.fields(cls)
    }


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_dataclass_defaults_are_the_params_yaml_values(block: str) -> None:
    cls = block_class(block)
    raw = BLOCKS[block]
    assert list(raw) == list(defaults(cls)), f"{block}: params.yaml keys and {cls.__name__} fields differ (or order)"
    wrong = {k: (v, raw[k]) for k, v in defaults(cls).items() if v != raw[k]}
    assert not wrong, f"{block}: {cls.__name__} default != params.yaml value: {wrong}"
    assert parse_block(block, cls, raw) == cls()


def test_the_training_loop_has_no_defaults_of_its_own() -> None:
    import inspect

    from classifier import train
    from classifier.augment import AugmentConfig
    from models.classifier import ArchSpec

    assert not hasattr(train, "LoopConfig")
    assert inspect.signature(train.train_loop).parameters["p"].annotation in (ClassifierParams, "ClassifierParams")
    for cls in (AugmentConfig, ArchSpec):  # built from ClassifierParams (from_params), never from defaults
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(cls)), cls.__name__


def test_the_code_implements_exactly_the_listed_choices() -> None:
    """models/ and generator/ import these lists; where the code has its own registry, it names the same."""
    from generator.augment import AUGMENTATIONS
    from models.classifier import TORCHVISION_ARCHS

    assert set(CLASSIFIER_ARCHS) == {*TORCHVISION_ARCHS, "cnn"}
    assert set(DIFFAUGMENT_OPS) == set(AUGMENTATIONS)
    assert GENERATOR_MODELS == ("vae", "dcgan", "wgan_gp", "ddpm")  # VaeTrainer, GanTrainer (x2), DiffusionTrainer
