"""The run skeleton of job-unit kinds (``vicap_jobs.services.runs.run_job``) with a kind registered by the test.

The kind's run function does what its ``behaviour`` parameter says, so each way a run can end is one job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from tests import store_helpers as jobs
from tests.store_helpers import naive
from vicap_jobs.db.session import session_scope
from vicap_jobs.errors import InputError, VicapError
from vicap_jobs.jobs import lifecycle
from vicap_jobs.jobs.context import RunContext
from vicap_jobs.jobs.kinds import JobKind, register_job_kind
from vicap_jobs.jobs.params import JobParams
from vicap_jobs.services.runs import JobOutcome, raise_unless_succeeded, run_job


class ProbeParams(JobParams):
    behaviour: str = "ok"


@dataclass
class Seen:
    """What the run function saw, one entry per call."""

    status: str
    params: JobParams
    job_id: int
    device: str
    worker_name: str
    engines: Any
    cancelled_before: bool


@dataclass
class Report:
    message: str


calls: list[Seen] = []


def _probe_run(ctx: RunContext) -> object:
    with session_scope(ctx.db) as session:
        status = lifecycle.get_job(session=session, job_id=ctx.job_id).status
    calls.append(Seen(status, ctx.params, ctx.job_id, ctx.device, ctx.worker_name, ctx.engines, ctx.cancelled()))
    ctx.heartbeat()
    behaviour = ctx.params.behaviour  # type: ignore[attr-defined]
    if behaviour == "ok":
        ctx.report(done=2, total=2, message="epoch 2/2")
        return "BLEU-4 0.31"
    if behaviour == "object":
        return Report("scored")
    if behaviour == "quiet":
        ctx.report(message="epoch 2/2")
        return None
    if behaviour == "domain":
        raise InputError("dataset 'd' has no test split")
    if behaviour == "bug":
        raise ZeroDivisionError("division by zero")
    if behaviour == "store":
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    if behaviour == "cancel":
        with session_scope(ctx.db) as session:
            lifecycle.cancel_job(session=session, job_id=ctx.job_id)
        assert ctx.cancelled()
        return "finished anyway"
    raise AssertionError(behaviour)


@pytest.fixture
def probe(restore_kinds: None) -> JobKind:
    calls.clear()
    return register_job_kind(
        JobKind(
            name="probe",
            summary="a kind that only this test knows",
            unit="job",
            task="vicap.test.probe",
            params=ProbeParams,
            run=_probe_run,
        )
    )


def _job(db: Engine, behaviour: str) -> int:
    return jobs.new_job(db, "probe", {"behaviour": behaviour})


def test_success_records_the_returned_message(any_db: Engine, probe: JobKind) -> None:
    job_id = _job(any_db, "ok")
    beats: list[int] = []
    outcome = run_job(
        db=any_db,
        job_id=job_id,
        device="gpu1",
        worker_name="gpu1@host",
        engines="cache",
        heartbeat=lambda: beats.append(1),
    )
    assert outcome == JobOutcome(job_id, "succeeded", message="BLEU-4 0.31", error=None, result="BLEU-4 0.31")
    assert outcome.ok and beats == [1]
    assert calls == [Seen("running", ProbeParams(behaviour="ok"), job_id, "gpu1", "gpu1@host", "cache", False)]
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.progress_message, job.done, job.total, job.device, job.error) == (
        "succeeded",
        "BLEU-4 0.31",
        2,
        2,
        "gpu1",
        None,
    )
    assert job.started_at is not None and job.finished_at is not None
    assert raise_unless_succeeded(outcome) is outcome


def test_a_result_object_gives_its_message_and_none_keeps_the_last_progress(any_db: Engine, probe: JobKind) -> None:
    first, second = _job(any_db, "object"), _job(any_db, "quiet")
    outcome = run_job(db=any_db, job_id=first)
    assert (outcome.status, outcome.message, outcome.result) == ("succeeded", "scored", Report("scored"))
    assert jobs.get_job(any_db, first).progress_message == "scored"
    outcome = run_job(db=any_db, job_id=second)
    assert (outcome.status, outcome.message) == ("succeeded", None)
    assert jobs.get_job(any_db, second).progress_message == "epoch 2/2"
    assert [seen.device for seen in calls] == ["cpu", "cpu"]  # the defaults
    assert [seen.worker_name for seen in calls] == ["in-process", "in-process"]


def test_a_domain_error_fails_the_job_with_its_one_line(any_db: Engine, probe: JobKind) -> None:
    job_id = _job(any_db, "domain")
    outcome = run_job(db=any_db, job_id=job_id)
    assert outcome == JobOutcome(job_id, "failed", error="dataset 'd' has no test split")
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.error) == ("failed", "dataset 'd' has no test split") and job.finished_at is not None
    with pytest.raises(VicapError) as raised:
        raise_unless_succeeded(outcome)
    assert str(raised.value) == "dataset 'd' has no test split"


@pytest.mark.parametrize("in_process", [False, True])
def test_a_bug_fails_the_job_with_type_and_message(any_db: Engine, probe: JobKind, in_process: bool) -> None:
    job_id = _job(any_db, "bug")
    outcome = run_job(db=any_db, job_id=job_id, in_process=in_process)
    assert outcome == JobOutcome(job_id, "failed", error="ZeroDivisionError: division by zero")
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.error) == ("failed", "ZeroDivisionError: division by zero")


def test_a_store_error_propagates_and_leaves_the_job_running(any_db: Engine, probe: JobKind) -> None:
    job_id = _job(any_db, "store")
    with pytest.raises(OperationalError):
        run_job(db=any_db, job_id=job_id)
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.error, job.finished_at) == ("running", None, None)


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_a_finished_job_is_skipped_not_run_again(any_db: Engine, probe: JobKind, status: str) -> None:
    job_id = _job(any_db, "ok")
    jobs.set_job(any_db, job_id, status=status, progress_message="before")
    outcome = run_job(db=any_db, job_id=job_id)
    assert outcome == JobOutcome(job_id, status, skipped=True)
    assert calls == []
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.progress_message, job.started_at) == (status, "before", None)


def test_a_redelivered_running_job_runs_again(any_db: Engine, probe: JobKind) -> None:
    job_id = _job(any_db, "ok")
    with session_scope(any_db) as session:
        lifecycle.start_job(session=session, job_id=job_id, worker="dead@host", device="gpu0")
    started_at = jobs.get_job(any_db, job_id).started_at
    outcome = run_job(db=any_db, job_id=job_id, worker_name="alive@host")
    assert (outcome.status, outcome.skipped, len(calls)) == ("succeeded", False, 1)
    job = jobs.get_job(any_db, job_id)
    assert naive(job.started_at) == naive(started_at)


def test_a_job_cancelled_while_running_stays_cancelled(any_db: Engine, probe: JobKind) -> None:
    job_id = _job(any_db, "cancel")
    outcome = run_job(db=any_db, job_id=job_id)
    assert (outcome.status, outcome.ok, outcome.message) == ("cancelled", False, "finished anyway")
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.progress_message) == ("cancelled", None)
    with pytest.raises(VicapError) as raised:
        raise_unless_succeeded(outcome)
    assert str(raised.value) == f"job {job_id} was cancelled"


def test_params_that_no_longer_validate_fail_the_job_readably(any_db: Engine, probe: JobKind) -> None:
    job_id = _job(any_db, "ok")
    jobs.set_job(any_db, job_id, params={"behaviour": "ok", "retired_option": 3})
    outcome = run_job(db=any_db, job_id=job_id)
    reason = "invalid probe job parameter 'retired_option': Extra inputs are not permitted"
    assert outcome == JobOutcome(job_id, "failed", error=reason)
    assert calls == []
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.error, job.started_at) == ("failed", reason, None)


def test_a_chunk_unit_job_is_not_run_here(any_db: Engine) -> None:
    job_id, _ = jobs.caption_job(any_db, [1], chunk_size=1)
    with pytest.raises(VicapError) as raised:
        run_job(db=any_db, job_id=job_id)
    assert str(raised.value) == f"job {job_id} is a caption job: its chunks are the messages, not the job"
    assert jobs.get_job(any_db, job_id).status == "queued"


def test_raise_unless_succeeded_names_the_status_without_an_error() -> None:
    with pytest.raises(VicapError) as raised:
        raise_unless_succeeded(JobOutcome(7, "failed"))
    assert str(raised.value) == "job 7 failed"


def test_child_jobs_show_in_the_parent_summary(any_db: Engine) -> None:
    parent = jobs.new_job(any_db, "export", {"model": "sweep"})
    first = jobs.new_job(any_db, "export", {"model": "a"}, parent_id=parent)
    second = jobs.new_job(any_db, "export", {"model": "b"}, parent_id=parent, gpu=1)
    jobs.new_job(any_db, "export", {"model": "c"}, parent_id=first)  # a grandchild is its parent's child only
    summary = jobs.job_summary(any_db, parent)
    assert [(c.id, c.parent_id, c.params["model"], c.queue) for c in summary.children] == [
        (first, parent, "a", "vicap"),
        (second, parent, "b", "gpu.1"),
    ]
    assert summary.parent_id is None and jobs.job_summary(any_db, second).children == []
