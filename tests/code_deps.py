"""The code deps of each stage, from its imports: checked by tests/test_dag.py, rewritten by

    python -m tests.code_deps          # rewrite the code deps of every stage in dvc.yaml and the Snakefile

A stage's code deps are the project's .py files that ``python -m stages.<name>`` imports, transitively
(the stage module first, then sorted); data deps and non-code files (templates) are left as they are.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_packages(root: Path = ROOT) -> tuple[str, ...]:
    """The project's top-level packages, as pyproject.toml lists them for setuptools."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    return tuple(p.rstrip("*") for p in config["tool"]["setuptools"]["packages"]["find"]["include"])


def is_code_dep(path: str, packages: tuple[str, ...]) -> bool:
    return path.endswith(".py") and path.split("/", 1)[0] in packages


def local_imports(module: str, root: Path = ROOT) -> set[str]:
    """Files of this project that ``python -m <module>`` imports, transitively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = root / (name.replace(".", "/") + ".py")
        if not path.exists() or str(path.relative_to(root)) in seen:
            continue
        seen.add(str(path.relative_to(root)))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
    return {f for f in seen if not f.endswith("__init__.py")}


def ordered_code_deps(module: str, root: Path = ROOT) -> list[str]:
    first = module.replace(".", "/") + ".py"
    return [first] + sorted(local_imports(module, root) - {first})


def _rewrite_block(block: str, module: str, item: re.Pattern[str], fmt: str, root: Path) -> str:
    """Replace the block's run of code-dep lines with ``module``'s imports."""
    packages = code_packages(root)
    lines = block.splitlines(keepends=True)
    for i, line in enumerate(lines):
        m = item.match(line)
        if m and is_code_dep(m.group(2), packages):
            j = i
            while j < len(lines) and (n := item.match(lines[j])) and is_code_dep(n.group(2), packages):
                j += 1
            deps = [fmt.format(indent=m.group(1), path=p) for p in ordered_code_deps(module, root)]
            return "".join(lines[:i] + deps + lines[j:])
    return block


def _rewrite(text: str, header: str, item: str, fmt: str, root: Path) -> str:
    """Each block (from one ``header`` line to the next) that runs ``python -m stages.<name>``, rewritten."""
    parts = re.split(f"(?m)(?={header})", text)
    out = []
    for part in parts:
        m = re.search(r"python -m (stages\.\w+)", part)
        out.append(_rewrite_block(part, m.group(1), re.compile(item), fmt, root) if m else part)
    return "".join(out)


def synced_dvc_yaml(root: Path = ROOT) -> str:
    return _rewrite((root / "dvc.yaml").read_text(), r"^  \w+:\s*$", r"^(\s+)- (\S+)\s*$", "{indent}- {path}\n", root)


def synced_snakefile(root: Path = ROOT) -> str:
    return _rewrite(
        (root / "Snakefile").read_text(), r"^rule \w+:", r'^(\s+)"([^"]+)",\s*$', '{indent}"{path}",\n', root
    )


def main() -> None:
    for name, text in (("dvc.yaml", synced_dvc_yaml()), ("Snakefile", synced_snakefile())):
        path = ROOT / name
        if path.read_text() != text:
            path.write_text(text)
            print(f"{name}: code deps rewritten")


if __name__ == "__main__":
    main()
