"""Bulk captioning on one GPU, end to end: images/s, seconds per stage and GPU utilisation per variant.

One worker, one GPU, N JPEG files (default 10,000): a reader thread pool reads the
file bytes; the batch is decoded on the GPU (one batched ``torchvision.io.decode_jpeg``
call: nvjpeg, then resize and normalize on the device by the checkpoint's policy,
``vicap_jobs.data.gpu_decode``) or by a Pillow thread pool (the product's exact
preprocessing, copied to the GPU); the encoder runs under fp16/bf16 autocast with
channels_last (fp32: no TF32, the reference); the shared beam search
(``models/decoding.py``, through the engine's ``_search``) runs over the model's
step, eager, captured as a CUDA graph or through ``torch.compile(mode="reduce-overhead")``;
the codec writes the captions. A producer thread prepares the next batches (read,
decode, preprocess on its own CUDA stream) while the main thread encodes and searches
the current one. Every batch is padded to the full batch size (one shape: no
recompiles, no cuDNN re-tuning) and the padding's captions dropped.

Variants are one factor at a time around a main one (first precision, main batch
size, first decoder, first step mode): the other precisions, batch sizes, decoders
and step modes; onnxruntime's CUDA provider for the ONNX engine (only where
onnxruntime-gpu is installed; skipped with the reason otherwise); a vision-language
family (BLIP from ``bench/vlp_int8.py``, briefly fitted) in fp32 and through the
product's ``int8`` engine (bitsandbytes on CUDA, else torchao). Per variant: images/s
end to end (after warm-up batches), seconds per stage (read, decode, preprocess:
producer thread; encode, search, postprocess: main thread; each stage waits for
its GPU work, so the times are honest), how long the main thread waited for input,
GPU utilisation sampled during the run (NVML, else ``nvidia-smi``), peak GPU memory,
and the share of captions identical to the fp32 variant's (Pillow-decoded: the
product's pixels; and fp32 with the same decoder).

The CNN model is DenseNet201 + attention at 224 px, randomly initialised: a random
model writes max_len-token captions, the worst case for decoding (pass a trained
checkpoint with --checkpoint for a meaningful agreement figure). Its vocabulary is
padded to --vocab-size ids (default 1,200: UIT-ViIC's syllable vocabulary has 1,190),
so the output layer, log_softmax and top-k have a realistic width. The images are
--n-base synthetic scenes re-encoded with small variations (crop, aspect, brightness,
JPEG quality, 1 in 16 stored rotated with an EXIF orientation) by a process pool.
Target: >= 2,000 images/s end to end for DenseNet201 + attention on one H200.

On the GPU box (one command; no variant starts after --budget-s seconds, each stops after
--variant-cap-s timed seconds, and the JSON is rewritten after every variant):

    python bench/gpu_bulk.py --n-images 10000 --batch-sizes 128,256,512 --budget-s 330 --out $OUT/gpu_bulk.json

``bench/gpu_run.sh`` wraps that for the device tool (``bench/gpu_wheels.sh`` first, here: the
GPU image lacks pydantic and bitsandbytes and reaches no registry). Without CUDA (or with --dry-run)
the same code runs on the CPU with tiny sizes (20 images, tiny backbone, 64 px,
batch 8, max_len 8) and writes ``gpu_bulk_dryrun.json`` in the work folder: never the real result.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import queue
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_result  # noqa: E402

TARGET_IMAGES_PER_S = 2000.0
STAGES = ("read", "decode", "preprocess", "encode", "search", "postprocess")
# Crops of a base scene, (width, height) as fractions of its side: 4:3, 3:4, square, a smaller 4:3.
ASPECTS = ((1.0, 0.75), (0.75, 1.0), (1.0, 1.0), (0.875, 0.65625))
EXIF_ORIENTATION = 0x0112

GPU_DEFAULTS: dict[str, Any] = {
    "n_images": 10_000,
    "batch_sizes": "128,256,512",
    "main_batch_size": 256,
    "backbone": "densenet201",
    "image_size": 224,
    "max_len": 20,
    "vocab_size": 1200,
    "source_size": 512,
    "n_base": 200,
    "threads": os.cpu_count() or 4,
    "warmup_batches": 2,
    "budget_s": 330.0,
    "variant_cap_s": 45.0,
    "compile_backend": "inductor",
    "vlp_args": "",
}
DRY_DEFAULTS: dict[str, Any] = {
    "n_images": 20,  # not a multiple of the batch sizes: the last batch is padded
    "batch_sizes": "8,16",
    "main_batch_size": 8,
    "backbone": "tiny",
    "image_size": 64,
    "max_len": 8,
    "vocab_size": 0,
    "source_size": 96,
    "n_base": 12,
    "threads": 2,
    "warmup_batches": 1,
    "budget_s": 300.0,
    "variant_cap_s": 60.0,
    "compile_backend": "eager",  # dynamo tracing without inductor's C++ compile: the wrapper's logic, quickly
    "vlp_args": "--hidden 32 --layers 1 --image-size 64 --patch-size 16 --n-train 8 --fit-epochs 1",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (automatic without CUDA)")
    parser.add_argument("--n-images", type=int)
    parser.add_argument("--batch-sizes", help="comma-separated; each is run with the main variant's other settings")
    parser.add_argument("--main-batch-size", type=int)
    parser.add_argument("--precisions", default="fp16,bf16,fp32", help="encoder precisions; the first is the main one")
    parser.add_argument("--decoders", default="gpu,cpu-threads", help="JPEG decoding; the first is the main one")
    parser.add_argument("--steps", default="eager,cudagraph,compile", help="decoder step modes; the first is main")
    parser.add_argument("--engines", default="torch,onnx,vlp", help="torch (always), onnx, vlp (fp32 and int8)")
    parser.add_argument("--backbone")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--vocab-size", type=int, help="pad the vocabulary to this many ids (0: as built)")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--max-len", type=int)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a cnn-lstm-attn checkpoint instead of random")
    parser.add_argument("--source-size", type=int, help="side of the synthetic base scenes")
    parser.add_argument("--n-base", type=int, help="distinct base scenes the N files are varied from")
    parser.add_argument("--threads", type=int, help="reader / Pillow decoder threads and image writer processes")
    parser.add_argument("--prefetch", type=int, default=3, help="batches the producer may run ahead")
    parser.add_argument("--warmup-batches", type=int)
    parser.add_argument("--budget-s", type=float, help="no variant starts after this many seconds of the run")
    parser.add_argument("--variant-cap-s", type=float, help="a variant stops after this many timed seconds")
    parser.add_argument("--compile-backend", help="torch.compile backend of the 'compile' step mode")
    parser.add_argument("--compile-mode", default="reduce-overhead", help="torch.compile mode (inductor only)")
    parser.add_argument("--vlp-args", help="arguments for bench/vlp_int8.py's BLIP builder and fit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None, help="images and models (reused when present)")
    parser.add_argument("--out", type=Path, default=None, help="also write the result JSON here")
    parser.add_argument("--result-name", default="gpu_bulk", help="bench/results/<name>.json (real runs only)")
    args = parser.parse_args(argv)
    import torch

    args.cuda = torch.cuda.is_available() and not args.dry_run
    if not args.cuda and not args.dry_run:
        print("CUDA is not available here: dry run on the CPU with tiny sizes; no GPU figures", flush=True)
        args.dry_run = True
    for key, value in (DRY_DEFAULTS if args.dry_run else GPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One measured configuration. model: "attn" (the CNN) or "vlp"; engine: torch, onnx or int8."""

    model: str
    engine: str
    precision: str
    batch_size: int
    decode: str
    step: str

    @property
    def name(self) -> str:
        return f"{self.model}/{self.engine}/{self.precision}/b{self.batch_size}/{self.decode}/{self.step}"


