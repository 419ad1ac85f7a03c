"""The job-kind table (``vicap_jobs.jobs.kinds``) and the queue names (``vicap_jobs.jobs.queues``)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, model_validator

from vicap_jobs.errors import InputError, UnknownNameError
from vicap_jobs.jobs import kinds
from vicap_jobs.jobs.kinds import JobKind, get_job_kind, job_kind_names, job_kinds, kinds_with_unit, register_job_kind
from vicap_jobs.jobs.params import CaptionParams, ExportParams, JobParams, TrainParams
from vicap_jobs.jobs.queues import device_label, gpu_queue, queue_for_gpu


class Inner(BaseModel):
    size: int


class ProbeParams(JobParams):
    inner: Inner
    low: int = 0
    high: int = 1

    @model_validator(mode="after")
    def _ordered(self) -> ProbeParams:
        if self.low > self.high:
            raise ValueError("low above high")
        return self


def _probe(name: str = "probe", task: str = "vicap.test.probe", **values: object) -> JobKind:
    values = {"summary": "a test kind", "unit": "job", "params": ProbeParams, "run": _run, **values}
    return JobKind(name=name, task=task, **values)  # type: ignore[arg-type]


def _run(ctx: object) -> str:
    return "ran"


def test_the_built_in_kinds() -> None:
    assert job_kind_names() == ["caption", "evaluate", "export", "sweep", "sweep-train", "train"]
    assert [kind.name for kind in job_kinds()] == ["caption", "evaluate", "export", "sweep", "sweep-train", "train"]
    assert kinds_with_unit("chunk") == ("caption", "sweep")  # a sweep: no message of its own, no chunks
    assert kinds_with_unit("job") == ("evaluate", "export", "sweep-train", "train")
    caption = get_job_kind("caption")
    assert (caption.unit, caption.task, caption.params, caption.retry, caption.queue) == (
        "chunk",
        "vicap.caption_chunk",
        CaptionParams,
        "images",
        None,
    )
    assert [get_job_kind(name).retry for name in ("evaluate", "export", "train")] == ["images", "none", "none"]


def test_an_unknown_kind_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as raised:
        get_job_kind("grid")
    assert str(raised.value) == (
        "unknown job kind 'grid'; choose one of: caption, evaluate, export, sweep, sweep-train, train"
    )


def test_the_built_in_run_functions_resolve() -> None:
    from vicap_jobs.pipeline.runner import run_chunk

    assert get_job_kind("caption").run_function() is run_chunk
    assert callable(get_job_kind("export").run_function())


def test_parse_validates_a_mapping_and_passes_its_own_params_through() -> None:
    export = get_job_kind("export")
    parsed = export.parse({"model": "m", "quantize": "int8"})
    assert parsed == ExportParams(model="m", quantize="int8")
    assert export.parse(parsed) is parsed
    # another kind's params object is re-validated as this kind's
    assert export.parse(ExportParams(model="x")) == ExportParams(model="x")
    train = TrainParams(name="m", family="f", dataset="d", options={})
    with pytest.raises(InputError) as raised:
        export.parse(train)
    assert str(raised.value) == "invalid export job parameter 'model': Field required"


def test_parse_errors_are_one_line_naming_the_parameter() -> None:
    probe = _probe()
    with pytest.raises(InputError) as raised:
        probe.parse({"inner": {"size": "big"}})
    assert str(raised.value) == (
        "invalid probe job parameter 'inner.size': Input should be a valid integer, unable to parse string as an integer"
    )
    with pytest.raises(InputError) as raised:
        probe.parse({"inner": {"size": 1}, "low": 3, "high": 2})
    assert str(raised.value) == "invalid probe job parameter 'params': Value error, low above high"
    with pytest.raises(InputError) as raised:
        probe.parse({})
    assert str(raised.value) == "invalid probe job parameter 'inner': Field required"
    assert "\n" not in str(raised.value)


def test_run_function_takes_a_callable_or_imports_module_colon_function() -> None:
    assert _probe().run_function() is _run
    assert _probe(run="vicap_jobs.jobs.queues:queue_for_gpu").run_function() is queue_for_gpu


def test_register_a_kind_once(restore_kinds: None) -> None:
    probe = _probe()
    assert register_job_kind(probe) is probe
    assert register_job_kind(_probe()) == probe  # the same kind again is fine (a plugin imported twice)
    assert get_job_kind("probe") == probe
    assert job_kind_names() == ["caption", "evaluate", "export", "probe", "sweep", "sweep-train", "train"]
    assert kinds_with_unit("job") == ("evaluate", "export", "probe", "sweep-train", "train")
    with pytest.raises(InputError) as raised:
        register_job_kind(_probe(summary="something else"))
    assert str(raised.value) == "job kind 'probe' is already registered"
    with pytest.raises(InputError) as raised:
        register_job_kind(_probe(name="other", task="vicap.train"))
    assert str(raised.value) == "task name 'vicap.train' of job kind 'other' is already used by another kind"
    assert "other" not in kinds._KINDS and get_job_kind("probe") == probe


def test_queue_names() -> None:
    assert (gpu_queue(0), gpu_queue(3)) == ("gpu.0", "gpu.3")
    with pytest.raises(InputError) as raised:
        gpu_queue(-1)
    assert str(raised.value) == "a GPU index is 0, 1, ...; got -1"
    assert (queue_for_gpu(None), queue_for_gpu(0), queue_for_gpu(2)) == ("vicap", "gpu.0", "gpu.2")
    assert (device_label(None), device_label(0), device_label(1)) == ("cpu", "gpu0", "gpu1")
