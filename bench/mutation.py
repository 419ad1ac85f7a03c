"""Mutation testing with mutmut of the modules where a silent bug corrupts results or loses work; writes bench/results/mutation.md.

A test suite earns trust when it fails on the bugs it exists for. mutmut plants
small bugs ("mutants": ``<`` for ``<=``, ``+ 1`` for ``- 1``, a dropped argument)
one at a time in a module and runs the tests that cover the changed function; a
mutant the tests do not notice "survives". Each module here must kill at least
90 % of its mutants that are not equivalent; the survivors judged equivalent (no
test could ever tell them apart from the original) are listed with a one-line
reason in EQUIVALENT, and the report shows the plain killed / total beside it.

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
go to ``mutants/`` (git-ignored), which each run first deletes: mutmut's caches go
stale when the module list or the tests change. The report keeps the lines of
modules not run this time. A full run of the default modules takes about six
minutes on two cores. Not part of the default pytest run, and never imported by it.

Adding a module is one line in MODULES: its path under src/ and the tests that
exercise it (the fewer and faster, the quicker the run), e.g.
``"vicap_jobs/pipeline/writer.py": ("tests/pipeline/test_writer.py",),``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench" / "results" / "mutation.md"
TARGET = 0.90  # killed / total, per module
CHILDREN = int(os.environ.get("MUTATION_CHILDREN", "1"))  # mutmut workers; the dev and CI boxes have two cores

JOB_TESTS = ("tests/jobs", "tests/pipeline/test_concurrency.py", "tests/worker/test_reaper.py")

# module under src/  ->  the tests that exercise it
MODULES: dict[str, tuple[str, ...]] = {
    "vicap_jobs/metrics/bleu.py": ("tests/metrics",),
    "vicap_jobs/metrics/rouge.py": ("tests/metrics",),
    "vicap_jobs/metrics/scores.py": ("tests/metrics",),
    "vicap_jobs/metrics/baseline.py": ("tests/metrics",),
    "vicap_jobs/data/text.py": ("tests/data/test_text.py", "tests/metrics"),
    "vicap_jobs/data/images.py": ("tests/data/test_images.py", "tests/data/test_preprocessing.py"),
    "vicap_jobs/models/decoding.py": ("tests/models/test_decoding.py",),
    # The job system (SQLite and PostgreSQL cases; tests/pipeline/test_runner.py loads real checkpoints,
    # ~13 s a mutant, and the spy-engine runner tests cover the same paths).
    "vicap_jobs/jobs/lifecycle.py": JOB_TESTS,
    "vicap_jobs/jobs/chunks.py": JOB_TESTS,
    "vicap_jobs/jobs/writer.py": JOB_TESTS,
    "vicap_jobs/jobs/recovery.py": JOB_TESTS,
    "vicap_jobs/pipeline/runner.py": JOB_TESTS,
    "vicap_jobs/pipeline/reader.py": JOB_TESTS,
}

# mutmut 3 never mutates a decorated function (a decorator may register or wrap it). These only switch
# autograd off around a call, so functions decorated with nothing else are mutated as if undecorated;
# without this, beam_search and greedy_decode would not be mutation-tested at all.
TRANSPARENT_DECORATORS = frozenset({"torch.no_grad()"})


def _judged(reason: str, prefix: str, *mutants: str) -> dict[str, str]:
    return {f"vicap_jobs.{prefix}.{mutant}": reason for mutant in mutants}


_ZIP_CHECKED = "zip(strict=...) on sequences whose lengths are equal by construction (checked or built just above)"
_CPU_DTYPE = "dtype inferred from Python ints is int64 anyway (torch.long), the same tensor"

# Surviving mutants judged equivalent: mutant name -> why no test can tell it from the original.
# Names are mutmut's and shift when a function changes; a stale entry simply stops matching, and a
# new survivor shows up in the report as "not judged" until it gets a test or a reason here.
EQUIVALENT: dict[str, str] = {
    # metrics/bleu.py
    **_judged(
        "ratio = (c + 1e-15) / (r + 1e-9) equals 1 only when 1e-9 vanishes in rounding, and then the penalty is exp(0) = 1",
        "metrics.bleu",
        "x_bleu_from_counts__mutmut_21",
    ),
    **_judged(
        _ZIP_CHECKED, "metrics.bleu", "x_corpus_bleu__mutmut_7", "x_corpus_bleu__mutmut_10", "x_corpus_bleu__mutmut_11"
    ),
    **_judged(
        "`>=` instead of `>` when taking a maximum only rewrites an equal value",
        "metrics.bleu",
        "x_max_reference_counts__mutmut_6",
    ),
    # metrics/rouge.py
    **_judged(
        _ZIP_CHECKED,
        "metrics.rouge",
        "x_corpus_rouge_l__mutmut_15",
        "x_corpus_rouge_l__mutmut_18",
        "x_corpus_rouge_l__mutmut_19",
    ),
    **_judged(
        "LCS is symmetric: swapping equally long inputs changes nothing", "metrics.rouge", "x_lcs_length__mutmut_1"
    ),
    **_judged(
        "one extra DP cell is never read (indices stop at len(second)) and is replaced after the first row",
        "metrics.rouge",
        "x_lcs_length__mutmut_7",
    ),
    **_judged(
        "best precision and best recall are 0 together (both need an LCS of 0 with every reference), so `and` = `or`",
        "metrics.rouge",
        "x_sentence_rouge_l__mutmut_27",
    ),
    # metrics/baseline.py
    **_judged(
        "MAX_N and the default of max_n are the same constant (bleu.MAX_N = 4)",
        "metrics.baseline",
        "xǁ_ConstantBleuIndexǁbuild__mutmut_5",
        "xǁ_ConstantBleuIndexǁcounts__mutmut_7",
        "xǁ_ConstantBleuIndexǁcounts__mutmut_26",
    ),
    **_judged(
        "extra zero slots accumulate to the last real total, and clipped[min(count, len) - 1] reads the same value",
        "metrics.baseline",
        "xǁ_ConstantBleuIndexǁbuild__mutmut_14",
    ),
    **_judged(
        "BLEU-4 multiplies all four (matched + tiny) / (guessed + small): shifting matched between orders keeps the product",
        "metrics.baseline",
        "xǁ_ConstantBleuIndexǁcounts__mutmut_13",
    ),
    **_judged(
        "a fifth guessed count is never read (bleu_from_counts loops over max_n = 4)",
        "metrics.baseline",
        "xǁ_ConstantBleuIndexǁcounts__mutmut_47",
    ),
    # data/text.py
    **_judged("typing.cast returns its argument whatever the type", "data.text", "x_check_tokenization__mutmut_10"),
    # data/images.py
    **_judged(
        "Pillow clamps channel values to 255, so 256 paints the same white",
        "data.images",
        *(f"x__composite_on_white__mutmut_{n}" for n in (14, 15, 16, 17)),
    ),
    **_judged(
        "int(None) raises TypeError, which the same function catches and answers 1",
        "data.images",
        "x__exif_orientation__mutmut_3",
        "x__exif_orientation__mutmut_5",
    ),
    **_judged(
        "orientation 2 (a mirror) swaps no axes: image_size only asks whether it is 5-8",
        "data.images",
        "x__exif_orientation__mutmut_6",
        "x__exif_orientation__mutmut_8",
    ),
    **_judged(
        "Pillow refuses 0-pixel images when opening (tried PNG, GIF, BMP, PPM, TGA, TIFF, QOI), so this check never fires",
        "data.images",
        *(f"x__open_checked__mutmut_{n}" for n in (21, 22, 24, 26)),
    ),
    **_judged(
        "size is None only if the file changes between Pillow's open and our probe with the same plugins",
        "data.images",
        "x__open_checked__mutmut_10",
    ),
    **_judged(
        "plugin accept() checks look at the first bytes only; reading 17 bytes or the whole header file is the same",
        "data.images",
        "x__probe_size_unchecked__mutmut_5",
        "x__probe_size_unchecked__mutmut_6",
    ),
    **_judged(
        "trying plugins whose accept() said no (or skipping ones without accept) only adds failed tries: "
        "a plugin that does not recognise the header raises and is skipped; none precedes the right one in Pillow 13",
        "data.images",
        *(f"x__probe_size_unchecked__mutmut_{n}" for n in (9, 10, 12, 13, 22)),
    ),
    **_judged(
        "the file name only appears in Pillow's own error messages, which the probe discards",
        "data.images",
        "x__probe_size_unchecked__mutmut_19",
        "x__probe_size_unchecked__mutmut_21",
    ),
    **_judged(
        "an RGB image converted to RGB is an identical copy",
        "data.images",
        "x__to_rgb8__mutmut_3",
        "x__to_rgb8__mutmut_4",
    ),
    **_judged(
        "ImageOps.exif_transpose returns None only with in_place=True, which is never passed",
        "data.images",
        "x__upright_copy__mutmut_5",
        "x__upright_copy__mutmut_12",
    ),
    **_judged(
        "a square image takes either branch with the same result (both sides become size)",
        "data.images",
        "x__shorter_side_crop__mutmut_2",
    ),
    **_judged(
        "the pixels are uint8 whatever the array's dtype: np.asarray of an RGB image is uint8, and a float batch "
        "holding the same integers scales to the same float32 values",
        "data.images",
        *(f"xǁPreprocessingǁapply__mutmut_{n}" for n in (5, 7, 31, 33)),
    ),
    **_judged(
        "an image here always has pixels (0-pixel images never open), so the values.size fallback is unused",
        "data.images",
        "x__wide_to_rgb8__mutmut_8",
        "x__wide_to_rgb8__mutmut_10",
    ),
    **_judged(
        "high in (255, 256] is taken by the branch above (255 < high <= 65535)",
        "data.images",
        "x__wide_to_rgb8__mutmut_24",
    ),
    **_judged(
        "scaled is already rounded and within 0..255; a float array gives mode F, which converts to the same gray",
        "data.images",
        "x__wide_to_rgb8__mutmut_43",
    ),
    **_judged(
        "no branch produces values outside 0..255 (65535 / 257 = 255, min-max ends at 255), so the clip never acts",
        "data.images",
        *(f"x__wide_to_rgb8__mutmut_{n}" for n in (45, 46, 52)),
    ),
    **_judged(
        "unreachable: every step inside the try turns its own OSError into an ImageError first",
        "data.images",
        "x_load_rgb__mutmut_8",
        "x_load_rgb__mutmut_9",
    ),
    **_judged(
        "uint8 pixels stored in a float64 batch are the same numbers after astype(float32)",
        "data.images",
        "x_preprocess__mutmut_6",
        "x_preprocess__mutmut_8",
        "x_preprocess__mutmut_22",
        "x_preprocess__mutmut_24",
    ),
    **_judged(
        "Pillow's default resize filter for RGB images is BICUBIC",
        "data.images",
        "x_preprocess__mutmut_17",
        "x_preprocess__mutmut_19",
    ),
    **_judged(
        "reading the whole file at once gives the same digest (only memory differs)",
        "data.images",
        "x_sha256_file__mutmut_6",
    ),
    # models/decoding.py
    **_judged('float("-INF") is float("-inf")', "models.decoding", "x_ban_tokens__mutmut_12"),
    **_judged(
        _CPU_DTYPE,
        "models.decoding",
        *(f"x_beam_search__mutmut_{n}" for n in (21, 25, 190, 193, 213, 216)),
        "x_greedy_decode__mutmut_10",
        "x_greedy_decode__mutmut_14",
    ),
    **_judged("argmax is already int64: .to(None) keeps it", "models.decoding", "x_greedy_decode__mutmut_35"),
    **_judged(
        _ZIP_CHECKED,
        "models.decoding",
        *(
            f"x_beam_search__mutmut_{n}"
            for n in (59, 62, 63, 112, 115, 116, 122, 125, 126, 206, 209, 210, 231, 234, 235)
        ),
    ),
    **_judged(
        "on a 2-D tensor dim=+1, dim=-1 and topk's default dim are the same axis",
        "models.decoding",
        "x_beam_search__mutmut_69",
        "x_beam_search__mutmut_97",
        "x_greedy_decode__mutmut_37",
    ),
    **_judged(
        "each beam has one EOS continuation, so the top 2K always hold K non-EOS ones; 3K adds candidates never reached",
        "models.decoding",
        "x_beam_search__mutmut_103",
    ),
    **_judged(
        "a -inf placeholder added to the final candidates can never be the maximum: a live image has a finite beam",
        "models.decoding",
        "x_beam_search__mutmut_251",
    ),
    **_judged(
        "finished rows are fed EOS (masked_fill), so tokens == eos_id is already true for them",
        "models.decoding",
        "x_greedy_decode__mutmut_40",
    ),
    # jobs/lifecycle.py, jobs/chunks.py, jobs/writer.py, jobs/recovery.py, pipeline/runner.py
    **_judged(
        "status=QUEUED dropped or None: the column default is the same value",
        "jobs.lifecycle",
        "x_create_job__mutmut_16",
        "x_create_job__mutmut_24",
    ),
    **_judged(
        "status=QUEUED dropped or None: the column default is the same value",
        "jobs.chunks",
        "x_create_chunks__mutmut_11",
        "x_create_chunks__mutmut_16",
    ),
    **_judged(
        "the task-id query without its status filter: every id listed belongs to a row already checked open",
        "jobs.lifecycle",
        "x_cancel_job__mutmut_28",
    ),
    **_judged(
        "ORDER BY removed: the primary-key index returns that order on both databases at these sizes",
        "jobs.lifecycle",
        "x_child_job_ids__mutmut_3",
    ),
    **_judged(
        "ORDER BY removed: the primary-key index returns that order on both databases at these sizes",
        "jobs.chunks",
        "x_open_chunk_ids__mutmut_3",
    ),
    **_judged(
        "ORDER BY removed: the primary-key index returns that order on both databases at these sizes",
        "jobs.recovery",
        "x_waiting_too_long__mutmut_5",
    ),
    **_judged(
        "populate_existing dropped: the ORM UPDATE already refreshed the loaded object",
        "jobs.chunks",
        *(f"x_claim_chunk__mutmut_{n}" for n in (30, 33, 34)),
    ),
    **_judged(
        "the 'already captioned' pre-filter only saves inserts: the writer's insert-or-skip does the same",
        "jobs.chunks",
        *(f"x_give_up_chunk__mutmut_{n}" for n in (35, 36, 38, 39)),
    ),
    **_judged(
        "no status filter on reasons: this branch only runs when there are no ok rows",
        "jobs.chunks",
        "x_finish_if_drained__mutmut_47",
    ),
    **_judged(
        "most_common(None or 2)[0] is still the most common reason",
        "jobs.chunks",
        "x_finish_if_drained__mutmut_54",
        "x_finish_if_drained__mutmut_55",
    ),
    **_judged(
        "a different split maxsplit leaves the part before the first colon, [0], unchanged",
        "jobs.chunks",
        "x_error_reason__mutmut_4",
        "x_error_reason__mutmut_10",
    ),
    **_judged(
        "status filter dropped or the loop re-check weakened: the conditional UPDATEs still stop non-running rows",
        "jobs.recovery",
        *(f"x_requeue_stale_chunks__mutmut_{n}" for n in (7, 20, 23)),
        "x_requeue_stale_jobs__mutmut_7",
    ),
    **_judged(
        "a join without its ON clause: SQLAlchemy infers the same foreign-key join",
        "jobs.recovery",
        "x_redelivery_for_chunks__mutmut_8",
        "x_redelivery_for_chunks__mutmut_10",
        "x_waiting_too_long__mutmut_15",
        "x_waiting_too_long__mutmut_17",
    ),
    **_judged(
        "always the PostgreSQL insert: it compiles identically on SQLite", "jobs.writer", "x_write_results__mutmut_5"
    ),
    **_judged(
        "ON CONFLICT without a target: (job_id, image_id) is the only key that can conflict",
        "jobs.writer",
        "x_write_results__mutmut_15",
    ),
    **_judged(_ZIP_CHECKED, "pipeline.runner", *(f"x_caption_batch__mutmut_{n}" for n in (43, 46, 47))),
    **_judged(
        "latency kept when the text is None: the writer drops latency for error rows",
        "pipeline.runner",
        "x_caption_batch__mutmut_58",
    ),
    **_judged(
        "no image filter: the result is only used to test membership of the chunk's own images",
        "pipeline.runner",
        "x__uncaptioned__mutmut_8",
    ),
}

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

    @property
    def equivalent(self) -> int:
        return sum(name in EQUIVALENT for name in self.survived)

    @property
    def score_without_equivalent(self) -> float:
        judged = self.total - self.equivalent
        return self.killed / judged if judged else 0.0


def mutant_glob(module: str) -> str:
    """mutmut's name pattern for every mutant of a module: ``vicap_jobs.metrics.bleu.*``."""
    return module.removesuffix(".py").replace("/", ".") + ".*"


