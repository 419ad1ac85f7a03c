"""Bulk captioning throughput, end to end: every CPU engine against torch fp32 eager, on a trained model.

The model: ``--checkpoint DIR`` (a trained checkpoint), ``--train`` (train one here the
way a user would: ``dataset synth``, ``train --backbone densenet201 --random-init
--frozen-backbone`` with cached features, ``export onnx --quantize int8``, all through the
CLI in a private VICAP_HOME), or neither (a random-init model: captions run to max_len,
the worst case for decoding; its agreement figures say little). A checkpoint without an
ONNX export is exported (and quantized, calibrated on the synthetic training images).

Then N synthetic sports photos drawn with another seed than training (unseen images) are
captioned by each engine at the same batch size: JPEG decode, preprocess, encoder, beam
search, postprocess, with the time of each stage. Each engine runs in its own process
(clean peak RSS, its own thread pools: OpenVINO's and onnxruntime's threads must not
spin against torch's) after one warm-up batch, in --repeats round-robin rounds; the best
round counts (the machine may be shared). "auto" is the engine ``engines/choice.py``
picks for this model on this machine (measured in the parent first).

Writes images/s, the ratio to torch fp32, the share of captions identical to torch fp32
and peak RSS to ``bench/results/bulk_caption.json``. Target (issue 11): the fastest engine
≥ 3× torch fp32 with ≥ 98% identical captions on a trained DenseNet201 + attention model.

    python bench/bulk_caption.py --train --n-images 200
    python bench/bulk_caption.py --checkpoint ~/.vicap/models/dn201 --n-images 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

ENGINE_ORDER = ("torch", "onnx", "torch-bf16", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8")
TARGET_RATIO = 3.0
TARGET_AGREEMENT = 0.98


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
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained checkpoint folder to measure")
    parser.add_argument("--train", action="store_true", help="train a frozen-backbone model on the synthetic set first")
    parser.add_argument("--train-images", type=int, default=1000, help="synthetic set size for --train")
    parser.add_argument(
        "--epochs", type=int, default=8, help="training epochs for --train (early stopping may end sooner)"
    )
    parser.add_argument("--image-seed", type=int, default=7, help="seed of the measured images (training uses 0)")
    parser.add_argument("--no-auto", action="store_true", help="do not measure the automatic engine choice")
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


def synth_images(work: Path, n_images: int, size: int, seed: int = 0) -> tuple[list[Path], list[str]]:
    """N JPEG files of drawn sports scenes, and the train split's captions (for the vocabulary)."""
    from vicap_jobs.data.synth import generate_synth

    dataset = generate_synth(work / "synth", n_images=max(n_images, 3), seed=seed, size=size, overwrite=True)
    paths = sorted(p for folder in dataset.image_dirs.values() for p in folder.iterdir())[:n_images]
    coco = json.loads(dataset.annotations["train"].read_text(encoding="utf-8"))
    return paths, [ann["caption"] for ann in coco["annotations"]]


