"""Mutation testing of the pure modules with mutmut; writes bench/results/mutation.md.

A test suite earns trust when it fails on the bugs it exists for. mutmut plants
small bugs ("mutants": ``<`` for ``<=``, ``+ 1`` for ``- 1``, a dropped argument)
one at a time in a module and runs the tests that cover the changed function; a
mutant the tests do not notice "survives". Each module here must kill at least
90 % of its mutants; the survivors judged equivalent (no test could ever tell them
apart from the original) are listed with a one-line reason in EQUIVALENT.

Usage, from the repository root (any folder works; it changes into the root):

    python bench/mutation.py                          # every module in MODULES
    python bench/mutation.py metrics/bleu.py data/text.py
    python bench/mutation.py --report-only            # rewrite the report from mutants/*.meta

It runs ``mutmut run --max-children 1 'vicap_jobs.metrics.bleu.*' ...`` (one
worker: the CI box and the dev machines have two cores) with ``only_mutate`` and
the test selection set from MODULES for the modules asked for (the fixed settings
are in pyproject.toml under ``[tool.mutmut]``), then reads the verdicts from
``mutants/**.meta`` and writes killed / survived / total and the score per module.
Timeouts and type-check kills count as killed, as mutmut counts them. Work files
go to ``mutants/`` (git-ignored); delete it to start from scratch. The report keeps
the lines of modules not run this time. A full run of the default modules takes
about 20-30 minutes here. Not part of the default pytest run, and never imported
by it.

Adding a module is one line in MODULES: its path under src/ and the tests that
exercise it (the fewer and faster, the quicker the run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench" / "results" / "mutation.md"
TARGET = 0.90  # killed / total, per module

# module under src/  ->  the tests that exercise it
MODULES: dict[str, tuple[str, ...]] = {
    "vicap_jobs/metrics/bleu.py": ("tests/metrics",),
    "vicap_jobs/metrics/rouge.py": ("tests/metrics",),
    "vicap_jobs/metrics/scores.py": ("tests/metrics",),
    "vicap_jobs/metrics/baseline.py": ("tests/metrics",),
    "vicap_jobs/data/text.py": ("tests/data/test_text.py", "tests/metrics"),
    "vicap_jobs/data/images.py": ("tests/data/test_images.py",),
    "vicap_jobs/models/decoding.py": ("tests/models/test_decoding.py",),
}

# Surviving mutants judged equivalent: mutant name -> why no test can tell it from the original.
EQUIVALENT: dict[str, str] = {}

_KILLED = {1, 3, 36, 37, 24, -24, 152, 255}  # test failure, pytest error, timeouts, type check (mutmut's stats.py)
_SURVIVED = {0}
_NO_TESTS = {5, 33}
_ROW = re.compile(r"^\| `(?P<module>[^`]+)` \|")


@dataclass
class ModuleResult:
    """Verdicts of one module's mutants from its mutmut .meta file."""

    module: str
    killed: int
    survived: list[str]
    no_tests: list[str]
    other: list[str]

    @property
    def total(self) -> int:
        return self.killed + len(self.survived) + len(self.no_tests) + len(self.other)

    @property
    def score(self) -> float:
        return self.killed / self.total if self.total else 0.0


def mutant_glob(module: str) -> str:
    """mutmut's name pattern for every mutant of a module: ``vicap_jobs.metrics.bleu.*``."""
    return module.removesuffix(".py").replace("/", ".") + ".*"


def run_mutmut(modules: list[str]) -> list[str]:
    """Run mutmut on `modules` in this process (the settings object is mutmut's own); return the argv used."""
    os.chdir(ROOT)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch in every forked worker: one thread each
    import mutmut.configuration

    config = mutmut.configuration.config()  # the [tool.mutmut] settings of pyproject.toml
    for name in ("only_mutate", "pytest_add_cli_args_test_selection"):
        if not hasattr(config, name):
            raise SystemExit(f"this mutmut has no setting {name!r}; bench/mutation.py expects mutmut 3.8")
    config.only_mutate = [f"src/{module}" for module in modules]
    config.pytest_add_cli_args_test_selection = sorted({test for module in modules for test in MODULES[module]})

    from mutmut.__main__ import cli

    argv = ["run", "--max-children", "1", *(mutant_glob(module) for module in modules)]
    try:
        cli.main(argv, prog_name="mutmut", standalone_mode=False)
    except SystemExit as exc:  # mutmut exits on a failed clean run or when no test covers a mutant
        if exc.code not in (0, None):
            raise
    return argv