def run_mutmut(modules: list[str]) -> list[str]:
    """Run mutmut on `modules` in this process (the settings object is mutmut's own); return the argv used."""
    os.chdir(ROOT)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch in every forked worker: one thread each
    # Inside mutants/ the UIT-ViIC folder beside the repository is out of reach; conftest skips those
    # tests, but fails them when CI is set. Kills here come from constructed inputs only.
    os.environ.pop("CI", None)
    # mutmut caches per file and per test; a changed module list or changed tests leave stale entries
    # (a file once copied unmutated is never mutated later), so every run starts from nothing.
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    import mutmut.configuration

    config = mutmut.configuration.config()  # the [tool.mutmut] settings of pyproject.toml
    for name in ("only_mutate", "pytest_add_cli_args_test_selection"):
        if not hasattr(config, name):
            raise SystemExit(f"this mutmut has no setting {name!r}; bench/mutation.py expects mutmut 3.8")
    config.only_mutate = [f"src/{module}" for module in modules]
    config.pytest_add_cli_args_test_selection = sorted({test for module in modules for test in MODULES[module]})

    _mutate_transparently_decorated_functions()
    from mutmut.__main__ import cli

    argv = ["run", "--max-children", str(CHILDREN), *(mutant_glob(module) for module in modules)]
    try:
        cli.main(argv, prog_name="mutmut", standalone_mode=False)
    except SystemExit as exc:  # mutmut exits on a failed clean run or when no test covers a mutant
        if exc.code not in (0, None):
            raise
    return argv