def train_checkpoint(args: argparse.Namespace, work: Path) -> Path:
    """Train a frozen-backbone DenseNet201 model on the synthetic set through the CLI, as a user would; export it."""
    env = {**os.environ, "VICAP_HOME": str(work / "home")}
    cli = [sys.executable, "-m", "vicap_jobs.cli.main"]
    name = f"bench-{args.backbone}"
    steps = [
        ["dataset", "synth", "synth", "--images", str(args.train_images), "--size", str(args.source_size // 2)],
        ["train", name, "--family", args.family, "--backbone", args.backbone, "--dataset", "synth",
         "--image-size", str(args.image_size), "--random-init", "--frozen-backbone", "--epochs", str(args.epochs)],
        ["export", "onnx", name, "--quantize", "int8"],
    ]  # fmt: skip
    for step in steps:
        print("$ vicap-jobs " + " ".join(step), flush=True)
        subprocess.run([*cli, *step], check=True, env=env)
    return work / "home" / "models" / name


def ensure_exports(checkpoint: Path, calibration: list[Path]) -> dict[str, Any]:
    """The checkpoint's ONNX export and int8 variant (made now when missing), verified against torch."""
    from vicap_jobs.engines.onnx_format import int8_export_dir
    from vicap_jobs.export.onnx import export_onnx
    from vicap_jobs.export.quantize import quantize_int8
    from vicap_jobs.export.verify import verify_export

    onnx_dir = checkpoint / "onnx"
    facts: dict[str, Any] = {}
    started = time.perf_counter()
    if not (onnx_dir / "onnx_config.json").is_file():
        export_onnx(checkpoint, onnx_dir)
        facts["export_seconds"] = time.perf_counter() - started
    if not int8_export_dir(onnx_dir).is_dir():
        started = time.perf_counter()
        report = quantize_int8(onnx_dir, calibration)
        facts["quantize_seconds"] = time.perf_counter() - started
        facts["quantize_calibration_images"] = report.n_calibration_images
    facts["parity_max_abs_diff_logits"] = verify_export(checkpoint, onnx_dir, n_images=3, steps=3).max_abs_diff_logits
    return facts


def auto_choice(checkpoint: Path, threads: int, sample: list[Path]) -> dict[str, Any]:
    """The engine ``engines/choice.py`` picks for this model here (measured now, not read from a cache).

    Calibrated on ``sample`` (photos of the model's kind, not the measured ones), as a worker calibrates on
    the model's validation photos.
    """
    from vicap_jobs.data.images import load_rgb
    from vicap_jobs.engines import ModelArtifacts
    from vicap_jobs.engines.choice import MAX_IMAGES, choose_engine
    from vicap_jobs.settings import reset_settings

    os.environ["VICAP_HOME"] = tempfile.mkdtemp(prefix="vicap-bench-choice-")  # no cached choice: measured now
    reset_settings()  # settings are read once per process
    started = time.perf_counter()
    images = [load_rgb(path) for path in sample[:MAX_IMAGES]]
    artifacts = ModelArtifacts(checkpoint, exports={"onnx": checkpoint / "onnx"})
    choice = choose_engine(artifacts, threads=threads, images=images)
    return {**choice.to_json(), "calibration_seconds": time.perf_counter() - started}


def run_engine(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Worker mode: caption every image with one engine; time each stage (encode = forward - search)."""
    from vicap_jobs.data.images import load_rgb
    from vicap_jobs.engines import DecodeOptions, ModelArtifacts, load_engine

    paths = json.loads((work / "images.json").read_text())
    checkpoint = Path(json.loads((work / "model.json").read_text())["checkpoint"])
    started = time.perf_counter()
    engine = load_engine(
        args.run_engine,
        ModelArtifacts(checkpoint, exports={"onnx": checkpoint / "onnx"}),
        threads=args.threads,
        decode=DecodeOptions(beam_size=args.beam_size, max_len=args.max_len),
    )
    load_s = time.perf_counter() - started
    engine.caption([load_rgb(Path(p)) for p in paths[: args.batch_size]])  # warm-up batch
    search_s = [0.0]
    search = engine._search

    def timed_search(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return search(*a, **k)
        finally:
            search_s[0] += time.perf_counter() - t0

    engine._search = timed_search  # type: ignore[method-assign]
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
    stages["search"] = search_s[0]
    stages["encode"] = stages.pop("forward") - search_s[0]
    return {
        "images_per_s": len(paths) / total,
        "seconds": total,
        "stage_seconds": {key: round(value, 3) for key, value in stages.items()},
        "load_seconds": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "mean_words": sum(len(c.split()) for c in captions) / max(len(captions), 1),
        "captions": captions,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.run_engine:
        print(json.dumps(run_engine(args, args.work_dir), ensure_ascii=False))
        return

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="vicap-bench-bulk-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}", flush=True)
    paths, train_captions = synth_images(work / "measure", args.n_images, args.source_size, seed=args.image_seed)
    (work / "images.json").write_text(json.dumps([str(p) for p in paths]))
    if args.train:
        checkpoint, model_kind = train_checkpoint(args, work), "trained here (frozen random-init backbone)"
    elif args.checkpoint:
        checkpoint, model_kind = args.checkpoint.resolve(), f"trained checkpoint {args.checkpoint.name}"
    else:
        checkpoint, model_kind = build_checkpoint(args, work, train_captions), "random init (max-length captions)"
    (work / "model.json").write_text(json.dumps({"checkpoint": str(checkpoint)}))
    calibration_dir = work / "measure" / "synth"
    calibration = sorted(p for p in calibration_dir.rglob("*.jpg") if p not in set(paths))[:300] or paths
    exports = ensure_exports(checkpoint, calibration)
    print(f"exports: {exports}", flush=True)
    auto = None if args.no_auto else auto_choice(checkpoint, args.threads, calibration)
    if auto is not None:
        print(f"automatic choice: {auto['engine']} ({auto['reason']})", flush=True)

    names = args.engines.split(",")
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_index in range(args.repeats):  # round-robin, so load changes on a shared machine hit every engine
        for name in names:
            command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
            command += ["--run-engine", name, "--work-dir", str(work)]
            # Passive OpenMP waits: on a shared 2-core machine another torch process's spinning threads made a
            # torch child here 10x slower (0.5 images/s); passive waiting costs a busy-free machine nothing.
            env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            result = json.loads(output.strip().splitlines()[-1])
            rounds[name].append(result)
            print(
                f"round {round_index + 1} {name:>14}: {result['images_per_s']:.2f} images/s, "
                f"peak RSS {result['peak_rss_mb']:.0f} MiB, stages {result['stage_seconds']}",
                flush=True,
            )

    engines = summarize(rounds, len(paths))
    fastest = max(
        (
            name
            for name, r in engines.items()
            if name != "torch" and r.get("captions_equal_to_torch", 0) >= TARGET_AGREEMENT
        ),
        key=lambda name: engines[name].get("ratio_to_torch", 0.0),
        default=None,
    )
    ratio = engines[fastest]["ratio_to_torch"] if fastest else None
    payload = {
        "config": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
            if key not in ("run_engine", "work_dir")
        },
        "model": model_kind,
        "config_note": "images_per_s is the best of --repeats round-robin rounds (fresh process each), peak RSS the "
        "largest; captions_equal_to_torch compares every image's caption with torch fp32's; stage seconds: "
        "read (JPEG decode), preprocess (resize, normalize), encode (image encoder), search (beam search "
        "over the decoder step), postprocess (ids to text)",
        **exports,
        "automatic_choice": auto,
        "engines": engines,
        "fastest_agreeing_engine": fastest,
        "fastest_over_torch": ratio,
        "target_over_torch": TARGET_RATIO,
        "target_agreement": TARGET_AGREEMENT,
        "target_met": None if ratio is None else ratio >= TARGET_RATIO,
        "findings": [],  # the measured conclusions, written into the result by hand after a run (see REPORT.md)
    }
    path = write_result(args.result_name, payload)
    print(json.dumps({k: v for k, v in payload.items() if k != "engines"}, indent=2, ensure_ascii=False))
    print(f"wrote {path}")


def summarize(rounds: dict[str, list[dict[str, Any]]], n_images: int) -> dict[str, dict[str, Any]]:
    """Best round per engine, with its ratio to torch fp32 and the share of identical captions."""
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
                result["captions_equal_to_torch"] = same / n_images
                result["differing_examples"] = [
                    [a, b] for a, b in zip(captions[name], captions["torch"], strict=True) if a != b
                ][:3]
    return engines


if __name__ == "__main__":
    main()
