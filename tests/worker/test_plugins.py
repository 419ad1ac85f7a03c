"""Plugins extend vicap-jobs without touching ``src/``: a throw-away job kind and a throw-away model family
run through a real worker. The test process never imports them (the registries stay as shipped); the
worker, the CLI and helper subprocesses load them from ``VICAP_PLUGINS``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import store_helpers as jobs
from tests.worker.conftest import REPO, Deployment
from vicap_jobs.services.workers import live_workers

pytestmark = pytest.mark.slow

TOY_KIND = "tests.plugins.toy_kind"
TOY_FAMILY = "tests.plugins.toy_family"


def _plugin_env(plugin: str = TOY_KIND) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {"VICAP_PLUGINS": plugin, "PYTHONPATH": path}


def _python(dep: Deployment, code: str) -> str:
    """Run ``code`` in another process with the deployment's settings (plugins included); its last line."""
    done = subprocess.run(
        [sys.executable, "-c", code], env=dep.env, capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _submit(dep: Deployment, numbers: list[int], parent: int | None = None) -> int:
    """Create and publish a toy-sum job from another process, as a CLI command would."""
    return int(_python(dep, f"from {TOY_KIND} import submit; print(submit({numbers!r}, {parent!r}))"))


def test_a_plugin_job_kind_runs_through_the_queue_as_a_child_job(make_deployment, tmp_path: Path) -> None:
    dep: Deployment = make_deployment(None, None, **_plugin_env())
    parent = _submit(dep, [1, 2])
    child = _submit(dep, [10, 20, 12], parent)
    bad = _submit(dep, [1, -5], parent)
    dep.start_worker("--cpu")
    dep.wait_for(lambda: bool(live_workers(db=dep.db, within_s=5)), timeout=60, what="the worker's heartbeat")
    dep.wait_for(
        lambda: all(dep.job(j).status in ("succeeded", "failed") for j in (parent, child, bad)),
        timeout=90,
        what="the toy jobs to end\n" + dep.worker_logs(),
    )
    parent_job, child_job, bad_job = (dep.job(j) for j in (parent, child, bad))
    assert (parent_job.status, parent_job.progress_message) == ("succeeded", "sum 3 on cpu")
    assert (child_job.status, child_job.progress_message) == ("succeeded", "sum 42 on cpu")
    assert (child_job.done, child_job.total, child_job.parent_id) == (3, 3, parent)
    assert (bad_job.status, bad_job.error) == ("failed", "toy-sum takes no negative numbers, got -5")
    assert [c.id for c in jobs.job_summary(dep.db, parent).children] == [child, bad]

    shown = dep.cli("jobs", "show", str(parent))  # the CLI process loads the plugin too
    assert "child jobs" in shown.stdout and "toy-sum takes no negative numbers" in shown.stdout


def test_a_plugin_that_cannot_be_imported_is_one_config_error(make_deployment) -> None:
    dep: Deployment = make_deployment(None, None, VICAP_PLUGINS="no_such_plugin_module")
    result = dep.cli("jobs", "show", "1", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "VICAP_PLUGINS names 'no_such_plugin_module', which cannot be imported" in result.stderr


def test_a_plugin_model_family_captions_a_folder_through_a_real_worker(make_deployment, tmp_path: Path) -> None:
    """Its own config, codec (characters) and engine (no beam search); the CLI and the worker find them."""
    from PIL import Image

    from vicap_jobs.services.models import register_model

    dep: Deployment = make_deployment(None, None, **_plugin_env(TOY_FAMILY))
    checkpoint = _python(
        dep, f"from {TOY_FAMILY} import save_toy_checkpoint; print(save_toy_checkpoint({str(tmp_path / 'toy')!r}))"
    )
    register_model(
        db=dep.db,
        name="toy",
        family="toy-colour",
        backbone=None,
        artifact_dir=checkpoint,
        hyperparameters={},
        vocabulary=None,
        tokenization="syllable",
        image_size=8,
        dataset_id=None,
        trained_by_job_id=None,
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    expected = {
        "red.png": ((230, 20, 30), "một bức ảnh màu đỏ"),
        "green.jpg": ((10, 200, 40), "một bức ảnh màu xanh lá"),
        "blue.png": ((20, 30, 220), "một bức ảnh màu xanh dương"),
        "yellow.webp": ((240, 230, 10), "một bức ảnh màu vàng"),
    }
    for name, (colour, _) in expected.items():
        Image.new("RGB", (40, 30), colour).save(photos / name)
    (photos / "broken.png").write_bytes(b"not a png")
    dep.start_worker("--cpu")
    dep.wait_for(lambda: bool(live_workers(db=dep.db, within_s=5)), timeout=60, what="the worker's heartbeat")

    out = dep.cli("submit", "caption", "--dir", str(photos), "--model", "toy", "--wait", timeout=240)
    assert "4 captioned, 1 failed" in out.stdout, out.stdout + out.stderr
    rows = dep.cli("captions", "export", "1", "--format", "jsonl").stdout
    got = {row["file_name"]: row for row in map(json.loads, rows.splitlines())}
    assert {name: got[name]["caption"] for name in expected} == {name: text for name, (_, text) in expected.items()}
    assert {got[name]["engine"] for name in expected} == {"toy"}
    assert got["broken.png"]["status"] == "error" and got["broken.png"]["caption"] is None
