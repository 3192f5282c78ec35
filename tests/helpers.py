"""Small test utilities (importable as ``tests.helpers``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def set_params(params_file: Path, block: str, **values: Any) -> None:
    """Overwrite keys of one block of a params.yaml copy."""
    data = yaml.safe_load(params_file.read_text()) or {}
    data.setdefault(block, {})
    if not isinstance(data[block], dict):
        data[block] = {}
    data[block].update(values)
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))
