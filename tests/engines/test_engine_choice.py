"""The measured default engine: int8 when at least as fast and agreeing, torch otherwise; cached per machine.

Timings come through the ``timer`` seam (a fake clock per engine), never from the
wall clock; tokens are the engines' real ones on the trained tiny BLIP.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vicap_jobs.cli.main import cli
from vicap_jobs.engines import ModelArtifacts, choice, load_engine
from vicap_jobs.engines.choice import CHOICE_DIR, MIN_AGREEMENT, EngineChoice, choose_engine
from vicap_jobs.errors import InputError, NotFoundError
from vicap_jobs.models.registry import FamilySpec
from vicap_jobs.services.models import ModelRef, register_model, resolve_engine_name
from vicap_jobs.settings import get_settings


def fake_timer(**seconds: float) -> Callable[[Any, Any], float]:
    return lambda engine, pixels: seconds[engine.name]


def no_timer(engine: Any, pixels: Any) -> float:
    raise AssertionError("measured again instead of reading the cached choice")


def choice_files() -> list[Path]:
    return sorted((get_settings().cache_dir / CHOICE_DIR).glob("*.json"))


def model_ref(artifacts: ModelArtifacts, family: str = "blip", onnx_path: str | None = None) -> ModelRef:
    return ModelRef(
        id=1,
        name="m",
        family=family,
        backbone=None,
        artifact_dir=str(artifacts.checkpoint_dir),
        onnx_path=onnx_path,
        onnx_quantized=False,
        hyperparameters={},
        tokenization=None,
        image_size=32,
        dataset_id=None,
        created_at=datetime(2026, 1, 1),
        exported_at=None,
    )


def test_int8_is_chosen_when_faster_and_agreeing(vicap_env: Path, blip_trained: ModelArtifacts) -> None:
    chosen = choose_engine(blip_trained, timer=fake_timer(torch=2.0, int8=1.0))
    assert chosen.engine == "int8" and chosen.default == "torch" and chosen.candidate == "int8"
    assert chosen.seconds == {"torch": 2.0, "int8": 1.0} and chosen.agreement == 1.0
    assert chosen.int8_path == "torchao int8 dynamic activation + int8 weight, CPU"
    assert chosen.reason == f"int8 ({chosen.int8_path}): 2.00x fp32 on this machine, 100% same tokens"
    (stored,) = choice_files()
    data = json.loads(stored.read_text(encoding="utf-8"))
    assert data["engine"] == "int8" and data["weights"] == chosen.weights and data["signature"]["device"] == "cpu"


def test_equal_speed_is_enough(vicap_env: Path, blip_trained: ModelArtifacts) -> None:
    assert choose_engine(blip_trained, timer=fake_timer(torch=1.0, int8=1.0)).engine == "int8"


def test_torch_stays_when_int8_is_slower(vicap_env: Path, blip_trained: ModelArtifacts) -> None:
    chosen = choose_engine(blip_trained, timer=fake_timer(torch=1.0, int8=1.25))
    assert chosen.engine == "torch"
    assert chosen.reason == f"torch: int8 ({chosen.int8_path}) was 0.80x fp32 here"


def test_torch_stays_when_int8_changes_the_captions(vicap_env: Path, blip_trained: ModelArtifacts) -> None:
    def load(name: str, artifacts: ModelArtifacts, **kwargs: Any) -> Any:
        engine = load_engine(name, artifacts, **kwargs)
        if name == "int8":
            forward = engine._forward
            engine._forward = lambda pixels: [[*ids, 5] for ids in forward(pixels)]  # a broken path
        return engine

    chosen = choose_engine(blip_trained, timer=fake_timer(torch=2.0, int8=1.0), load=load)
    assert chosen.engine == "torch" and chosen.agreement == 0.0
    assert f"same tokens on only 0% of images (< {MIN_AGREEMENT:.0%})" in chosen.reason


def test_a_failing_candidate_leaves_torch_with_the_reason(vicap_env: Path, blip_trained: ModelArtifacts) -> None:
    def load(name: str, artifacts: ModelArtifacts, **kwargs: Any) -> Any:
        if name == "int8":
            raise InputError("no int8 kernels here")
        return load_engine(name, artifacts, **kwargs)

    chosen = choose_engine(blip_trained, timer=fake_timer(torch=1.0), load=load)
    assert (chosen.engine, chosen.reason) == ("torch", "torch: int8 failed here (no int8 kernels here)")
    assert chosen.failed and choice_files() == []  # not cached: a passing failure (OOM, broken install) is retried
    assert choose_engine(blip_trained, timer=fake_timer(torch=2.0, int8=1.0)).engine == "int8"


def test_the_choice_is_cached_per_weights_and_machine(
    vicap_env: Path, blip_trained: ModelArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = choose_engine(blip_trained, timer=fake_timer(torch=2.0, int8=1.0))
    again = choose_engine(blip_trained, timer=no_timer)
    assert not first.cached and again.cached and again.to_json() == first.to_json()

    monkeypatch.setattr(choice, "cpu_model", lambda: "Some Other CPU")  # another machine measures for itself
    other = choose_engine(blip_trained, timer=fake_timer(torch=1.0, int8=3.0))
    assert other.engine == "torch" and not other.cached and other.signature["cpu"] == "Some Other CPU"
    assert choose_engine(blip_trained, threads=1, timer=fake_timer(torch=2.0, int8=1.0)).signature["threads"] == "1"
    monkeypatch.undo()

    monkeypatch.setattr(choice, "weights_identity", lambda path: "f" * 64)  # new weights: measured again
    retrained = choose_engine(blip_trained, timer=fake_timer(torch=1.0, int8=2.0))
    assert retrained.engine == "torch" and retrained.weights == "f" * 64
    assert len(choice_files()) == 4
    assert not list((get_settings().cache_dir / CHOICE_DIR).glob("*.tmp"))  # written atomically
    assert all(file.stat().st_mode & 0o044 == 0o044 for file in choice_files())  # other users' workers read them
    assert first.signature["torchao"] != "none" and "transformers" in first.signature


def test_a_cached_engine_the_family_lacks_is_measured_again(vicap_env: Path, blip_trained: ModelArtifacts) -> None:
    choose_engine(blip_trained, timer=fake_timer(torch=2.0, int8=1.0))
    (stored,) = choice_files()
    stored.write_text(stored.read_text(encoding="utf-8").replace('"engine": "int8"', '"engine": "bogus"'), "utf-8")
    assert choose_engine(blip_trained, timer=fake_timer(torch=1.0, int8=2.0)).engine == "torch"


def test_the_weights_identity_follows_a_resave_without_reading_the_bytes(blip_trained: ModelArtifacts) -> None:
    import os

    from vicap_jobs.models.manifest import read_manifest, weight_files

    before = choice.weights_identity(blip_trained.checkpoint_dir)
    assert before == choice.weights_identity(blip_trained.checkpoint_dir)
    first = weight_files(blip_trained.checkpoint_dir, read_manifest(blip_trained.checkpoint_dir))[0]
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    try:
        assert choice.weights_identity(blip_trained.checkpoint_dir) != before
    finally:
        os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_corrupt_cache_file_is_measured_again(vicap_env: Path, blip_trained: ModelArtifacts) -> None:
    choose_engine(blip_trained, timer=fake_timer(torch=2.0, int8=1.0))
    (stored,) = choice_files()
    stored.write_text("{not json", encoding="utf-8")
    assert choose_engine(blip_trained, timer=fake_timer(torch=1.0, int8=2.0)).engine == "torch"


def test_a_device_that_is_not_here_is_not_measured_nor_cached(
    vicap_env: Path, blip_trained: ModelArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    chosen = choose_engine(blip_trained, device="cuda:1", timer=no_timer)
    assert chosen.engine == "torch" and chosen.reason.startswith("torch: not measured on cuda:1 here (")
    assert choice_files() == []


def test_a_family_that_prefers_nothing_is_not_measured(blip_trained: ModelArtifacts) -> None:
    spec = FamilySpec("x", "m", "d", {"onnx": "a:B", "torch": "a:C"})
    assert choose_engine(blip_trained, spec, timer=no_timer) == EngineChoice(
        "onnx", "onnx: the family's default", "onnx"
    )
    with pytest.raises(InputError, match="prefers \\['onnx'\\], which are not its other engines"):
        FamilySpec("x", "m", "d", {"onnx": "a:B", "torch": "a:C"}, prefer=("onnx",))
    with pytest.raises(InputError, match="prefers \\['int8'\\]"):
        FamilySpec("x", "m", "d", {"torch": "a:C"}, prefer=("int8",))


def test_resolve_engine_name_measures_only_without_a_request(
    vicap_env: Path, blip_trained: ModelArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(choice, "time_forward", no_timer)
    blip = model_ref(blip_trained)
    assert resolve_engine_name(blip, "torch") == "torch"  # an explicit engine always wins, unmeasured
    assert resolve_engine_name(blip, "int8") == "int8"
    monkeypatch.setattr(choice, "time_forward", fake_timer(torch=3.0, int8=1.0))
    assert resolve_engine_name(blip, None) == "int8"
    monkeypatch.setattr(choice, "time_forward", no_timer)
    assert resolve_engine_name(blip, None) == "int8"  # cached
    lstm = model_ref(ModelArtifacts(Path("/nowhere")), family="cnn-lstm")
    with pytest.raises(NotFoundError, match="nowhere"):  # measured too (tests/engines/test_cnn_engine_choice.py)
        resolve_engine_name(lstm, None)
    with pytest.raises(InputError, match="has no ONNX export yet"):
        resolve_engine_name(lstm, "openvino")
    with pytest.raises(InputError, match="runs the int8 export, which model 'm' has not"):
        resolve_engine_name(model_ref(ModelArtifacts(Path("/nowhere")), "cnn-lstm", "/x/onnx"), "onnx-int8")


def test_models_show_prints_the_default_engine_and_why(
    vicap_env: Path, blip_trained: ModelArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vicap_jobs.cli.common import open_store

    _, db = open_store()
    register_model(
        db=db,
        name="tiny-blip",
        family="blip",
        backbone=None,
        artifact_dir=str(blip_trained.checkpoint_dir),
        hyperparameters={},
        vocabulary=None,
        tokenization=None,
        image_size=32,
        dataset_id=None,
        trained_by_job_id=None,
    )
    monkeypatch.setattr(choice, "time_forward", fake_timer(torch=1.0, int8=2.0))
    result = CliRunner().invoke(cli, ["models", "show", "tiny-blip"], prog_name="vicap-jobs", terminal_width=250)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("default engine" in line and "torch" in line for line in lines), result.output
    assert any(
        "torch: int8 (torchao int8 dynamic activation + int8 weight, CPU) was 0.50x fp32 here" in line for line in lines
    )
    assert any("int8 path" in line and "torchao int8 dynamic" in line for line in lines)

    families = CliRunner().invoke(cli, ["models", "families"], prog_name="vicap-jobs", terminal_width=250)
    assert families.exit_code == 0, families.output
    assert "torch (default), int8 (preferred when faster here)" in families.output
    assert "onnx (default), torch, torch-bf16 (preferred when faster here), onnx-int8 (preferred" in families.output


def test_models_show_survives_a_missing_checkpoint(vicap_env: Path, tmp_path: Path) -> None:
    from vicap_jobs.cli.common import open_store

    _, db = open_store()
    register_model(
        db=db,
        name="gone",
        family="blip",
        backbone=None,
        artifact_dir=str(tmp_path / "deleted"),
        hyperparameters={},
        vocabulary=None,
        tokenization=None,
        image_size=32,
        dataset_id=None,
        trained_by_job_id=None,
    )
    result = CliRunner().invoke(cli, ["models", "show", "gone"], prog_name="vicap-jobs", terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "unknown: checkpoint folder" in result.output and "does not exist" in result.output


def test_jobs_leave_a_measured_default_to_the_worker_that_runs_them(
    vicap_env: Path, blip_trained: ModelArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submitting measures nothing (the submitting machine is not the worker); the worker's EngineCache does, once."""
    from vicap_jobs.cli.common import open_store
    from vicap_jobs.services.model_engines import EngineCache
    from vicap_jobs.services.models import engine_for_job, model_by_id

    _, db = open_store()
    model_id = register_model(
        db=db, name="tiny-blip", family="blip", backbone=None, artifact_dir=str(blip_trained.checkpoint_dir),
        hyperparameters={}, vocabulary=None, tokenization=None, image_size=32, dataset_id=None,
        trained_by_job_id=None,
    )  # fmt: skip
    monkeypatch.setattr(choice, "time_forward", no_timer)
    blip = model_by_id(db=db, model_id=model_id)
    assert engine_for_job(blip, None) is None  # nothing measured at submit
    assert engine_for_job(blip, "torch") == "torch"
    lstm = model_ref(ModelArtifacts(Path("/nowhere")), family="cnn-lstm")
    assert engine_for_job(lstm, None) is None  # CNN+LSTM defaults are measured by the worker too
    assert engine_for_job(lstm, "torch-bf16") == "torch-bf16"  # a request is resolved at once

    monkeypatch.setattr(choice, "time_forward", fake_timer(torch=3.0, int8=1.0))
    engines = EngineCache(db=db, device="cpu", threads=1)
    assert engines.get(model_id, None).name == "int8"  # measured on this worker
    monkeypatch.setattr(choice, "time_forward", no_timer)
    assert engines.get(model_id, None) is engines.get(model_id, "int8")  # resolved once, one loaded engine
