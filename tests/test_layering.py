"""Import layering of the model side, counting function-local and TYPE_CHECKING imports (AST, nothing imported).

Target (top → bottom): cli → scheduler → worker → services → pipeline → jobs →
(training | export) → engines → models → (metrics | data) → db → (settings | errors | devices).
Checked here for the packages below: each may import only the packages listed for it,
so there is no cycle between them, lazy or not. A function-local import of the
package's own modules must say on its line why it is lazy (a heavy import it avoids).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vicap_jobs"
BASE = {"errors", "settings", "devices"}
ALLOWED: dict[str, set[str]] = {
    "devices": {"errors"},
    "data": {"errors", "settings"},
    "metrics": {"data", "errors", "settings"},
    "models": {"data", "metrics"} | BASE,
    "engines": {"models", "data", "metrics"} | BASE,
    "export": {"engines", "models", "data", "metrics"} | BASE,
    "training": {"engines", "models", "data", "metrics"} | BASE,
}
LAZY_OWN_IMPORTS = {"models", "engines", "export", "training", "devices.py"}  # packages held to the comment rule


def _files(package: str) -> list[Path]:
    return [SRC / f"{package}.py"] if (SRC / f"{package}.py").is_file() else sorted((SRC / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported vicap_jobs module, inside a function) for every import statement of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    local = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for sub in ast.walk(node)
        if isinstance(sub, ast.Import | ast.ImportFrom)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name, id(node) in local) for name in names if name.startswith("vicap_jobs.")]
    return found


def _package(module: str) -> str:
    return module.split(".")[1]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_layers_below(package: str) -> None:
    wrong = [
        f"{path.relative_to(SRC)}:{line} imports {module}"
        for path in _files(package)
        for line, module, _ in _imports(path)
        if _package(module) not in ALLOWED[package] | {package}
    ]
    assert wrong == []


def test_no_cycles_between_these_packages() -> None:
    edges = {package: set() for package in ALLOWED}
    for package in ALLOWED:
        for path in _files(package):
            edges[package] |= {_package(m) for _, m, _ in _imports(path) if _package(m) in ALLOWED} - {package}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges[start])

    assert [package for package in ALLOWED if reaches(package, package, set())] == []


def test_function_local_imports_of_own_modules_say_why() -> None:
    silent = []
    for package in LAZY_OWN_IMPORTS:
        for path in _files(package.removesuffix(".py")):
            lines = path.read_text(encoding="utf-8").splitlines()
            for line, module, local in _imports(path):
                if local and "#" not in lines[line - 1] and "#" not in lines[line - 2]:
                    silent.append(f"{path.relative_to(SRC)}:{line} {module}")
    assert silent == []
