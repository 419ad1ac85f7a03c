"""Vision-language int8: fp32 vs each int8 path of the ``int8`` engine on a mid-sized BLIP, end to end.

Builds a mid-sized random BLIP from its config (ViT 384 x 6 layers, 224 px, patch 16;
BERT decoder 384 x 6 layers), saves it as a local base model, and briefly fits it
through ``train_pretrained`` (frozen ViT, the decoder learns to name the colour and
shape of drawn images) so that captions depend on the image and stop at EOS: token
agreement on an untrained model would only measure how int8 breaks ties between
near-equal random logits. The tokenizer is a byte-level BPE of 8,000 ids learned on
UIT-ViIC's train captions when ``shared/data/uitviic`` is there (a realistic output
layer), else on the synthetic captions.

Then every variant is opened through the real engines (``load_engine``, or
``Int8Engine.load(path=...)``): once alone in its own process (load time, peak RSS,
weights in memory), then all of one device in one process, captioning the same
held-out images interleaved batch by batch after a warm-up (a load change on a
shared machine hits every variant alike); the best of --repeats rounds counts. Reported per variant:
images/s and its ratio to fp32 of the same run, peak RSS (GPU: peak allocated),
weights in memory, checkpoint size on disk, and token agreement with fp32 (images
whose generated ids are identical, and matching ids position by position).
On a machine with CUDA the GPU variants run too: fp32, fp16, bf16 and bitsandbytes.

    OMP_NUM_THREADS=2 python bench/vlp_int8.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_result  # noqa: E402

# Before torch loads: on a shared, oversubscribed machine OpenMP's spinning waits made 2-thread
# BLIP decoding 8-12x slower than 1 thread here (34 s vs 2.9 s a batch); passive waits fix it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

CPU_VARIANTS = ("fp32", "int8:torchao-dynamic", "int8:torchao-weight-only", "int8:bnb-cpu", "int8:torchao-dynamic+head")
GPU_VARIANTS = ("fp32-cuda", "fp16-cuda", "bf16-cuda", "int8:bnb-cuda")
COLOURS = {"đỏ": (210, 40, 40), "xanh": (40, 70, 210), "vàng": (225, 200, 40), "đen": (25, 25, 25)}
SHAPES = ("hình tròn", "hình vuông", "hình tam giác")
UITVIIC_TRAIN = Path(__file__).resolve().parents[2] / "shared/data/uitviic/uitviic_captions_train2017.json"


def rss_mb(field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of this process in MiB (not getrusage: it survives execve)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--n-train", type=int, default=48)
    parser.add_argument("--n-images", type=int, default=24, help="held-out images every variant captions")
    parser.add_argument("--fit-epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4, help="interleaved rounds; images/s: the best round")
    parser.add_argument("--variants", default=None, help="comma-separated (default: CPU ones, + GPU ones with CUDA)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the model and images here")
    parser.add_argument("--result-name", default="vlp_int8", help="bench/results/<name>.json and .md")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # worker mode: one variant's memory
    parser.add_argument("--time", default=None, help=argparse.SUPPRESS)  # worker mode: variants interleaved
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- data and model


def draw(path: Path, colour: str, shape: str, rng: Any, size: int = 96) -> None:
    """A noisy white image with one coloured shape at a random place."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (245, 245, 245))
    pen = ImageDraw.Draw(image)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = COLOURS[colour]
    if shape == "hình tròn":
        pen.ellipse(box, fill=fill)
    elif shape == "hình vuông":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 8, (size, size, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


def synth_set(folder: Path, n: int, seed: int) -> list[Any]:
    """``n`` drawn images, each with one caption naming its shape and colour (one target: a sharp fit)."""
    import numpy as np

    from vicap_jobs.data.samples import CaptionSample

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        colour, shape = list(COLOURS)[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        path = folder / f"{i:03d}.png"
        draw(path, colour, shape, rng)
        samples.append(CaptionSample(i, path, (f"một {shape} màu {colour}",)))
    return samples


def build_base(args: argparse.Namespace, folder: Path) -> Path:
    """A random mid-sized BlipForConditionalGeneration saved as a local base model."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration

    torch.manual_seed(0)
    h = args.hidden
    heads = max(1, h // 64)
    text = dict(
        vocab_size=300,  # resized to the tokenizer by the family
        hidden_size=h,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        intermediate_size=4 * h,
        max_position_embeddings=64,
        bos_token_id=1,
        sep_token_id=2,
        pad_token_id=0,
        encoder_hidden_size=h,
    )
    vision = dict(
        hidden_size=h,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        intermediate_size=4 * h,
        image_size=args.image_size,
        patch_size=args.patch_size,
    )
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=h))
    model.save_pretrained(str(folder))
    return folder


def tokenizer_folder(work: Path, captions: list[str]) -> tuple[Path, str]:
    """A byte-level BPE (8,000 ids) on UIT-ViIC train captions when present, else on ``captions``."""
    from vicap_jobs.models.hf_codec import train_caption_tokenizer

    if UITVIIC_TRAIN.is_file():
        corpus = [a["caption"] for a in json.loads(UITVIIC_TRAIN.read_text(encoding="utf-8"))["annotations"]]
        source = f"UIT-ViIC train captions ({len(corpus)})"
    else:
        corpus, source = captions, "the synthetic captions"
    codec = train_caption_tokenizer(corpus + captions, vocab_size=8000)
    folder = work / "tokenizer"
    codec.save_to(folder)
    return folder, f"byte-level BPE, {len(codec)} ids, learned on {source}"


def fit(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Base model, data, tokenizer; fit through train_pretrained. Returns facts for the report."""
    from vicap_jobs.training.options import TrainOptions
    from vicap_jobs.training.pretrained import train_pretrained

    train = synth_set(work / "train", args.n_train, seed=1)
    val = synth_set(work / "val", 8, seed=2)
    held_out = synth_set(work / "eval", args.n_images, seed=3)
    (work / "images.json").write_text(json.dumps([str(s.image_path) for s in held_out]))
    base = build_base(args, work / "base")
    tokenizer, tokenizer_note = tokenizer_folder(work, [c for s in train for c in s.captions])
    options = TrainOptions(
        epochs=args.fit_epochs,
        lr=1e-3,
        lr_schedule="constant",
        warmup_steps=5,
        batch_size=8,
        patience=args.fit_epochs,
        max_len=12,
        decode_max_len=10,
        base_model=str(base),
        tokenizer=str(tokenizer),
        config_overrides={"freeze_vision": True},
        progress_bar=False,
        seed=0,
    )
    started = time.perf_counter()
    result = train_pretrained(
        family="blip",
        options=options,
        train=train,
        val=val,
        out_dir=work / "model",
        cache_dir=work / "cache",
        dataset_key="shapes",
    )
    return {
        "fit_seconds": round(time.perf_counter() - started, 1),
        "fit_epochs": len(result.history),
        "train_loss_first_last": [round(result.history[0].train_loss, 3), round(result.history[-1].train_loss, 3)],
        "val_bleu4": round(result.history[-1].val_bleu4, 3) if result.history[-1].val_bleu4 is not None else None,
        "tokenizer": tokenizer_note,
    }


# --------------------------------------------------------------------------- one variant (worker)


def tensor_bytes(tensor: Any) -> int:
    """Bytes a tensor holds, looking inside tensor subclasses (torchao) and bitsandbytes' scale."""
    inner = getattr(tensor, "__tensor_flatten__", None)
    if callable(inner) and type(tensor).__name__ != "Parameter" and hasattr(tensor, "qdata"):
        return sum(tensor_bytes(getattr(tensor, name)) for name in inner()[0])
    extra = getattr(tensor, "SCB", None)
    return tensor.numel() * tensor.element_size() + (extra.numel() * extra.element_size() if extra is not None else 0)


def model_bytes(model: Any) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor_bytes(tensor)
    return total


def open_variant(name: str, work: Path, args: argparse.Namespace) -> Any:
    """The engine of one variant: "fp32[-cuda]", "fp16-cuda", "bf16-cuda" or "int8:<path>[+head]"."""
    import torch

    from vicap_jobs.engines import DecodeOptions, ModelArtifacts, int8_engine, load_engine

    artifacts = ModelArtifacts(work / "model")
    decode = DecodeOptions(beam_size=args.beam_size, max_len=args.max_len)
    if name.startswith("int8:"):
        path = name.split(":", 1)[1]
        int8_engine.QUANTIZE_OUTPUT_LAYERS = path.endswith("+head")
        path = path.removesuffix("+head")
        device = "cuda" if path.endswith("cuda") else "cpu"
        try:
            return int8_engine.Int8Engine.load(artifacts, device=device, decode=decode, threads=args.threads, path=path)
        finally:
            int8_engine.QUANTIZE_OUTPUT_LAYERS = False
    device = "cuda" if name.endswith("-cuda") else "cpu"
    engine = load_engine("torch", artifacts, device=device, decode=decode, threads=args.threads)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name.split("-")[0])
    if dtype is not None:
        engine.model.to(dtype)
    return engine


def held_out(work: Path) -> list[Any]:
    from vicap_jobs.data.images import load_rgb

    return [load_rgb(Path(p)) for p in json.loads((work / "images.json").read_text())]


def probe_variant(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Worker mode, one variant per process: load it, caption one batch; memory and size (not speed)."""
    import torch

    images = held_out(work)[: args.batch_size]
    started = time.perf_counter()
    engine = open_variant(args.probe, work, args)
    load_s = time.perf_counter() - started
    engine._forward(engine.preprocess(images))
    cuda = engine.torch_device.type == "cuda"
    return {
        "load_seconds": load_s,
        "peak_rss_mb": rss_mb("VmHWM"),
        "rss_after_mb": rss_mb("VmRSS"),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "weights_in_memory_mb": model_bytes(engine.model) / 2**20,
        "quantized_linears": len(getattr(engine, "quantized", [])),
    }


def time_variants(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Worker mode, all variants of one device in one process, interleaved batch by batch.

    Each batch is captioned by every variant in turn (the order rotating), so a load change
    on a shared machine hits every variant alike; images/s is the best of --repeats rounds.
    """
    import torch

    images = held_out(work)
    names = args.time.split(",")
    engines = {name: open_variant(name, work, args) for name in names}
    batches = [images[i : i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    pixels = [next(iter(engines.values())).preprocess(batch) for batch in batches]  # one policy for all
    for engine in engines.values():
        engine._forward(pixels[0])  # warm-up
    cuda = any(engine.torch_device.type == "cuda" for engine in engines.values())
    rounds: dict[str, list[float]] = {name: [] for name in names}
    tokens: dict[str, list[list[int]]] = {name: [] for name in names}
    for round_index in range(args.repeats):
        seconds = dict.fromkeys(names, 0.0)
        for b, batch in enumerate(pixels):
            order = names[b % len(names) :] + names[: b % len(names)]
            for name in order:
                started = time.perf_counter()
                ids = engines[name]._forward(batch)
                if cuda:
                    torch.cuda.synchronize()
                seconds[name] += time.perf_counter() - started
                if round_index == 0:
                    tokens[name] += ids
        for name in names:
            rounds[name].append(len(images) / seconds[name])
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {rounds[n][-1]:.2f}" for n in names), file=sys.stderr)
    return {
        name: {
            "images_per_s": max(rounds[name]),
            "images_per_s_rounds": rounds[name],
            "tokens": tokens[name],
            "mean_tokens": sum(len(t) for t in tokens[name]) / len(tokens[name]),
        }
        for name in names
    }


# --------------------------------------------------------------------------- report


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> tuple[float, float]:
    """(share of images with identical ids, share of reference positions with the same id)."""
    same = sum(a == b for a, b in zip(tokens, reference, strict=True)) / len(reference)
    positions = sum(max(len(a), len(b)) for a, b in zip(tokens, reference, strict=True))
    matching = sum(sum(x == y for x, y in zip(a, b, strict=False)) for a, b in zip(tokens, reference, strict=True))
    return same, matching / max(positions, 1)


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def render(payload: dict[str, Any]) -> str:
    facts = payload["machine"]
    cfg = payload["config"]
    lines = [
        "# Vision-language int8: fp32 vs the int8 engine's paths",
        "",
        f"Measured {payload['when']} on {facts['cpu_model']} ({facts['cores']} cores), "
        f"torch {payload['versions']['torch']}, torchao {payload['versions']['torchao']}, "
        f"bitsandbytes {payload['versions']['bitsandbytes']}; GPU: {payload['gpu'] or 'none'}.",
        f"Produced by `OMP_NUM_THREADS={cfg['threads']} python bench/vlp_int8.py` "
        f"(OMP_WAIT_POLICY={payload['omp_wait_policy']}); raw numbers in vlp_int8.json.",
        "",
        f"Model: BLIP, ViT {cfg['hidden']} x {cfg['layers']} layers at {cfg['image_size']} px (patch "
        f"{cfg['patch_size']}), BERT decoder {cfg['hidden']} x {cfg['layers']} layers; {payload['fit']['tokenizer']}. "
        f"Fit {payload['fit']['fit_epochs']} epochs ({payload['fit']['fit_seconds']} s, frozen ViT) on "
        f"{cfg['n_train']} drawn shapes: train loss {payload['fit']['train_loss_first_last'][0]} → "
        f"{payload['fit']['train_loss_first_last'][1]}, val BLEU-4 {payload['fit']['val_bleu4']}.",
        f"Checkpoint on disk (hf/, fp32 safetensors): {payload['checkpoint_mb']:.1f} MiB.",
        f"Captioning: {cfg['n_images']} held-out images, batch {cfg['batch_size']}, beam {cfg['beam_size']}, "
        f"max_len {cfg['max_len']}, {cfg['threads']} threads; {cfg['repeats']} rounds, "
        "all variants of a device interleaved batch by batch in one process; memory from one fresh process "
        "per variant (load + one batch). Ratios are to fp32 on the same device in the same run.",
        "",
        "| variant | images/s (best round) | × fp32 (median of paired rounds) | rounds' × fp32 | peak RSS MiB | RSS after MiB | peak GPU MiB | weights in memory MiB "
        "| int8 linears | same ids (images) | same ids (positions) | mean ids |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in payload["variants"].items():
        gpu = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "-"
        lines.append(
            f"| {name} | {r['images_per_s']:.2f} | {r['ratio_to_fp32_median']:.2f} "
            f"| {', '.join(f'{x:.2f}' for x in r['ratio_to_fp32_rounds'])} | {r['peak_rss_mb']:.0f} "
            f"| {r['rss_after_mb']:.0f} | {gpu} "
            f"| {r['weights_in_memory_mb']:.1f} | {r['quantized_linears']} | {r['same_images']:.0%} "
            f"| {r['same_positions']:.1%} | {r['mean_tokens']:.1f} |"
        )
    lines += ["", *payload["notes"], ""]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("torch", "torchao", "bitsandbytes", "transformers")}


def cpu_model() -> str:
    """lscpu's model name and the flags int8/bf16 kernels depend on (VNNI, AMX, AVX512-BF16)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return machine()["cpu"]
    fields = {
        key.strip(): value.strip() for key, value in (line.split(":", 1) for line in out.splitlines() if ":" in line)
    }
    flags = sorted(
        f for f in fields.get("Flags", "").split() if "vnni" in f or f.startswith("amx") or f == "avx512_bf16"
    )
    return f"{fields.get('Model name') or machine()['cpu']} (int8-relevant flags: {', '.join(flags) or 'none'})"


def worker(args: argparse.Namespace, argv: list[str] | None, mode: str, value: str, work: Path) -> Any:
    command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
    command += [f"--{mode}", value, "--work-dir", str(work)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{mode} {value} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.probe or args.time:
        result = probe_variant(args, args.work_dir) if args.probe else time_variants(args, args.work_dir)
        print(json.dumps(result, ensure_ascii=False))
        return

    import torch

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="vicap-bench-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}", flush=True)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    fitted = fit(args, work) if not (work / "model" / "config.json").is_file() else {"reused": str(work / "model")}
    print(f"fit: {fitted}", flush=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    names = args.variants.split(",") if args.variants else [*CPU_VARIANTS, *(GPU_VARIANTS if gpu else ())]
    variants: dict[str, dict[str, Any]] = {}
    for name in names:
        variants[name] = worker(args, argv, "probe", name, work)
        print(f"{name:>28}: {variants[name]}", flush=True)
    for group in ([n for n in names if not n.endswith("cuda")], [n for n in names if n.endswith("cuda")]):
        if group:
            for name, timed in worker(args, argv, "time", ",".join(group), work).items():
                variants[name].update(timed)
                print(f"{name:>28}: {timed['images_per_s']:.3f} images/s", flush=True)
    for name, result in variants.items():
        reference = variants["fp32-cuda" if name.endswith("cuda") else "fp32"]
        result["ratio_to_fp32"] = result["images_per_s"] / reference["images_per_s"]
        rounds = zip(result["images_per_s_rounds"], reference["images_per_s_rounds"], strict=True)
        paired = sorted(a / b for a, b in rounds)  # each round ran its variants interleaved: paired ratios
        result["ratio_to_fp32_rounds"] = paired
        result["ratio_to_fp32_median"] = statistics.median(paired)
        result["same_images"], result["same_positions"] = agreement(result["tokens"], reference["tokens"])
    notes = [
        "- same ids: the generated token ids of each held-out image compared with fp32's on the same device "
        "(beam search; a near-tie between beams can flip a whole caption).",
        "- int8:torchao-dynamic+head also quantizes the language-model head (the engine keeps it fp32).",
        "- bnb paths load the model in fp16 (bitsandbytes casts fp32 inputs to fp16 on every call and warns).",
        "- weights in memory: parameters and buffers as held (int8 data + scales for quantized linears); "
        "a tied embedding/head pair counts once until the head is quantized. Peak RSS includes the fp32 "
        "weights a torchao path holds while it quantizes at load, and the libraries each path imports.",
    ]
    payload = {
        "config": {k: v for k, v in vars(args).items() if k not in ("probe", "time", "work_dir")},
        "fit": fitted,
        "checkpoint_mb": folder_mb(work / "model" / "hf"),
        "gpu": gpu,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "versions": versions(),
        "variants": {
            name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "tokens"}
            for name, r in variants.items()
        },
        "notes": notes,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    path = write_result(args.result_name, payload)
    payload = json.loads(path.read_text())
    payload["machine"]["cpu_model"] = cpu_model()
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / f"{args.result_name}.md").write_text(render(payload), encoding="utf-8")
    print(render(payload))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