def _mutate_transparently_decorated_functions() -> None:
    """Let mutmut mutate functions whose every decorator is in TRANSPARENT_DECORATORS."""
    import libcst as cst
    from mutmut.mutation.file_mutation import MutationVisitor

    skip = MutationVisitor._skip_node_and_children
    empty = cst.Module(body=[])

    def skip_unless_transparent(self: MutationVisitor, node: cst.CSTNode) -> bool:
        if (
            isinstance(node, cst.FunctionDef)
            and node.decorators
            and all(empty.code_for_node(d.decorator) in TRANSPARENT_DECORATORS for d in node.decorators)
        ):
            node = node.with_changes(decorators=())  # mutmut's other checks still apply
        return skip(self, node)

    MutationVisitor._skip_node_and_children = skip_unless_transparent  # type: ignore[method-assign]


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


def _diff(name: str, module: str) -> str:
    """The changed lines of one mutant (what ``mutmut show`` prints), or "" when mutmut cannot show it."""
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        diff = get_diff_for_mutant(name, path=f"src/{module}")
    except Exception:  # noqa: BLE001  (a missing diff must not lose the report)
        return ""
    lines = [line for line in diff.splitlines() if not line.startswith(("+++", "---"))]
    removed = " ".join(line[1:].strip() for line in lines if line.startswith("-"))
    added = " ".join(line[1:].strip() for line in lines if line.startswith("+"))
    return f"{removed} → {added}"[:300]


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
        mark = "yes" if r.score_without_equivalent >= TARGET else "**no**"
        rows[r.module] = (
            f"| `{r.module}` | {r.total} | {r.killed} | {len(r.survived)} | {r.equivalent} "
            f"| {len(r.no_tests) + len(r.other)} | {100 * r.score:.1f} % | {100 * r.score_without_equivalent:.1f} % "
            f"| {mark} |"
        )
    lines = [
        "# Mutation testing: metrics, text, images, decoding, the job lifecycle, recovery, writer and chunk runner",
        "",
        "Written by `bench/mutation.py` (see its docstring). A mutant is one small planted bug; *killed* means",
        "a test failed (timeouts count as killed), *survived* means every test still passed. *Equivalent*",
        "survivors behave exactly like the original (each is listed below with the reason); the target,",
        f"{100 * TARGET:.0f} % per module, applies to killed / (total - equivalent). The plain killed / total",
        "is shown beside it.",
        "",
        "Functions whose only decorator is `@torch.no_grad()` are mutated too (mutmut 3 skips decorated",
        "functions; see TRANSPARENT_DECORATORS), else `beam_search` and `greedy_decode` would go untested.",
        "The UIT-ViIC tests do not run inside `mutants/` (the data sits beside the repository), so every",
        "kill comes from constructed inputs; device mutants are killed on CPU by running under",
        "`torch.device('meta')` as the default device.",
        "",
        "Every module (repository root, venv active; about 14 minutes with two workers on two cores):",
        "",
        "```",
        "MUTATION_CHILDREN=2 python bench/mutation.py",
        "```",
        "",
        "The last run (rows of modules it did not run are kept from earlier runs):",
        "",
        "```",
        command,
        "```",
        "",
    ]
    if seconds is not None:
        lines += [f"Last run: {time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min on {os.cpu_count()} CPU cores.", ""]
    lines += [
        "| module | mutants | killed | survived | of which equivalent | no tests / other "
        "| killed / total | killed / non-equivalent | target met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *(rows[module] for module in MODULES if module in rows),
        "",
        "## Survivors",
        "",
        "Every surviving mutant of the modules run, what it changes, and why it is judged equivalent.",
        "A survivor without a reason is a missing test.",
        "",
    ]
    survivors = [(r.module, name) for r in results for name in r.survived + r.no_tests + r.other]
    if not survivors:
        lines.append("None.")
    for module, name in survivors:
        key = name.split(" ")[0]
        reason = EQUIVALENT.get(key, "**not judged: add a test that kills it**")
        diff = _diff(key, module)
        lines.append(
            f"- `{name.removeprefix('vicap_jobs.')}`: {reason}" + (f"<br>`{diff}`" if diff.strip(" →") else "")
        )
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
        print(
            f"{r.module}: {r.killed}/{r.total} killed ({100 * r.score:.1f} %), {len(r.survived)} survived, "
            f"{r.equivalent} of them equivalent ({100 * r.score_without_equivalent:.1f} % of the rest killed)"
        )
    return 0 if all(r.score_without_equivalent >= TARGET for r in results) and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