def plan_variants(args: argparse.Namespace) -> list[Variant]:
    """The fp32 reference (Pillow-decoded), the main variant, then each other setting of one factor at a time."""
    precisions, decoders, steps = csv(args.precisions), csv(args.decoders), csv(args.steps)
    batch_sizes, engines = [int(b) for b in csv(args.batch_sizes)], csv(args.engines)
    main = Variant("attn", "torch", precisions[0], args.main_batch_size, decoders[0], steps[0])
    plan = [replace(main, precision="fp32", decode="cpu-threads", step="eager"), main]
    plan += [replace(main, precision=p) for p in precisions[1:] if p != "fp32"]  # fp32 comes last (below)
    plan += [replace(main, batch_size=b) for b in batch_sizes]
    plan += [replace(main, decode=d) for d in decoders[1:]]
    plan += [replace(main, step=s) for s in steps[1:]]
    plan.append(replace(main, precision="fp32"))  # fp32 with the main decoder: the decoder's share of disagreement
    if "onnx" in engines:
        plan.append(Variant("attn", "onnx", "fp32", args.main_batch_size, decoders[0], "eager"))
    if "vlp" in engines:
        vlp = Variant("vlp", "torch", "fp32", args.main_batch_size, decoders[0], "eager")
        plan += [vlp, replace(vlp, engine="int8", precision="int8")]
    return list(dict.fromkeys(plan))


# --------------------------------------------------------------------------- images


def _vary(job: tuple[list[str], int, int, str, int]) -> int:
    """Process-pool worker: write files start..stop-1 as varied re-encodings of the base scenes; returns bytes."""
    from PIL import Image, ImageEnhance

    bases, start, stop, out_dir, seed = job
    cache: dict[str, Image.Image] = {}
    written = 0
    for index in range(start, stop):
        rng = np.random.default_rng([seed, index])
        path = bases[index % len(bases)]
        base = cache.get(path)
        if base is None:
            base = cache[path] = Image.open(path).convert("RGB")
        side = base.size[0]
        fw, fh = ASPECTS[int(rng.integers(len(ASPECTS)))]
        width, height = round(side * fw), round(side * fh)
        left, top = int(rng.integers(0, side - width + 1)), int(rng.integers(0, side - height + 1))
        image = ImageEnhance.Brightness(base.crop((left, top, left + width, top + height))).enhance(
            float(rng.uniform(0.85, 1.15))
        )
        exif = Image.Exif()
        if index % 16 == 15:  # stored turned a quarter counter-clockwise; orientation 6 shows it upright again
            image = image.transpose(Image.Transpose.ROTATE_90)
            exif[EXIF_ORIENTATION] = 6
        target = Path(out_dir) / f"{index:06d}.jpg"
        image.save(target, "JPEG", quality=int(rng.integers(80, 96)), exif=exif)
        written += target.stat().st_size
    return written


