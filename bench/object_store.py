"""Captioning from object storage vs the local disk: images/s through the real pipeline, read-ahead on and off.

The same N photos (drawn sports scenes, 640×480 with a little sensor-like noise, JPEG quality 90:
~90 KB each, what a phone photo downscaled for an archive weighs) lie in a local folder and in a
bucket of a SeaweedFS S3 server this script starts itself (``tests/seaweed.py``, on 127.0.0.1: the
network is loopback, so what is measured is the client's cost per object — request signing,
HTTP, the thread hand-offs — not a WAN's latency). One tiny-but-real model (cnn-lstm on the tiny
backbone, random weights, ``bench/common.make_tiny_model``) captions them through the production
path: ``services.captioning.create_caption_job`` over the folder or the ``s3://`` prefix, then
``pipeline.runner.run_chunk`` for every chunk with one warm ``EngineCache``, on a SQLite store.

Variants (``--variants``): the source (``local``, ``s3``), ``VICAP_READ_AHEAD`` (batches read while
the engine captions one; 0 is off) and, for S3, ``VICAP_STORAGE_CONCURRENCY`` (objects fetched at
once; 8 is the default). Each variant runs ``--repeats`` times, round-robin, so the load of a shared
machine hits all of them; the median counts, and every figure is a ratio to ``local-ra1`` (local
disk, the default read-ahead) measured in the same run. Planning the job (listing, hashing the
photos, registering them) is timed apart (``plan_s``) and not in images/s. An untimed warm-up job
per source first loads the engine, stores the perceptual hashes (the runner hashes each content
once) and opens the S3 connections. The captions of every run are checked against the local ones:
the same bytes must give the same captions.

Writes ``bench/results/object_store.json`` (with the CPU model and the load average around every
run: compare ratios of one run, never absolute images/s across machines).

Measured 2026-11-30 on the shared 2-core AMD EPYC box (load 3-4.8, the server on the same cores),
300 photos, 4 rounds: S3 at 0.55-0.61× the local disk with the default concurrency, because each
photo from S3 costs this process ~11 ms of CPU against ~6.5 ms from disk (the S3 client) plus
~1.8 ms in the server; concurrency 8 over 1: ×1.08-1.23; read-ahead: no gain (no idle core, its
thread competes with torch). Every variant gave the local captions. Details: REPORT.md.

    python bench/object_store.py                       # 300 photos, 3 rounds, ~5 min on 2 cores
    python bench/object_store.py --n-images 64 --repeats 1 --variants local-ra1,s3-ra1-c8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/seaweed.py: the server the tests use
from common import make_tiny_model, write_result  # noqa: E402

BASELINE = "local-ra1"
DEFAULT_VARIANTS = "local-ra1,local-ra0,s3-ra1-c8,s3-ra0-c8,s3-ra2-c8,s3-ra1-c1,s3-ra0-c1"


@dataclass(frozen=True)
class Variant:
    """One configuration: ``local-ra1`` or ``s3-ra2-c8`` (source, read-ahead batches, storage concurrency)."""

    name: str
    source: str
    read_ahead: int
    concurrency: int | None

    @classmethod
    def parse(cls, name: str) -> Variant:
        parts = name.strip().split("-")
        try:
            source, read_ahead = parts[0], int(parts[1].removeprefix("ra"))
            concurrency = int(parts[2].removeprefix("c")) if len(parts) > 2 else None
        except (IndexError, ValueError):
            raise SystemExit(f"bad variant {name!r}: use local-raN or s3-raN-cM") from None
        if source not in ("local", "s3") or (source == "local") != (concurrency is None) or len(parts) > 3:
            raise SystemExit(f"bad variant {name!r}: use local-raN or s3-raN-cM")
        return cls(name.strip(), source, read_ahead, concurrency)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=300)
    parser.add_argument("--width", type=int, default=640, help="photo width in pixels")
    parser.add_argument("--height", type=int, default=480, help="photo height in pixels")
    parser.add_argument("--image-size", type=int, default=96, help="model input side (tiny backbone)")
    parser.add_argument(
        "--eos-bias", type=float, default=2.0, help="end-of-caption logit bias: short captions, so reading matters"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the engine")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin rounds; the median counts")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated, e.g. local-ra1,s3-ra0-c8")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep photos, store and server data here")
    parser.add_argument("--result-name", default="object_store", help="bench/results/<name>.json")
    args = parser.parse_args(argv)
    args.variant_list = [Variant.parse(name) for name in args.variants.split(",") if name.strip()]
    if BASELINE not in [v.name for v in args.variant_list]:
        args.variant_list.insert(0, Variant.parse(BASELINE))
    return args


# -- inputs ---------------------------------------------------------------------------------------


def make_photos(folder: Path, n: int, width: int, height: int, seed: int = 7) -> list[Path]:
    """``n`` JPEG photos width×height: drawn scenes cropped to the aspect ratio, with noise (so they weigh as photos)."""
    import numpy as np
    from PIL import Image

    from vicap_jobs.data.synth import generate_synth

    side = max(width, height)
    synth = generate_synth(folder / "synth", n_images=max(n, 3), seed=seed, size=side, overwrite=True)
    drawn = sorted(p for image_dir in synth.image_dirs.values() for p in image_dir.iterdir())[:n]
    photos = folder / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, source in enumerate(drawn):
        left, top = (side - width) // 2, (side - height) // 2
        with Image.open(source) as im:
            pixels = np.asarray(im.convert("RGB").crop((left, top, left + width, top + height)), dtype=np.int16)
        noisy = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)  # (H, W, 3)
        path = photos / f"photo_{i:05d}.jpg"
        Image.fromarray(noisy).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def upload(paths: list[Path], url: str) -> None:
    """Put every photo under ``url`` through vicap-jobs' own storage API."""
    from vicap_jobs.storage.objects import write_bytes

    for path in paths:
        write_bytes(f"{url}/{path.name}", path.read_bytes())


