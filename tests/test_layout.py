"""The code layout: one package per domain, a core that builds on nothing else, small modules."""

from __future__ import annotations

import tomllib

from tests.conftest import PROJECT_ROOT
from tests.test_dag import CODE_PACKAGES, local_imports

MAX_MODULE_LINES = 450
CHECKED_FOLDERS = (*CODE_PACKAGES, "bench")  # every Python module outside tests/


def test_no_module_outside_tests_is_over_the_line_limit() -> None:
    long = {}
    for folder in CHECKED_FOLDERS:
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            lines = len(path.read_text().splitlines())
            if lines > MAX_MODULE_LINES:
                long[str(path.relative_to(PROJECT_ROOT))] = lines
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by role): {long}"


def test_every_code_package_is_a_package_and_installed() -> None:
    include = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for name in CODE_PACKAGES:
        assert (PROJECT_ROOT / name / "__init__.py").exists(), f"{name}/ has no __init__.py"
        assert f"{name}*" in include["include"], f"{name} is missing from [tool.setuptools.packages.find] include"
    assert not (PROJECT_ROOT / "stages" / "common").exists(), "stages/common/ is back: put helpers in a domain package"


def test_the_core_imports_no_domain_package() -> None:
    for path in sorted((PROJECT_ROOT / "core").glob("*.py")):
        module = f"core.{path.stem}"
        outside = sorted(f for f in local_imports(module) if not f.startswith("core/"))
        assert not outside, f"{module} imports {outside}: the core must not depend on a domain package"
