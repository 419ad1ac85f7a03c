"""Celery configuration, queue routing, GPU pinning and the worker command's options — no worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vicap_jobs.errors import ConfigError, InputError
from vicap_jobs.jobs.queues import SHARED_QUEUE, device_label, gpu_queue, queue_for_gpu
from vicap_jobs.settings import Settings
from vicap_jobs.worker.app import broker_transport_options, make_app

# -- the Celery app ---------------------------------------------------------------------------


def test_app_is_configured_for_crash_safety(vicap_env: Path, tmp_path: Path) -> None:
    app = make_app(Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/0", visibility_timeout_s=7200))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result and conf.result_backend is None
    assert conf.broker_transport_options == {"visibility_timeout": 7200}
    assert conf.task_default_queue == SHARED_QUEUE == "vicap"
    assert conf.broker_connection_max_retries is None  # a restarted Redis is waited for
    assert conf.worker_send_task_events  # Flower


def test_embedded_sqlalchemy_broker_polls_fast_without_the_crashing_option(vicap_env: Path, tmp_path: Path) -> None:
    from kombu.transport.sqlalchemy import Transport

    settings = Settings(home=tmp_path)
    assert settings.effective_broker_url.startswith("sqla+sqlite:///")
    app = make_app(settings)
    options = app.conf.broker_transport_options
    assert "polling_interval" not in options  # create_engine() would reject it
    assert Transport.polling_interval == pytest.approx(0.1)
    assert not app.conf.worker_send_task_events


def test_filesystem_broker_keeps_its_folders_under_home(vicap_env: Path, tmp_path: Path) -> None:
    options = broker_transport_options(Settings(home=tmp_path, broker_url="filesystem://"))
    assert options["data_folder_in"] == options["data_folder_out"] == str(tmp_path / "broker" / "queue")
    assert options["store_processed"] and Path(options["processed_folder"]).is_dir()


def test_queues_follow_the_requested_gpu() -> None:
    assert queue_for_gpu(None) == SHARED_QUEUE == "vicap"
    assert queue_for_gpu(1) == gpu_queue(1) == "gpu.1"
    assert device_label(3) == "gpu3" and device_label(None) == "cpu"
    with pytest.raises(InputError):
        gpu_queue(-1)


def test_every_job_kind_has_a_task_registered_under_its_name() -> None:
    from vicap_jobs.jobs.kinds import job_kinds
    from vicap_jobs.worker import tasks

    names = {kind.task for kind in job_kinds()}
    assert names == {
        "vicap.caption_chunk",
        "vicap.train",
        "vicap.export",
        "vicap.evaluate",
        "vicap.sweep",
        "vicap.sweep_train",
    }
    assert names <= set(tasks.app.tasks) and set(tasks.KIND_TASKS) == names
    assert {"vicap.reap_stale_chunks", "vicap.nightly_evaluate"} <= set(tasks.app.tasks)


def test_gpu_pinning_happens_before_torch_is_imported() -> None:
    code = (
        "import os, sys\n"
        "from vicap_jobs.worker.gpu import pin_gpu, node_name, process_device\n"
        "pin_gpu(1)\n"
        "assert os.environ['CUDA_VISIBLE_DEVICES'] == '1'\n"
        "assert 'torch' not in sys.modules\n"
        "print(process_device(), node_name(1).split('@')[0], node_name(None).split('@')[0])\n"
        "import torch\n"
        "try:\n"
        "    pin_gpu(0)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    device, gpu_name, cpu_name, error = out.stdout.split()
    assert device in ("cpu", "cuda:0")  # one visible GPU is cuda:0; on a CPU host it runs on the CPU
    assert (gpu_name, cpu_name, error) == ("gpu1", "cpu", "ConfigError")


def test_worker_command_rejects_contradictory_options() -> None:
    from click.testing import CliRunner

    from vicap_jobs.cli.main import cli

    result = CliRunner().invoke(cli, ["worker", "--gpu", "0", "--concurrency", "2"])
    assert result.exit_code == 1 and "one worker per GPU" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(InputError):
        from vicap_jobs.worker.gpu import pin_gpu

        pin_gpu(-1)


def test_bad_nightly_cron_is_a_config_error() -> None:
    from vicap_jobs.scheduler.beat import parse_cron

    with pytest.raises(ConfigError, match="5 fields"):
        parse_cron("0 2 * *")
    with pytest.raises(ConfigError, match="invalid"):
        parse_cron("99 2 * * *")