def read_results(module: str) -> ModuleResult | None:
    """The verdicts mutmut stored for `module`, or None when it has never been run."""
    meta = ROOT / "mutants" / "src" / f"{module}.meta"
    if not meta.is_file():
        return None
    exit_codes: dict[str, int | None] = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    result = ModuleResult(module, killed=0, survived=[], no_tests=[], other=[])
    for name, code in sorted(exit_codes.items(), key=lambda item: _natural_key(item[0])):
        if code in _KILLED:
            result.killed += 1
        elif code in _SURVIVED:
            result.survived.append(name)
        elif code in _NO_TESTS:
            result.no_tests.append(name)
        else:
            result.other.append(f"{name} (exit code {code})")
    return result


def _natural_key(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else -1


def _diff(name: str) -> str:
    """The changed lines of one mutant (``mutmut show``), or "" when mutmut cannot show it."""
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        diff = get_diff_for_mutant(name)
    except Exception:  # noqa: BLE001  (a missing diff must not lose the report)
        return ""
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return " / ".join(line.strip() for line in changed)[:300]


def _old_rows() -> dict[str, str]:
    """Table rows of the existing report, by module, to keep those not run this time."""
    if not REPORT.is_file():
        return {}
    rows = {}
    for line in REPORT.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match and match["module"] in MODULES:
            rows[match["module"]] = line
    return rows


def write_report(results: list[ModuleResult], command: str, seconds: float | None) -> str:
    """Write bench/results/mutation.md: the score table, then every survivor with its diff and verdict."""
    rows = _old_rows()
    for r in results:
        mark = "yes" if r.score >= TARGET else "**no**"
        rows[r.module] = (
            f"| `{r.module}` | {r.killed} | {len(r.survived)} | {len(r.no_tests) + len(r.other)} | {r.total} "
            f"| {100 * r.score:.1f} % | {mark} |"
        )
    lines = [
        "# Mutation testing of the pure modules",
        "",
        "Written by `bench/mutation.py` (see its docstring). A mutant is one small planted bug; *killed* means",
        "a test failed (timeouts count as killed), *survived* means every test still passed. Score = killed /",
        f"total; the target is {100 * TARGET:.0f} % per module.",
        "",
        "Command (repository root, venv active):",
        "",
        "```",
        command,
        "```",
        "",
    ]
    if seconds is not None:
        lines += [f"Last run: {time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min on {os.cpu_count()} CPU cores.", ""]
    lines += [
        "| module | killed | survived | no tests / other | total | score | ≥ 90 % |",
        "|---|---:|---:|---:|---:|---:|---|",
        *(rows[module] for module in MODULES if module in rows),
        "",
        "## Survivors",
        "",
        "Each surviving mutant of the modules run, with what it changes and why it is judged equivalent",
        "(no input can tell it from the original). A survivor without a reason is a missing test.",
        "",
    ]
    survivors = [(r.module, name) for r in results for name in r.survived + r.no_tests + r.other]
    if not survivors:
        lines.append("None.")
    for module, name in survivors:
        reason = EQUIVALENT.get(name.split(" ")[0], "**not judged: add a test that kills it**")
        diff = _diff(name.split(" ")[0])
        lines.append(f"- `{name}` ({module}): {reason}" + (f"<br>`{diff}`" if diff else ""))
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="paths under src/vicap_jobs (default: every module in MODULES)")
    parser.add_argument("--report-only", action="store_true", help="do not run mutmut; report the last verdicts")
    args = parser.parse_args(argv)
    modules = [m if m.startswith("vicap_jobs/") else f"vicap_jobs/{m}" for m in args.modules] or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULES)}")
    command = "python bench/mutation.py " + " ".join(shlex.quote(m.removeprefix("vicap_jobs/")) for m in args.modules)
    seconds = None
    if not args.report_only:
        start = time.perf_counter()
        mutmut_argv = run_mutmut(modules)
        seconds = time.perf_counter() - start
        command = f"{command.strip()}\n# runs: mutmut {shlex.join(mutmut_argv)}"
    os.chdir(ROOT)
    results = [result for module in modules if (result := read_results(module)) is not None]
    missing = sorted(set(modules) - {r.module for r in results})
    if missing:
        print(f"no mutmut results yet for: {', '.join(missing)}", file=sys.stderr)
    write_report(results, command.strip(), seconds)
    for r in results:
        print(f"{r.module}: {r.killed}/{r.total} killed ({100 * r.score:.1f} %), {len(r.survived)} survived")
    return 0 if all(r.score >= TARGET for r in results) and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