def make_images(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """N varied JPEG files (reused when ``folder`` holds the same set), their paths and the scenes' captions."""
    from vicap_jobs.data.synth import generate_synth

    key = {"n": args.n_images, "source_size": args.source_size, "n_base": args.n_base, "seed": args.seed}
    manifest = folder / "images.json"
    if manifest.is_file():
        known = json.loads(manifest.read_text(encoding="utf-8"))
        if known["key"] == key:
            return known
    started = time.perf_counter()
    dataset = generate_synth(
        folder / "base", n_images=args.n_base, seed=args.seed, size=args.source_size, overwrite=True
    )
    bases = sorted(str(p) for d in dataset.image_dirs.values() for p in d.iterdir())
    captions = [
        a["caption"] for a in json.loads(dataset.annotations["train"].read_text(encoding="utf-8"))["annotations"]
    ]
    out = folder / "jpeg"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    workers = max(1, min(args.threads, args.n_images // 500))
    step = -(-args.n_images // workers)
    jobs = [(bases, lo, min(lo + step, args.n_images), str(out), args.seed) for lo in range(0, args.n_images, step)]
    if workers == 1:
        written = [_vary(job) for job in jobs]
    else:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            written = list(pool.map(_vary, jobs))
    info = {
        "key": key,
        "paths": [str(out / f"{i:06d}.jpg") for i in range(args.n_images)],
        "captions": captions,
        "mean_bytes": round(sum(written) / args.n_images),
        "generate_seconds": round(time.perf_counter() - started, 1),
        "note": f"{args.n_base} synthetic scenes at {args.source_size} px re-encoded with a random crop "
        f"({', '.join(f'{w:g}x{h:g}' for w, h in ASPECTS)} of the side), brightness 0.85-1.15, JPEG quality 80-95; "
        "every 16th stored rotated with EXIF orientation 6; files were just written (in the page cache)",
    }
    manifest.write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    return info


# --------------------------------------------------------------------------- models


def build_attn(work: Path, args: argparse.Namespace, captions: list[str]) -> tuple[Path, str]:
    """The cnn-lstm-attn checkpoint: --checkpoint, or a random-init one with a vocabulary padded to --vocab-size."""
    if args.checkpoint is not None:
        return args.checkpoint, f"given checkpoint {args.checkpoint}"
    import torch
    from bulk_caption import build_checkpoint  # the same random-init builder as the CPU engine comparison

    from vicap_jobs.data.text import tokenize
    from vicap_jobs.data.vocab import Vocabulary

    note = f"random init (captions run to max_len {args.max_len}: the worst case for decoding)"
    folder = work / f"attn-{args.backbone}-{args.image_size}-v{args.vocab_size}"
    if (folder / "model" / "config.json").is_file():
        return folder / "model", note
    built = len(Vocabulary.build([tokenize(c, "syllable") for c in captions], tokenization="syllable"))
    filler = [" ".join(f"xx{i}" for i in range(max(0, args.vocab_size - built)))]
    spec = argparse.Namespace(family="cnn-lstm-attn", backbone=args.backbone, image_size=args.image_size)
    torch.manual_seed(args.seed)  # the same random model for the same --seed
    return build_checkpoint(spec, folder, captions + filler), note


def build_vlp(work: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """A BLIP checkpoint built and briefly fitted by bench/vlp_int8.py (reused when present)."""
    import vlp_int8

    folder = work / "vlp"
    if (folder / "model" / "config.json").is_file():
        return folder / "model", {"reused": str(folder / "model")}
    vlp_args = vlp_int8.parse_args(shlex.split(args.vlp_args))
    folder.mkdir(parents=True, exist_ok=True)
    fitted = vlp_int8.fit(vlp_args, folder)
    fitted["config"] = {k: getattr(vlp_args, k) for k in ("hidden", "layers", "image_size", "patch_size", "n_train")}
    return folder / "model", fitted


def int8_path(device: str) -> tuple[str | None, str]:
    """The int8 engine's path for ``device``: bitsandbytes on CUDA, else torchao; (None, why) when neither imports."""
    candidates = ["bnb-cuda", "torchao-dynamic"] if device == "cuda" else ["torchao-dynamic"]
    reason = ""
    for path in candidates:
        module = "bitsandbytes" if path.startswith("bnb") else "torchao"
        try:
            __import__(module)
        except Exception as exc:  # a broken install raises more than ImportError
            reason += f"{module} not importable ({type(exc).__name__}); "
            continue
        return path, module
    return None, reason.rstrip("; ")


def onnx_unavailable(device: str) -> str | None:
    """Why the ONNX engine cannot run on ``device`` here, or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime not importable"
    providers = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in providers:
        return f"onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu not installed); it has {providers}"
    return None


# --------------------------------------------------------------------------- step wrappers


class GraphedStep:
    """``step`` captured as a CUDA graph per input shape, replayed with the inputs copied into its static buffers.

    A state part the caller passes again (the attention memory: the same tensor on every
    step of a batch) is not copied again, so callers must not change inputs in place (the
    shared search never does). Outputs the step passes through come back as the caller's
    own tensors (beam search then skips reordering them, as in eager mode); the others
    as copies, since the next replay overwrites the graph's outputs. Without CUDA the
    graph is emulated (the step re-run on the static buffers), so the dry run covers
    this bookkeeping.
    """

    def __init__(self, step: Callable[..., Any]) -> None:
        self.step = step
        self.graphs: dict[tuple[Any, ...], dict[str, Any]] = {}

    def __call__(self, tokens: Any, state: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        inputs = (tokens, *state)
        key = tuple((tuple(t.shape), t.dtype, str(t.device)) for t in inputs)
        graph = self.graphs.get(key) or self._capture(key, inputs)
        for slot, value in enumerate(inputs):
            if graph["seen"][slot] is not value:
                graph["static_in"][slot].copy_(value)
                graph["seen"][slot] = value
        graph["replay"]()
        logits, parts = graph["out"]
        state_out = tuple(
            inputs[graph["alias"][i]] if i in graph["alias"] else part.clone() for i, part in enumerate(parts)
        )
        return logits.clone(), state_out

    def _capture(self, key: tuple[Any, ...], inputs: tuple[Any, ...]) -> dict[str, Any]:
        import torch

        static_in = [t.clone() for t in inputs]
        cuda = static_in[0].is_cuda

        def run() -> tuple[Any, tuple[Any, ...]]:
            return self.step(static_in[0], tuple(static_in[1:]))

        if cuda:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up before capture (cuBLAS/cuDNN workspaces, lazy init)
                    run()
            torch.cuda.current_stream().wait_stream(side)
            cuda_graph = torch.cuda.CUDAGraph()
            # thread_local: the producer thread keeps decoding on its own stream while this thread captures
            with torch.cuda.graph(cuda_graph, capture_error_mode="thread_local"):
                logits, parts = run()
            replay = cuda_graph.replay
        else:
            logits, parts = run()
            fixed = [logits, *parts]

            def replay() -> None:  # emulated graph: same buffers, new values
                new_logits, new_parts = run()
                for buffer, value in zip(fixed, [new_logits, *new_parts], strict=True):
                    if buffer is not value:
                        buffer.copy_(value)

        alias = {i: slot for i, part in enumerate(parts) for slot, t in enumerate(static_in) if part is t}
        graph = {
            "static_in": static_in,
            "seen": [None] * len(inputs),
            "out": (logits, parts),
            "alias": alias,
            "replay": replay,
            "graph": cuda_graph if cuda else None,
        }
        self.graphs[key] = graph
        return graph


class CompiledStep:
    """``torch.compile(step)``; with cudagraphs (mode reduce-overhead) outputs are copied before the next call."""

    def __init__(self, step: Callable[..., Any], *, backend: str, mode: str | None) -> None:
        import torch

        options: dict[str, Any] = {"backend": backend, "dynamic": False}
        if backend == "inductor" and mode:
            options["mode"] = mode
        self.compiled = torch.compile(step, **options)

    def __call__(self, tokens: Any, state: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        import torch

        torch.compiler.cudagraph_mark_step_begin()
        logits, new_state = self.compiled(tokens, state)
        parts = tuple(
            old if new.data_ptr() == old.data_ptr() and new.shape == old.shape else new.clone()
            for new, old in zip(new_state, state, strict=True)
        )
        return logits.clone(), parts


# --------------------------------------------------------------------------- runners (the hot middle)


class Runner(Protocol):
    preprocessing: Any
    pixel_dtype: Any
    channels_last: bool

    def encode(self, pixels: Any) -> tuple[Any, ...]: ...

    def search(self, state: tuple[Any, ...], batch_size: int) -> list[list[int]]: ...

    def postprocess(self, ids: list[list[int]]) -> list[str]: ...


class TorchRunner:
    """A torch engine's model: the encoder under autocast (fp16/bf16, channels_last), decoder and search in fp32."""

    def __init__(self, engine: Any, variant: Variant, args: argparse.Namespace) -> None:
        import torch

        self.engine = engine
        self.preprocessing = engine.preprocessing
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[variant.precision]
        self.pixel_dtype = self.dtype
        self.channels_last = variant.precision != "fp32"
        self.device_type = engine.torch_device.type
        model = engine.model
        if self.channels_last:
            model.feature_extractor().to(memory_format=torch.channels_last)
        self.step: Callable[..., Any]
        if variant.step == "compile":
            self.step = CompiledStep(model.step, backend=args.compile_backend, mode=args.compile_mode)
        elif variant.step == "cudagraph":
            self.step = GraphedStep(model.step)
        else:
            self.step = model.step

    def encode(self, pixels: Any) -> tuple[Any, ...]:
        import torch

        model = self.engine.model
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            grid = model.extract_features(pixels)
        return model.start(grid.float().contiguous())  # (B, C, h, w) back in fp32 for the decoder

    def search(self, state: tuple[Any, ...], batch_size: int) -> list[list[int]]:
        return self.engine._search(self.step, state, batch_size)

    def postprocess(self, ids: list[list[int]]) -> list[str]:
        return self.engine.postprocess(ids)


class EngineRunner(TorchRunner):
    """An engine as loaded (the int8 engine, a vision-language model in fp32): its own features and step."""

    def __init__(self, engine: Any) -> None:
        import torch

        self.engine = engine
        self.preprocessing = engine.preprocessing
        self.pixel_dtype = torch.float32
        self.channels_last = False
        self.step = engine.model.step

    def encode(self, pixels: Any) -> tuple[Any, ...]:
        return self.engine.model.start(self.engine.features(pixels))


class OnnxRunner:
    """The product's ONNX engine: pixels back to the host, encoder and decoder sessions, the shared search."""

    def __init__(self, engine: Any) -> None:
        import torch

        self.engine = engine
        self.preprocessing = engine.preprocessing
        self.pixel_dtype = torch.float32
        self.channels_last = False

    def encode(self, pixels: Any) -> tuple[Any, ...]:
        return self.engine.encode(pixels.float().cpu().numpy())

    def search(self, state: tuple[Any, ...], batch_size: int) -> list[list[int]]:
        return self.engine._search(self.engine.step_fn, state, batch_size)

    def postprocess(self, ids: list[list[int]]) -> list[str]:
        return self.engine.postprocess(ids)


def open_runner(variant: Variant, models: dict[str, Any], args: argparse.Namespace, device: str) -> Runner:
    import torch

    from vicap_jobs.engines import DecodeOptions, ModelArtifacts, load_engine
    from vicap_jobs.engines.int8_engine import Int8Engine

    decode = DecodeOptions(beam_size=args.beam_size, max_len=args.max_len)
    if device == "cuda":
        torch.backends.cudnn.allow_tf32 = variant.precision != "fp32"  # fp32 means fp32: the reference
        torch.backends.cuda.matmul.allow_tf32 = False
    if variant.model == "vlp":
        artifacts = ModelArtifacts(models["vlp"])
        engine: Any
        if variant.engine == "int8":
            engine = Int8Engine.load(artifacts, device=device, decode=decode, path=models["int8_path"])
        else:
            engine = load_engine("torch", artifacts, device=device, decode=decode)
        return EngineRunner(engine)
    if variant.engine == "onnx":
        artifacts = ModelArtifacts(models["attn"], exports={"onnx": models["onnx"]})
        return OnnxRunner(load_engine("onnx", artifacts, device=device, decode=decode))
    return TorchRunner(
        load_engine("torch", ModelArtifacts(models["attn"]), device=device, decode=decode), variant, args
    )


# --------------------------------------------------------------------------- the pipeline


@dataclass
class Batch:
    """One prepared batch: pixels (batch_size, 3, S, S) on the device, padded; where its images start."""

    start: int
    n_real: int
    pixels: Any
    seconds: dict[str, float]
    fallbacks: int


def pil_image(data: bytes) -> Any:
    """Upright RGB Pillow image from file bytes, as ``load_rgb`` makes it from a path."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        upright = ImageOps.exif_transpose(im) or im.copy()
    return upright.convert("RGB")


def pil_pixels(data: bytes, preprocessing: Any) -> np.ndarray:
    """The product's pixels for one file: Pillow decode + ``Preprocessing.apply`` → float32 (3, S, S)."""
    return preprocessing.apply([pil_image(data)])[0]


class Producer(threading.Thread):
    """Reads, decodes and preprocesses batches in order, ``prefetch`` ahead, on its own CUDA stream."""

    def __init__(
        self,
        paths: Sequence[str],
        *,
        batch_size: int,
        decode: str,
        runner: Runner,
        device: Any,
        pool: ThreadPoolExecutor,
        prefetch: int,
    ) -> None:
        super().__init__(daemon=True)
        self.paths, self.batch_size, self.decode = paths, batch_size, decode
        self.runner, self.device, self.pool = runner, device, pool
        self.queue: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=prefetch)
        self.stopping = threading.Event()

    def run(self) -> None:
        import torch

        try:
            stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
            with torch.inference_mode(), torch.cuda.stream(stream) if stream else contextlib.nullcontext():
                for start in range(0, len(self.paths), self.batch_size):
                    if self.stopping.is_set():
                        return
                    self._put(self._batch(start, stream))
            self._put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def _put(self, item: Batch | BaseException | None) -> None:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _batch(self, start: int, stream: Any) -> Batch:
        import torch

        from vicap_jobs.data.gpu_decode import decode_jpegs, to_pixels

        def done() -> float:
            if stream is not None:
                stream.synchronize()
            return time.perf_counter()

        runner = self.runner
        chunk = self.paths[start : start + self.batch_size]
        t0 = time.perf_counter()
        data = list(self.pool.map(Path.read_bytes, map(Path, chunk)))
        t1 = time.perf_counter()
        fallbacks = 0
        if self.decode == "gpu":
            decoded = decode_jpegs(data, device=self.device)
            for i in decoded.failures:  # not decodable on the device: Pillow, then to the device
                array = np.asarray(pil_image(data[i]))  # (H, W, 3)
                decoded.images[i] = torch.from_numpy(array).permute(2, 0, 1).contiguous().to(self.device)
                fallbacks += 1
            images = [decoded.images[i] for i in range(len(data))]
            t2 = done()
            pixels = to_pixels(images, runner.preprocessing, dtype=runner.pixel_dtype)
        else:
            arrays = list(self.pool.map(pil_pixels, data, [runner.preprocessing] * len(data)))
            t2 = time.perf_counter()
            host = torch.from_numpy(np.stack(arrays))  # (B, 3, S, S) float32
            if self.device.type == "cuda":
                host = host.pin_memory()
            pixels = host.to(self.device, non_blocking=True).to(runner.pixel_dtype)
        missing = self.batch_size - len(chunk)
        if missing:  # one shape for every batch: the padding repeats the last image, its captions are dropped
            pixels = torch.cat([pixels, pixels[-1:].expand(missing, *pixels.shape[1:])])
        if runner.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        t3 = done()
        seconds = {"read": t1 - t0, "decode": t2 - t1, "preprocess": t3 - t2}
        return Batch(start=start, n_real=len(chunk), pixels=pixels, seconds=seconds, fallbacks=fallbacks)


@dataclass
class PipelineRun:
    """Captions by path, in input order, and where the time went."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    input_wait_seconds: float = 0.0
    wall_seconds: float = 0.0
    batches: int = 0
    fallbacks: int = 0
    stopped_early: bool = False


def run_pipeline(
    paths: Sequence[str],
    runner: Runner,
    variant: Variant,
    args: argparse.Namespace,
    device: Any,
    *,
    cap_s: float | None = None,
    overlap: bool = True,
) -> PipelineRun:
    """Caption ``paths`` through producer → encode → search → postprocess; stops after ``cap_s`` seconds.

    overlap False: every batch is prepared before the first is encoded (the warm-up, where CUDA
    graphs are captured and torch.compile compiles, with no decoding running beside them).
    """
    import torch

    def done() -> float:
        if device.type == "cuda":
            torch.cuda.current_stream().synchronize()
        return time.perf_counter()

    result = PipelineRun()
    with ThreadPoolExecutor(args.threads) as pool:
        producer = Producer(
            paths,
            batch_size=variant.batch_size,
            decode=variant.decode,
            runner=runner,
            device=device,
            pool=pool,
            prefetch=args.prefetch if overlap else len(paths) // variant.batch_size + 2,
        )
        started = time.perf_counter()
        producer.start()
        if not overlap:
            producer.join()
        try:
            with torch.inference_mode():
                while True:
                    waited = time.perf_counter()
                    item = producer.queue.get()
                    result.input_wait_seconds += time.perf_counter() - waited
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    expected = result.batches * variant.batch_size
                    if item.start != expected:
                        raise RuntimeError(f"batch starting at image {item.start} arrived, expected {expected}")
                    if device.type == "cuda":
                        item.pixels.record_stream(torch.cuda.current_stream())  # made on the producer's stream
                    t0 = time.perf_counter()
                    state = runner.encode(item.pixels)
                    t1 = done()
                    ids = runner.search(state, item.pixels.shape[0])
                    t2 = time.perf_counter()
                    captions = runner.postprocess(ids[: item.n_real])
                    t3 = time.perf_counter()
                    result.rows += zip(paths[item.start : item.start + item.n_real], captions, strict=True)
                    for stage, seconds in {**item.seconds, "encode": t1 - t0, "search": t2 - t1}.items():
                        result.stage_seconds[stage] += seconds
                    result.stage_seconds["postprocess"] += t3 - t2
                    result.batches += 1
                    result.fallbacks += item.fallbacks
                    if cap_s is not None and time.perf_counter() - started > cap_s and len(result.rows) < len(paths):
                        result.stopped_early = True
                        break
        finally:
            producer.stop()
        result.wall_seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- GPU utilisation


def parse_smi_line(line: str) -> tuple[float, float] | None:
    """``nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits`` line → (%, MiB)."""
    parts = [p.strip() for p in line.split(",")]
    try:
        return float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        return None


class GpuSampler:
    """GPU utilisation (% of time a kernel ran) and memory used, sampled in the background: NVML, else nvidia-smi."""

    def __init__(self, cuda: bool, *, index: int = 0, interval_s: float = 0.1) -> None:
        self.cuda, self.index, self.interval_s = cuda, index, interval_s
        self.samples: list[tuple[float, float]] = []
        self.source: str | None = None
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> GpuSampler:
        if not self.cuda:
            self.reason = "no CUDA device"
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.source = "nvml"
            self._thread = threading.Thread(target=self._nvml, args=(pynvml, handle), daemon=True)
        except Exception as exc:  # not installed, or no driver access
            if shutil.which("nvidia-smi") is None:
                self.reason = f"no NVML ({type(exc).__name__}) and no nvidia-smi"
                return self
            self.source = "nvidia-smi"
            command = ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu,memory.used"]
            command += ["--format=csv,noheader,nounits", f"-lms={int(self.interval_s * 1000)}"]
            self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._smi, daemon=True)
        self._thread.start()
        return self

    def _nvml(self, pynvml: Any, handle: Any) -> None:
        while not self._stop.wait(self.interval_s):
            util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            used = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
            self.samples.append((float(util), float(used)))

    def _smi(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            sample = parse_smi_line(line)
            if sample is not None:
                self.samples.append(sample)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"source": self.source, "samples": 0, "reason": self.reason or "no samples"}
        util = [s[0] for s in self.samples]
        return {
            "source": self.source,
            "samples": len(util),
            "util_mean_pct": round(statistics.fmean(util), 1),
            "util_median_pct": statistics.median(util),
            "util_max_pct": max(util),
            "memory_used_max_mib": max(s[1] for s in self.samples),
        }


# --------------------------------------------------------------------------- one variant


def measure(
    variant: Variant, paths: list[str], models: dict[str, Any], args: argparse.Namespace, device: Any, cap_s: float
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Open the variant's engine, warm up, caption ``paths`` timed; its figures and its captions by path."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    runner = open_runner(variant, models, args, device.type)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    warm = run_pipeline(paths[: args.warmup_batches * variant.batch_size], runner, variant, args, device, overlap=False)
    warmup_s = time.perf_counter() - started
    with GpuSampler(cuda) as sampler:
        run = run_pipeline(paths, runner, variant, args, device, cap_s=cap_s)
    n = len(run.rows)
    stage = {k: round(v, 6) for k, v in run.stage_seconds.items()}
    producer_s = sum(run.stage_seconds[s] for s in STAGES[:3])
    consumer_s = sum(run.stage_seconds[s] for s in STAGES[3:])
    figures = {
        "status": "ok",
        "variant": asdict(variant),
        "images": n,
        "partial": run.stopped_early,
        "images_per_s": round(n / run.wall_seconds, 2),
        "wall_seconds": round(run.wall_seconds, 6),
        "stage_seconds": stage,
        "stage_ms_per_image": {k: round(1000 * v / n, 4) for k, v in run.stage_seconds.items()},
        "producer_busy_seconds": round(producer_s, 3),
        "consumer_busy_seconds": round(consumer_s, 3),
        "input_wait_seconds": round(run.input_wait_seconds, 3),
        "bound_by": "input (read/decode/preprocess)" if run.input_wait_seconds > 0.1 * run.wall_seconds else "model",
        "batches": run.batches,
        "decode_fallbacks": run.fallbacks + warm.fallbacks,
        "load_seconds": round(load_s, 2),
        "warmup_seconds": round(warmup_s, 2),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        "gpu_util": sampler.summary(),
        "mean_caption_words": round(statistics.fmean(len(c.split()) for _, c in run.rows), 2),
    }
    del runner
    if variant.step == "compile":
        torch._dynamo.reset()  # drops the compiled step and its CUDA graph pool
    gc.collect()
    return figures, run.rows


def agreement(rows: list[tuple[str, str]], reference: list[tuple[str, str]]) -> dict[str, Any]:
    """Share of the images both captioned whose captions are identical."""
    ref = dict(reference)
    common = [(p, c) for p, c in rows if p in ref]
    if not common:
        return {"compared": 0, "same_captions": None}
    same = sum(c == ref[p] for p, c in common)
    return {"compared": len(common), "same_captions": round(same / len(common), 4)}


def references(variant: Variant, batch_size: int) -> dict[str, Variant]:
    """The fp32 variants (main batch size) a variant's captions are compared with: Pillow-decoded, same decoder."""
    base = Variant(variant.model, "torch", "fp32", batch_size, "cpu-threads", "eager")
    return {"vs_fp32_pillow": base, "vs_fp32_same_decoder": replace(base, decode=variant.decode)}


def decode_parity(paths: Sequence[str], checkpoint: Path, device: Any) -> dict[str, Any]:
    """The device decoder's pixels vs the product's (Pillow + Preprocessing.apply), in 8-bit levels."""
    from vicap_jobs.data.gpu_decode import decode_jpegs, to_pixels
    from vicap_jobs.data.images import Preprocessing
    from vicap_jobs.models.manifest import read_manifest

    preprocessing = Preprocessing.from_json(read_manifest(checkpoint)["preprocessing"])
    data = [Path(p).read_bytes() for p in paths]
    decoded = decode_jpegs(data, device=device)
    ok = sorted(decoded.images)
    pixels = to_pixels([decoded.images[i] for i in ok], preprocessing).cpu().numpy()  # (B, 3, S, S)
    reference = preprocessing.apply([pil_image(data[i]) for i in ok])
    levels = np.abs(pixels - reference) * np.asarray(preprocessing.std, dtype=np.float32).reshape(1, 3, 1, 1) * 255
    return {
        "images": len(ok),
        "failures": len(decoded.failures),
        "max_levels": round(float(levels.max()), 3),
        "mean_levels": round(float(levels.mean()), 4),
        "share_over_half_level": round(float((levels > 0.5).mean()), 5),
    }


# --------------------------------------------------------------------------- the run


def versions() -> dict[str, Any]:
    """Library versions (from package metadata: importing bitsandbytes just to ask is slow and noisy)."""
    from importlib import metadata

    import torch

    found: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    for name in ("torchvision", "onnxruntime", "onnxruntime-gpu", "transformers", "bitsandbytes", "torchao", "pillow"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    with contextlib.suppress(ImportError):
        import onnxruntime

        found["onnxruntime_providers"] = onnxruntime.get_available_providers()
    return found


@dataclass
class Report:
    payload: dict[str, Any]
    captions: dict[str, list[tuple[str, str]]]
    path: Path


def save(payload: dict[str, Any], args: argparse.Namespace, work: Path) -> Path:
    """Real runs: bench/results/<name>.json (and --out); a dry run only --out or <work>/gpu_bulk_dryrun.json."""
    if not args.dry_run:
        path = write_result(args.result_name, payload)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, args.out)
        return path
    path = args.out or work / "gpu_bulk_dryrun.json"
    if path.resolve().parent == RESULTS.resolve():
        raise SystemExit(f"a dry run never writes into {RESULTS}; pass --out elsewhere")
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = {"benchmark": "gpu_bulk_dryrun", "when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
    path.write_text(json.dumps({**stamped, **payload}, indent=2, ensure_ascii=False) + "\n")
    return path


def setup_models(
    variants: list[Variant], work: Path, args: argparse.Namespace, images: dict[str, Any], device: str
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """Build what the variants need; (models, variant name → why skipped, facts for the report)."""
    models: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    facts: dict[str, Any] = {}
    started = time.perf_counter()
    paths, captions = images["paths"], images["captions"]
    models["attn"], facts["attn_weights"] = build_attn(work, args, captions)
    facts["attn_build_seconds"] = round(time.perf_counter() - started, 1)
    if any(v.decode == "gpu" for v in variants):
        import torch

        try:
            facts["gpu_decode_vs_pillow"] = decode_parity(paths[:64], models["attn"], torch.device(device))
        except Exception as exc:  # reported; the variants then show whether decoding on the device works at all
            facts["gpu_decode_vs_pillow"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    onnx = [v for v in variants if v.engine == "onnx"]
    if onnx:
        reason = onnx_unavailable(device)
        if reason is None:
            from vicap_jobs.export.onnx import export_onnx

            started = time.perf_counter()
            models["onnx"] = models["attn"].parent / "onnx"
            try:
                if not (models["onnx"] / "onnx_config.json").is_file():
                    export_onnx(models["attn"], models["onnx"])
                facts["onnx_export_seconds"] = round(time.perf_counter() - started, 1)
            except Exception as exc:
                reason = f"ONNX export failed: {type(exc).__name__}: {exc}"[:300]
        if reason is not None:
            skipped.update({v.name: reason for v in onnx})
    vlp = [v for v in variants if v.model == "vlp"]
    if vlp:
        path, why = int8_path(device)
        if path is None:
            skipped.update({v.name: why for v in vlp if v.engine == "int8"})
        else:
            models["int8_path"] = path
            facts["int8_path"] = path
    return models, skipped, facts  # the BLIP is built when its first variant's turn comes (budget permitting)


def ensure_vlp(
    work: Path, args: argparse.Namespace, models: dict[str, Any], skipped: dict[str, str], facts: dict[str, Any]
) -> None:
    """Build and fit the BLIP once, before the first vision-language variant; a failure skips them all."""
    if "vlp" in models or "vlp_error" in facts:
        return
    started = time.perf_counter()
    try:
        models["vlp"], facts["vlp_fit"] = build_vlp(work, args)
        facts["vlp_build_seconds"] = round(time.perf_counter() - started, 1)
    except Exception as exc:
        facts["vlp_error"] = f"BLIP build failed: {type(exc).__name__}: {exc}"[:300]
        skipped.update({v.name: facts["vlp_error"] for v in plan_variants(args) if v.model == "vlp"})


def run(args: argparse.Namespace) -> Report:
    import torch

    started = time.perf_counter()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="vicap-gpu-bulk-"))
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if args.cuda else "cpu")
    if args.cuda:
        torch.backends.cudnn.benchmark = True  # one shape per variant (padded batches): tune once
    else:
        torch.set_num_threads(1)  # tiny ops: one intra-op thread; the readers and decoders have --threads
    print(f"work dir: {work}; device: {device}{' (dry run)' if args.dry_run else ''}", flush=True)
    images = make_images(work / "images", args)  # before any CUDA work: the writers are separate processes
    paths = images["paths"]
    print(f"{len(paths)} images ready ({images['generate_seconds']} s, {images['mean_bytes']} bytes each)", flush=True)
    variants = plan_variants(args)
    models, skipped, facts = setup_models(variants, work, args, images, device.type)
    results: dict[str, dict[str, Any]] = {}
    captions: dict[str, list[tuple[str, str]]] = {}
    payload: dict[str, Any] = {}
    path = work
    for variant in variants:
        elapsed = time.perf_counter() - started
        if variant.model == "vlp" and variant.name not in skipped and elapsed <= args.budget_s:
            ensure_vlp(work, args, models, skipped, facts)
            elapsed = time.perf_counter() - started
        if variant.name in skipped:
            results[variant.name] = {"status": "skipped", "variant": asdict(variant), "reason": skipped[variant.name]}
        elif elapsed > args.budget_s:
            reason = f"time budget: {elapsed:.0f} s of {args.budget_s:.0f} s spent before it"
            results[variant.name] = {"status": "skipped", "variant": asdict(variant), "reason": reason}
        else:
            cap = min(args.variant_cap_s, max(5.0, args.budget_s - elapsed))
            try:
                results[variant.name], captions[variant.name] = measure(variant, paths, models, args, device, cap)
            except Exception as exc:  # one failing variant must not cost the others' figures
                message = f"{type(exc).__name__}: {exc}".strip()[:600]
                results[variant.name] = {"status": "failed", "variant": asdict(variant), "reason": message}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        print(f"{variant.name}: {summary_line(results[variant.name])}", flush=True)
        payload = build_payload(args, images, facts, results, captions, started)
        path = save(payload, args, work)
    print(json.dumps(payload["summary"], indent=2, ensure_ascii=False))
    print(f"wrote {path}")
    return Report(payload=payload, captions=captions, path=path)


def summary_line(result: dict[str, Any]) -> str:
    if result["status"] != "ok":
        return f"{result['status']}: {result['reason']}"
    stages = ", ".join(f"{k} {v:.2f}" for k, v in result["stage_seconds"].items())
    return (
        f"{result['images_per_s']:.1f} images/s ({result['images']} images{', partial' if result['partial'] else ''}); "
        f"stages s: {stages}; waited for input {result['input_wait_seconds']:.2f} s; GPU util {result['gpu_util']}"
    )


def build_payload(
    args: argparse.Namespace,
    images: dict[str, Any],
    facts: dict[str, Any],
    results: dict[str, dict[str, Any]],
    captions: dict[str, list[tuple[str, str]]],
    started: float,
) -> dict[str, Any]:
    import torch

    for name, result in results.items():
        if result["status"] != "ok":
            continue
        variant = Variant(**result["variant"])
        result["agreement"] = {
            label: {"reference": ref.name, **agreement(captions[name], captions[ref.name])}
            for label, ref in references(variant, args.main_batch_size).items()
            if ref.name in captions and ref.name != name
        }
    ok = {n: r for n, r in results.items() if r["status"] == "ok" and r["variant"]["model"] == "attn"}
    best = max(ok, key=lambda n: ok[n]["images_per_s"]) if ok else None
    best_rate = ok[best]["images_per_s"] if best else None
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "work_dir"}
    return {
        "dry_run": args.dry_run,
        "gpu": torch.cuda.get_device_name(0) if args.cuda else None,
        "versions": versions(),
        "config": config,
        "model": {
            "family": "cnn-lstm-attn",
            "backbone": args.backbone,
            "image_size": args.image_size,
            "weights": facts.get("attn_weights"),
            "beam_size": args.beam_size,
            "max_len": args.max_len,
        },
        "images": {k: v for k, v in images.items() if k not in ("paths", "captions", "key")} | {"n": args.n_images},
        "setup": facts,
        "variants": results,
        "summary": {
            "best_attn_variant": best,
            "best_attn_images_per_s": best_rate,
            "target_images_per_s": TARGET_IMAGES_PER_S,
            "target_met": None if args.dry_run or best_rate is None else best_rate >= TARGET_IMAGES_PER_S,
            "variants_ok": sum(r["status"] == "ok" for r in results.values()),
            "variants_skipped_or_failed": {n: r["reason"] for n, r in results.items() if r["status"] != "ok"},
        },
        "notes": [
            "images_per_s: captioned images / wall seconds of the timed run (after --warmup-batches batches), "
            "read to caption text; the producer thread overlaps read/decode/preprocess with encode/search, "
            "so stage seconds add up to more than the wall time. input_wait_seconds: the main thread idle, "
            "waiting for a prepared batch.",
            "GPU util: NVML's utilization.gpu, the share of each sample period in which any kernel ran "
            "(not how many SMs were busy).",
            "agreement: identical caption strings vs the fp32 variant with Pillow decoding (the product's "
            "pixels) and vs fp32 with the same decoder; on a random-init model near-tied logits make this "
            "a weak figure either way.",
            "fp32 variants run without TF32; the decoder step and the beam scores stay fp32 in every torch "
            "variant (as the product's torch-bf16 engine keeps them).",
        ],
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
