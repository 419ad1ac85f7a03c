"""Bulk captioning throughput, end to end: torch eager vs onnxruntime (vs torch bf16).

Builds a randomly initialised model (no downloads; a random model writes
max_len-token captions, the worst case for decoding), saves it as a checkpoint,
exports it to ONNX, draws N synthetic sports photos as JPEG files, then
captions the same N files with each engine at the same batch size: JPEG decode,
preprocess, encoder, beam search, postprocess. Each engine runs in its own
process (clean peak RSS, its own thread settings) after one warm-up batch, in
--repeats round-robin rounds; the best round counts (the machine may be shared).
Writes images/s, the ratios to torch and peak RSS to
``bench/results/bulk_caption.json``. Target: onnx ≥ 1.5× torch for densenet201
attention at 224 px.

    python bench/bulk_caption.py --n-images 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

ENGINE_ORDER = ("torch", "onnx", "torch-bf16")
TARGET_RATIO = 1.5


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM) in MiB.

    Not getrusage: its ru_maxrss survives execve, so a worker would report its parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="cnn-lstm-attn", choices=["cnn-lstm", "cnn-lstm-attn"])
    parser.add_argument("--backbone", default="densenet201")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for every engine")
    parser.add_argument("--source-size", type=int, default=480, help="side of the synthetic JPEG files")
    parser.add_argument("--engines", default=",".join(ENGINE_ORDER), help="comma-separated engine names")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per engine; images_per_s is the best round")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep model, export and images here")
    parser.add_argument("--result-name", default="bulk_caption", help="bench/results/<name>.json")
    parser.add_argument("--run-engine", default=None, help=argparse.SUPPRESS)  # worker mode
    return parser.parse_args(argv)


def build_checkpoint(args: argparse.Namespace, work: Path, train_captions: list[str]) -> Path:
    """Random-init model of ``--family``/``--backbone`` with the synthetic set's vocabulary."""
    from vicap_jobs.data.text import tokenize
    from vicap_jobs.data.vocab import Vocabulary
    from vicap_jobs.models.checkpoint import save_checkpoint
    from vicap_jobs.models.registry import get_family

    vocab = Vocabulary.build([tokenize(text, "syllable") for text in train_captions], tokenization="syllable")
    spec = get_family(args.family)
    config = spec.config_cls(backbone=args.backbone, image_size=args.image_size)
    model = spec.build(config, len(vocab), backbone_weights="random").eval()
    return save_checkpoint(work / "model", model=model, family=args.family, codec=vocab, meta={"bench": "random init"})


def synth_images(work: Path, n_images: int, size: int) -> tuple[list[Path], list[str]]:
    """N JPEG files of drawn sports scenes, and the train split's captions (for the vocabulary)."""
    from vicap_jobs.data.synth import generate_synth

    dataset = generate_synth(work / "synth", n_images=max(n_images, 3), seed=0, size=size, overwrite=True)
    paths = sorted(p for folder in dataset.image_dirs.values() for p in folder.iterdir())[:n_images]
    coco = json.loads(dataset.annotations["train"].read_text(encoding="utf-8"))
    return paths, [ann["caption"] for ann in coco["annotations"]]


