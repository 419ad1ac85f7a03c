"""Run every benchmark script and write bench/results/REPORT.md.

Each script writes its own ``bench/results/<name>.json``; this collects them
with the machine and library versions into one Markdown report.

    python bench/run_all.py            # all benchmarks
    python bench/run_all.py --only bulk_caption --report-only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402
from report import summarize  # noqa: E402

BENCH = Path(__file__).resolve().parent

#: name → (script arguments, what the ratio compares)
BENCHMARKS: dict[str, tuple[list[str], str]] = {
    "bulk_caption": (
        ["bulk_caption.py", "--train", "--n-images", "200", "--repeats", "2"],
        "every CPU engine vs torch fp32 eager on a trained DenseNet201 + attention model, 224 px, end to end",
    ),
    "scale": (
        ["scale.py"],
        "caption jobs of 1k, 10k and 100k images through Redis + 2 workers + PostgreSQL (cost per image must stay "
        "flat), and the caption writer alone on PostgreSQL (target ≥ 20,000 rows/s per chunk-sized batch)",
    ),
    "gpu_bulk": (
        ["gpu_bulk.py"],
        "bulk captioning on one GPU: images/s end to end, seconds per stage, GPU utilisation",
    ),
    "train_epoch": (["train_epoch.py"], "teacher forcing vs the seed's prefix expansion, seconds per epoch"),
    "queue_overhead": (["queue_overhead.py"], "1,000 images through Redis + 1 worker vs the same engine in-process"),
    "vlp_int8": (
        ["vlp_int8.py"],
        "vision-language int8: fp32 vs each int8 engine path on a mid-sized BLIP (224 px), end to end",
    ),
    "overlap": (
        ["overlap.py"],
        "near-duplicate recall/precision per threshold on drawn scenes, and the Hamming index vs all pairs up to 100k",
    ),
    "scst": (
        ["scst.py"],
        "test CIDEr-D of cross-entropy training vs cross-entropy then self-critical sequence training, 3 seeds, "
        "with a control trained by cross-entropy for as many epochs",
    ),
    "object_store": (
        ["object_store.py"],
        "captioning photos from object storage (SeaweedFS S3 on loopback) vs the local disk through the real "
        "pipeline, read-ahead on and off, storage concurrency 8 vs 1",
    ),
    "worker_rss": (
        ["worker_rss.py", "--images", "5000"],
        "worker memory while captioning 5,000 images (must stay flat)",
    ),
}

VERSIONS = ("torch", "torchvision", "onnxruntime", "openvino", "celery", "kombu", "sqlalchemy", "transformers")
PENDING = {
    "gpu_bulk": "Pending: no GPU machine has been lent to a session since the script landed. On one, run "
    "`bash bench/gpu_wheels.sh` here, then `bash bench/gpu_run.sh` there (see bench/gpu_bulk.py).",
}


def run(name: str) -> tuple[int, float]:
    args, _ = BENCHMARKS[name]
    started = time.perf_counter()
    print(f"== {name}: {' '.join(args)}", flush=True)
    code = subprocess.call([sys.executable, str(BENCH / args[0]), *args[1:]], cwd=BENCH.parent)
    return code, time.perf_counter() - started


def render(statuses: dict[str, tuple[int, float]]) -> str:
    facts = machine()
    lines = [
        "# Benchmark report",
        "",
        f"This machine: {facts['cpu']}, {facts['cores']} cores; Python {facts['python']}. Each section says where",
        "its numbers were measured; compare ratios measured in one run, never absolute times across machines.",
        "Versions: " + ", ".join(f"{p} {_version(p)}" for p in VERSIONS) + ".",
        "Produced by `python bench/run_all.py` (`--report-only` rebuilds this file from the JSON files).",
        "",
    ]
    for name, (_, description) in BENCHMARKS.items():
        path = RESULTS / f"{name}.json"
        lines += [f"## {name}", "", description + ".", ""]
        if name in statuses and statuses[name][0] != 0:
            lines += [f"**The last run failed** (exit code {statuses[name][0]}); numbers below, if any, are older.", ""]
        if not path.exists():
            lines += [PENDING.get(name, "No result yet."), ""]
            continue
        lines += [*summarize(name, json.loads(path.read_text())), ""]
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the benchmarks and write bench/results/REPORT.md.")
    parser.add_argument("--only", nargs="*", choices=list(BENCHMARKS), help="Run only these.")
    parser.add_argument(
        "--report-only", action="store_true", help="Do not run anything; rebuild the report from the JSON files."
    )
    args = parser.parse_args()
    statuses: dict[str, tuple[int, float]] = {}
    if not args.report_only:
        for name in args.only or list(BENCHMARKS):
            statuses[name] = run(name)
    report = render(statuses)
    (RESULTS / "REPORT.md").write_text(report + "\n")
    print(report)
    sys.exit(1 if any(code for code, _ in statuses.values()) else 0)


if __name__ == "__main__":
    main()
