"""GPU smoke check on a lent CUDA machine (not a test; CI has no GPU).

Trains a tiny model on CUDA, checks the torch engine gives the same captions on
CUDA as on CPU, and runs a real `vicap-jobs worker --gpu 0` on the embedded
broker to caption a folder. Writes $OUT/gpu_check.json (or bench/results/).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    home = Path(os.environ.setdefault("VICAP_HOME", "/tmp/vicap-gpu-check"))
    os.environ.pop("VICAP_DATABASE_URL", None)
    os.environ.pop("VICAP_BROKER_URL", None)
    out = Path(os.environ.get("OUT") or Path(__file__).resolve().parent / "results")
    report: dict[str, object] = {}
    import torch

    report["torch"] = torch.__version__
    report["cuda"] = torch.cuda.is_available() and torch.cuda.get_device_name(0)
    import onnxruntime

    report["onnxruntime_providers"] = onnxruntime.get_available_providers()

    from vicap_jobs.db.store import open_engine
    from vicap_jobs.services.captioning import create_caption_job
    from vicap_jobs.services.datasets import create_synth_dataset, load_samples
    from vicap_jobs.services.training import create_train_job, train_in_process
    from vicap_jobs.settings import get_settings

    settings = get_settings()
    db = open_engine(settings)
    device = os.environ.get("GPU_CHECK_DEVICE", "cuda")
    create_synth_dataset(
        db=db,
        name="synth",
        n_images=int(os.environ.get("GPU_CHECK_IMAGES", "300")),
        seed=0,
        size=64,
        out_dir=home / "synth",
    )
    started = time.perf_counter()
    job_id = create_train_job(
        db=db,
        name="gpu-attn",
        family="cnn-lstm-attn",
        dataset="synth",
        options={
            "backbone": "tiny",
            "backbone_weights": "random",
            "finetune_backbone": True,
            "image_size": 64,
            "epochs": int(os.environ.get("GPU_CHECK_EPOCHS", "4")),
            "device": device,
        },
    )
    outcome = train_in_process(db=db, job_id=job_id)
    report["train_cuda_s"] = round(time.perf_counter() - started, 1)
    report["train_message"] = outcome.message

    from vicap_jobs.data.images import load_rgb
    from vicap_jobs.engines import ModelArtifacts, load_engine

    test = load_samples(db=db, dataset="synth", split="test")
    images = [load_rgb(s.image_path) for s in test]
    checkpoint = ModelArtifacts(settings.models_dir / "gpu-attn")
    on_cpu = load_engine("torch", checkpoint, device="cpu").caption(images)
    on_gpu = load_engine("torch", checkpoint, device=device).caption(images)
    report["torch_cuda_vs_cpu_equal"] = sum(a == b for a, b in zip(on_cpu, on_gpu, strict=True)) / len(images)
    report["example_caption"] = on_gpu[0]

    from vicap_jobs.cli.waiting import LocalWorker, wait_for_job
    from vicap_jobs.services.workers import live_workers
    from vicap_jobs.worker.publish import publish_job

    worker = LocalWorker(job_id=0, gpu=0, settings=settings)
    worker.start()
    try:
        deadline = time.monotonic() + 90
        while not live_workers(db=db) and time.monotonic() < deadline:
            time.sleep(0.5)
        plan = create_caption_job(
            db=db,
            folder=home / "synth" / "images" / "test",
            model="gpu-attn",
            engine_name="torch",
            recursive=False,
            batch_size=16,
            chunk_size=8,
            gpu=0,
        )
        publish_job(db=db, job_id=plan.job_id)
        summary = wait_for_job(db=db, job_id=plan.job_id, gpu=0)
    finally:
        worker.stop()
    report["worker_gpu0"] = {
        "status": summary.status,
        "done": summary.done,
        "failed": summary.failed,
        "device": summary.device,
        "images_per_s": summary.throughput,
    }
    log = worker.log_path.read_text()[-1500:] if worker.log_path.exists() else ""
    report["worker_log_tail"] = log
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    sys.exit(0 if summary.status == "succeeded" else 1)


if __name__ == "__main__":
    main()