# -- the store, the model, the runs ---------------------------------------------------------------


class Setup:
    """A private VICAP_HOME with a SQLite store at head, the tiny model registered, a warm engine cache."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        from vicap_jobs.db.migrate import upgrade
        from vicap_jobs.db.session import make_engine
        from vicap_jobs.services.model_engines import EngineCache
        from vicap_jobs.services.models import register_model

        self.args = args
        home = work / "home"
        home.mkdir(parents=True, exist_ok=True)
        os.environ["VICAP_HOME"] = str(home)
        url = f"sqlite:///{home / 'vicap.sqlite'}"
        upgrade(url)
        self.db = make_engine(url)
        checkpoint = make_tiny_model(work / "model", args.image_size, bench="object_store", eos_bias=args.eos_bias)
        register_model(
            db=self.db,
            name="bench",
            family="cnn-lstm",
            backbone="tiny",
            artifact_dir=str(checkpoint),
            hyperparameters={},
            vocabulary=str(checkpoint / "vocab.json"),
            tokenization="syllable",
            image_size=args.image_size,
            dataset_id=None,
            trained_by_job_id=None,
        )
        self.engines = EngineCache(db=self.db, threads=args.threads)


def configure(variant: Variant) -> None:
    """The variant's settings, as a worker reads them (environment, then a fresh settings object)."""
    from vicap_jobs.settings import reset_settings

    os.environ["VICAP_READ_AHEAD"] = str(variant.read_ahead)
    if variant.concurrency is None:
        os.environ.pop("VICAP_STORAGE_CONCURRENCY", None)
    else:
        os.environ["VICAP_STORAGE_CONCURRENCY"] = str(variant.concurrency)
    reset_settings()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a process (all its threads) has used so far; 0 without one."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def run_job(
    setup: Setup, variant: Variant, location: str | Path, n_expected: int, server_pid: int | None = None
) -> dict[str, Any]:
    """Plan one caption job over ``location`` and run its chunks here; images/s counts the chunks only.

    CPU time of this process (engine, decoding, the S3 client) and of the S3 server is taken over the
    chunks too: on one machine both share the cores, so it says what each side costs per photo.
    """
    from vicap_jobs.pipeline.runner import run_chunk
    from vicap_jobs.services.captioning import create_caption_job

    configure(variant)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    plan = create_caption_job(
        db=setup.db,
        folder=location,  # type: ignore[arg-type]  # a Path, or an s3:// URL (str)
        model="bench",
        engine_name="torch",
        recursive=False,
        batch_size=setup.args.batch_size,
        chunk_size=setup.args.chunk_size,
    )
    plan_s = time.perf_counter() - started
    totals = {"read_s": 0.0, "infer_s": 0.0, "write_s": 0.0}
    client_cpu, server_cpu = time.process_time(), cpu_seconds(server_pid)
    started = time.perf_counter()
    for chunk_id in plan.chunk_ids:
        outcome = run_chunk(db=setup.db, chunk_id=chunk_id, engines=setup.engines, worker_name="bench")
        if outcome.status != "done" or outcome.n_failed:
            raise RuntimeError(f"{variant.name}: chunk {chunk_id} ended {outcome}")
        for key in totals:
            totals[key] += getattr(outcome, key)
    seconds = time.perf_counter() - started
    client_cpu, server_cpu = time.process_time() - client_cpu, cpu_seconds(server_pid) - server_cpu
    captions = job_captions(setup, plan.job_id)
    if len(captions) != n_expected:
        raise RuntimeError(f"{variant.name}: {len(captions)} captions for {n_expected} photos")
    return {
        "images_per_s": n_expected / seconds,
        "seconds": seconds,
        "plan_s": plan_s,
        **totals,
        "client_cpu_ms_per_image": 1000 * client_cpu / n_expected,
        "server_cpu_ms_per_image": 1000 * server_cpu / n_expected if variant.source == "s3" else 0.0,
        "load_1min_before": load_before,
        "load_1min_after": os.getloadavg()[0],
        "captions": captions,
    }


