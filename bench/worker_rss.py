"""Peak worker RSS while captioning N synthetic images through the queue (must stay flat).

A real `vicap-jobs worker` process captions N images in chunks; its resident
memory (with children) is sampled every 0.5 s. Images are streamed chunk by
chunk, so memory after the first chunks should not grow with N.

    python bench/worker_rss.py --images 5000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import rss_mb, write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--chunk-size", type=int, default=250)
    parser.add_argument("--broker", default=None, help="default: the embedded broker")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="vicap-bench-rss-"))
    os.environ["VICAP_HOME"] = str(home)
    os.environ.pop("VICAP_DATABASE_URL", None)
    if args.broker:
        os.environ["VICAP_BROKER_URL"] = args.broker
    else:
        os.environ.pop("VICAP_BROKER_URL", None)

    from vicap_jobs.cli.waiting import LocalWorker, wait_for_job
    from vicap_jobs.data.synth import generate_synth
    from vicap_jobs.data.vocab import Vocabulary
    from vicap_jobs.db.store import open_engine
    from vicap_jobs.models.checkpoint import save_checkpoint
    from vicap_jobs.models.registry import get_family
    from vicap_jobs.services.captioning import create_caption_job
    from vicap_jobs.services.exporting import export_model
    from vicap_jobs.services.models import register_model
    from vicap_jobs.services.workers import live_workers
    from vicap_jobs.settings import get_settings
    from vicap_jobs.worker.publish import publish_job

    settings = get_settings()
    db = open_engine(settings)
    started = time.perf_counter()
    synth = generate_synth(home / "synth", n_images=args.images, seed=0, size=args.size)
    folder = home / "photos"
    folder.mkdir()
    for split_dir in synth.image_dirs.values():
        for image in split_dir.iterdir():
            (folder / f"{split_dir.name}-{image.name}").symlink_to(image)
    generate_s = time.perf_counter() - started

    spec = get_family("cnn-lstm-attn")
    vocab = Vocabulary.build([["một", "cầu", "thủ", "đang", "chơi", "bóng", "đá"]], tokenization="syllable")
    config = spec.config_cls(vocab_size=len(vocab), backbone="tiny", image_size=args.size)
    model = spec.build(config, backbone_weights="random")
    checkpoint = save_checkpoint(home / "models" / "bench", model=model, family=spec.name, codec=vocab, meta={})
    register_model(
        db=db,
        name="bench",
        family=spec.name,
        backbone="tiny",
        artifact_dir=str(checkpoint),
        hyperparameters={},
        vocabulary=None,
        tokenization="syllable",
        image_size=args.size,
        dataset_id=None,
        trained_by_job_id=None,
    )
    export_model(db=db, model="bench")

    worker = LocalWorker(job_id=0, gpu=None, settings=settings)
    worker.start()
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.perf_counter()
        while not stop.is_set():
            if worker.process is not None:
                samples.append((time.perf_counter() - t0, rss_mb(worker.process.pid)))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        while not live_workers(db=db):
            time.sleep(0.5)
        plan = create_caption_job(
            db=db,
            folder=folder,
            model="bench",
            engine_name="onnx",
            recursive=False,
            batch_size=16,
            chunk_size=args.chunk_size,
        )
        t0 = time.perf_counter()
        publish_job(db=db, job_id=plan.job_id)
        summary = wait_for_job(db=db, job_id=plan.job_id)
        caption_s = time.perf_counter() - t0
    finally:
        stop.set()
        worker.stop()
    rss = [r for _, r in samples if r > 0]
    quarter = max(1, len(rss) // 4)
    payload = {
        "images": plan.n_images,
        "chunk_size": args.chunk_size,
        "status": summary.status,
        "generate_s": round(generate_s, 1),
        "caption_s": round(caption_s, 1),
        "images_per_s": round(plan.n_images / caption_s, 1),
        "peak_worker_rss_mb": round(max(rss), 1) if rss else None,
        "rss_first_quarter_max_mb": round(max(rss[:quarter]), 1) if rss else None,
        "rss_last_quarter_max_mb": round(max(rss[-quarter:]), 1) if rss else None,
        "samples": len(rss),
    }
    print(write_result("worker_rss", payload).read_text())


if __name__ == "__main__":
    main()