def run_engine(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Worker mode: caption every image with one engine; time each stage."""
    from vicap_jobs.data.images import load_rgb
    from vicap_jobs.engines import DecodeOptions, ModelArtifacts, load_engine

    paths = json.loads((work / "images.json").read_text())
    started = time.perf_counter()
    engine = load_engine(
        args.run_engine,
        ModelArtifacts(work / "model", exports={"onnx": work / "onnx"}),
        threads=args.threads,
        decode=DecodeOptions(beam_size=args.beam_size, max_len=args.max_len),
    )
    load_s = time.perf_counter() - started
    engine.caption([load_rgb(Path(p)) for p in paths[: args.batch_size]])  # warm-up batch
    stages = {"read": 0.0, "preprocess": 0.0, "forward": 0.0, "postprocess": 0.0}
    captions: list[str] = []
    started = time.perf_counter()
    for i in range(0, len(paths), args.batch_size):
        t0 = time.perf_counter()
        images = [load_rgb(Path(p)) for p in paths[i : i + args.batch_size]]
        t1 = time.perf_counter()
        pixels = engine.preprocess(images)
        t2 = time.perf_counter()
        ids = engine._forward(pixels)
        t3 = time.perf_counter()
        captions += engine.postprocess(ids)
        t4 = time.perf_counter()
        for key, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[key] += seconds
    total = time.perf_counter() - started
    return {
        "images_per_s": len(paths) / total,
        "seconds": total,
        "stage_seconds": {key: round(value, 3) for key, value in stages.items()},
        "load_seconds": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "captions": captions,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.run_engine:
        print(json.dumps(run_engine(args, args.work_dir), ensure_ascii=False))
        return

    from vicap_jobs.export.onnx import export_onnx
    from vicap_jobs.export.verify import verify_export

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="vicap-bench-bulk-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}", flush=True)
    paths, train_captions = synth_images(work, args.n_images, args.source_size)
    (work / "images.json").write_text(json.dumps([str(p) for p in paths]))
    checkpoint = build_checkpoint(args, work, train_captions)
    started = time.perf_counter()
    export_onnx(checkpoint, work / "onnx")
    export_s = time.perf_counter() - started
    parity = verify_export(checkpoint, work / "onnx", n_images=3, steps=3)
    print(f"exported in {export_s:.0f} s; parity: max abs diff logits {parity.max_abs_diff_logits:.2e}", flush=True)

    names = args.engines.split(",")
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_index in range(args.repeats):  # round-robin, so load changes on a shared machine hit every engine
        for name in names:
            command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
            command += ["--run-engine", name, "--work-dir", str(work)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            rounds[name].append(result)
            print(
                f"round {round_index + 1} {name:>10}: {result['images_per_s']:.2f} images/s, "
                f"peak RSS {result['peak_rss_mb']:.0f} MiB, stages {result['stage_seconds']}",
                flush=True,
            )

    engines: dict[str, dict[str, Any]] = {}
    for name, results in rounds.items():
        best = max(results, key=lambda result: result["images_per_s"])
        speeds = sorted(result["images_per_s"] for result in results)
        engines[name] = {
            **{key: value for key, value in best.items() if key != "captions"},
            "images_per_s_rounds": speeds,
            "images_per_s_median": speeds[len(speeds) // 2],
            "peak_rss_mb": max(result["peak_rss_mb"] for result in results),
        }
    captions = {name: results[0]["captions"] for name, results in rounds.items()}
    if "torch" in engines:
        for name, result in engines.items():
            if name != "torch":
                result["ratio_to_torch"] = result["images_per_s"] / engines["torch"]["images_per_s"]
                result["median_ratio_to_torch"] = (
                    result["images_per_s_median"] / engines["torch"]["images_per_s_median"]
                )
                same = sum(a == b for a, b in zip(captions[name], captions["torch"], strict=True))
                result["captions_equal_to_torch"] = same / len(paths)
    ratio = engines.get("onnx", {}).get("ratio_to_torch")
    payload = {
        "config": {key: value for key, value in vars(args).items() if key not in ("run_engine", "work_dir")},
        "config_note": "random-init model: captions run to max_len (worst case for decoding); images_per_s is "
        "the best of --repeats round-robin rounds (fresh process each), peak RSS the largest",
        "export_seconds": export_s,
        "parity_max_abs_diff_logits": parity.max_abs_diff_logits,
        "engines": engines,
        "onnx_over_torch": ratio,
        "target_onnx_over_torch": TARGET_RATIO,
        "target_met": None if ratio is None else ratio >= TARGET_RATIO,
    }
    path = write_result(args.result_name, payload)
    print(json.dumps(payload, indent=2, ensure_ascii=False))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