def job_captions(setup: Setup, job_id: int) -> dict[str, str]:
    """File name → caption text of the job's ok rows."""
    from sqlalchemy import select

    from vicap_jobs.db.session import session_scope
    from vicap_jobs.db.tables import Caption, Image
    from vicap_jobs.storage.locations import name_of

    with session_scope(setup.db) as session:
        query = select(Image.path, Caption.text).join(Image, Image.id == Caption.image_id)
        rows = session.execute(query.where(Caption.job_id == job_id, Caption.status == "ok")).all()
    return {name_of(path): text for path, text in rows}


# -- the whole benchmark --------------------------------------------------------------------------


def run(args: argparse.Namespace, server: Any = None) -> dict[str, Any]:
    """Everything but writing the file; ``server``: a started SeaweedS3 to use (None: start one here)."""
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="vicap-bench-object-store-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}", flush=True)
    paths = make_photos(work / "inputs", args.n_images, args.width, args.height)
    photo_kb = statistics.mean(p.stat().st_size for p in paths) / 1024
    setup = Setup(work, args)
    variants: list[Variant] = args.variant_list
    locations: dict[str, str | Path] = {"local": paths[0].parent}
    own_server, server_pid = None, None
    try:
        if any(v.source == "s3" for v in variants):
            if server is None:
                from tests.seaweed import SeaweedS3

                own_server = server = SeaweedS3(work / "seaweed")
                server.start()
            os.environ.update(server.env())
            server_pid = server.process.pid if server.process is not None else None
            started = time.perf_counter()
            locations["s3"] = f"s3://{server.new_bucket('bench')}/photos"
            upload(paths, str(locations["s3"]))
            print(f"uploaded {len(paths)} photos in {time.perf_counter() - started:.1f}s", flush=True)
        for source in dict.fromkeys(v.source for v in variants):  # warm-up: engine, hashes, connections
            warm = next(v for v in variants if v.source == source)
            run_job(setup, warm, locations[source], len(paths), server_pid)
        rounds: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
        for round_index in range(args.repeats):
            for variant in variants:
                result = run_job(setup, variant, locations[variant.source], len(paths), server_pid)
                rounds[variant.name].append(result)
                print(
                    f"round {round_index + 1} {variant.name:>10}: {result['images_per_s']:7.1f} images/s "
                    f"(read {result['read_s']:.2f}s, infer {result['infer_s']:.2f}s, plan {result['plan_s']:.2f}s, "
                    f"cpu ms/photo {result['client_cpu_ms_per_image']:.1f} + server "
                    f"{result['server_cpu_ms_per_image']:.1f}, load {result['load_1min_before']:.1f})",
                    flush=True,
                )
    finally:
        if own_server is not None:
            own_server.stop()
    return {
        "config": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
            if key not in ("work_dir", "variant_list")
        },
        "photos": {"n": len(paths), "width": args.width, "height": args.height, "mean_kib": round(photo_kb, 1)},
        "model": f"cnn-lstm, tiny backbone, {args.image_size} px, random weights, eos bias {args.eos_bias}",
        "store": "sqlite",
        "server": "SeaweedFS S3 gateway on 127.0.0.1 (loopback)",
        "baseline": BASELINE,
        "variants": summarize(variants, rounds),
        "how_to_read": (
            "images_per_s: median over rounds of photos / seconds in run_chunk (planning apart, in plan_s); "
            f"ratio_to_baseline: that median over {BASELINE}'s median, same run; read_s / infer_s: the chunks' own "
            "split (read_s is time waiting for decoded photos on the critical path plus the read-ahead thread's, as "
            "the runner records it); client_cpu_ms_per_image / server_cpu_ms_per_image: CPU time of this process (engine, "
            "decoding, S3 client, all threads) and of the weed server over the chunks, per photo; "
            "captions_equal_to_local: share of photos whose caption equals the local run's"
        ),
        "findings": [],  # the measured conclusions, written by hand after a run (see REPORT.md)
    }


