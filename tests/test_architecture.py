"""The layering of docs/architecture.md, checked: import-linter's contracts (pyproject.toml) over every import.

import-linter reads every import statement, function-local ones included, so a lower layer cannot
reach up through a lazy import either, and no subpackage cycle can hide.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout, done.stdout


SRC = REPO / "src" / "vicap_jobs"


def _own_imports(path: Path) -> list[tuple[int, str, bool]]:
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


def test_function_local_imports_of_own_modules_say_why() -> None:
    """A lazy import of the package's own module must keep something heavy off a path, and say so on its line."""
    silent = []
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for line, module, local in _own_imports(path):
            if local and "#" not in lines[line - 1] and "#" not in lines[line - 2]:
                silent.append(f"{path.relative_to(SRC)}:{line} {module}")
    assert silent == []
