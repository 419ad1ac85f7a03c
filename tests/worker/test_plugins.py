"""Plugins extend the job system without touching ``src/``: a throw-away job kind runs through a real worker."""

from __future__ import annotations

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


def _plugin_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {"VICAP_PLUGINS": TOY_KIND, "PYTHONPATH": path}


def _submit(dep: Deployment, numbers: list[int], parent: int | None = None) -> int:
    """Create and publish a toy-sum job from another process, as a CLI command would."""
    code = f"from {TOY_KIND} import submit; print(submit({numbers!r}, {parent!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=dep.env, capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


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