def summarize(variants: list[Variant], rounds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Median per variant, its ratio to the baseline, and whether its captions equal the local ones."""
    reference = rounds[BASELINE][0]["captions"]
    base = statistics.median(r["images_per_s"] for r in rounds[BASELINE])
    summary: dict[str, dict[str, Any]] = {}
    for variant in variants:
        results = rounds[variant.name]
        speeds = sorted(r["images_per_s"] for r in results)
        median = statistics.median(speeds)
        same = [
            sum(r["captions"].get(name) == text for name, text in reference.items()) / len(reference) for r in results
        ]
        summary[variant.name] = {
            "source": variant.source,
            "read_ahead": variant.read_ahead,
            "storage_concurrency": variant.concurrency,
            "images_per_s": round(median, 2),
            "images_per_s_rounds": [round(s, 2) for s in speeds],
            "ratio_to_baseline": round(median / base, 3),
            **{
                key: round(statistics.median(r[key] for r in results), 3)
                for key in (
                    "seconds",
                    "plan_s",
                    "read_s",
                    "infer_s",
                    "write_s",
                    "client_cpu_ms_per_image",
                    "server_cpu_ms_per_image",
                )
            },
            "load_1min": [round(r["load_1min_before"], 2) for r in results],
            "captions_equal_to_local": min(same),
        }
    return summary


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    payload = run(args)
    payload["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = write_result(args.result_name, payload)
    for name, v in payload["variants"].items():
        print(f"{name:>10}: {v['images_per_s']:7.1f} images/s  ×{v['ratio_to_baseline']:.2f} {BASELINE}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
