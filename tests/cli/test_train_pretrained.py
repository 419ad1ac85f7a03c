"""``vicap-jobs train`` for the vision-language families: local folders, --tokenizer, --set, one-line errors.

A tiny random BLIP folder (``save_pretrained``) stands in for a downloaded one; the
train command runs in this process through click's runner, as a user runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from tests.models.hf.tiny_hf import tiny_blip
from vicap_jobs.cli.main import cli
from vicap_jobs.cli.train_cmd import train as train_command
from vicap_jobs.cli.train_options import options_from_cli, parse_setting

DATASET = "tiny-synth"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="vicap-jobs")


def cli_values(**given: Any) -> dict[str, Any]:
    """What click hands options_from_cli when only ``given`` options were typed."""
    names = [p.name for p in train_command.params if p.name]
    values: dict[str, Any] = dict.fromkeys(names)
    values.update(settings=(), name="m", dataset="ds")
    values.update(given)
    return values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lora_r=8", ("lora_r", 8)),
        ("freeze-text=true", ("freeze_text", True)),
        ("lr_scale=1e-4", ("lr_scale", 1e-4)),
        ("lora_targets=q_proj,v_proj", ("lora_targets", ["q_proj", "v_proj"])),
        ('lora_targets=["q_proj"]', ("lora_targets", ["q_proj"])),
        ("mapping_type=transformer", ("mapping_type", "transformer")),
    ],
)
def test_set_values_are_json_then_lists_then_text(text: str, expected: tuple[str, Any]) -> None:
    assert parse_setting(text) == expected


@pytest.mark.parametrize("text", ["no-equals", "=3", "9x=1"])
def test_malformed_set_is_a_usage_error(text: str) -> None:
    with pytest.raises(click.BadParameter, match="key=value"):
        parse_setting(text)


def test_vision_language_options_become_train_options(tmp_path: Path) -> None:
    folder = tmp_path / "blip"
    _, family, _, options = options_from_cli(
        cli_values(family="blip", base_model=folder, settings=("freeze_vision=true",), tokenizer="train", epochs=2)
    )
    assert family == "blip"
    assert options["base_model"] == str(folder.resolve()) and options["tokenizer"] == "train"
    assert options["config_overrides"] == {"freeze_vision": True} and options["epochs"] == 2
    assert "backbone" not in options and "image_size" not in options
    _, _, _, frozen = options_from_cli(cli_values(family="blip", base_model=folder, finetune_backbone=False))
    assert frozen["config_overrides"] == {"freeze_vision": True}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"family": "blip"}, "model family blip takes --base-model DIR"),
        ({"family": "blip", "base_model": Path("b"), "vision_model": Path("v")}, "takes --base-model DIR"),
        ({"family": "blip", "base_model": Path("b"), "backbone": "tiny"}, "--backbone is not for the vision-language"),
        ({"family": "blip", "base_model": Path("b"), "weights": "random"}, "--pretrained/--random-init is not for"),
        ({"family": "cnn-lstm", "base_model": Path("b")}, "--base-model is not for the backbone family cnn-lstm"),
        ({"family": "cnn-lstm", "settings": ("a=1",)}, "--set is not for the backbone family"),
    ],
)
def test_options_of_the_other_kind_of_family_are_refused(given: dict[str, Any], message: str) -> None:
    with pytest.raises(click.UsageError, match=message):
        options_from_cli(cli_values(**given))


@pytest.fixture
def synth_dataset(vicap_env: Path) -> str:
    result = invoke("dataset", "synth", DATASET, "--images", "40", "--size", "32", "--seed", "0")
    assert result.exit_code == 0, result.output
    return DATASET


def test_train_blip_from_a_local_folder_registers_the_model(synth_dataset: str, tmp_path: Path) -> None:
    folder = tiny_blip(tmp_path / "blip-base")
    result = invoke(
        "train", "tiny-blip", "--family", "blip", "--base-model", str(folder), "--dataset", synth_dataset,
        "--epochs", "2", "--tokenizer-vocab-size", "300", "--set", "freeze_vision=true", "--batch-size", "16",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "blip / blip-base on tiny-synth" in result.output and "model 'tiny-blip' registered" in result.output
    shown = invoke("models", "show", "tiny-blip")
    assert shown.exit_code == 0, shown.output
    assert "blip-base" in shown.output and '"freeze_vision": true' in shown.output


def test_a_missing_folder_is_refused_before_queueing(synth_dataset: str, tmp_path: Path) -> None:
    result = invoke("submit", "train", "m", "--family", "blip", "--base-model", str(tmp_path / "nope"),
                    "--dataset", synth_dataset)  # fmt: skip
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and "nope does not exist" in line and "Salesforce/blip-image-captioning-base" in line
    jobs = invoke("jobs", "list")
    assert "train" not in jobs.output  # nothing queued


def test_an_unknown_family_option_is_refused_before_queueing(synth_dataset: str, tmp_path: Path) -> None:
    folder = tiny_blip(tmp_path / "blip-base")
    result = invoke("submit", "train", "m", "--family", "blip", "--base-model", str(folder),
                    "--dataset", synth_dataset, "--set", "lora_r=4")  # fmt: skip
    assert result.exit_code == 1
    assert "unknown BlipCaptionConfig fields ['lora_r']" in result.output


def test_vision_language_jobs_stop_after_two_bad_epochs_unless_told(synth_dataset: str, tmp_path: Path) -> None:
    from vicap_jobs.cli.common import open_store
    from vicap_jobs.db.session import session_scope
    from vicap_jobs.jobs.lifecycle import get_job
    from vicap_jobs.services.training import create_train_job

    folder = str(tiny_blip(tmp_path / "blip-base"))
    _, db = open_store()
    default = create_train_job(db=db, name="a", family="blip", dataset=synth_dataset, options={"base_model": folder})
    given = create_train_job(
        db=db, name="b", family="blip", dataset=synth_dataset, options={"base_model": folder, "patience": 5}
    )
    lstm = create_train_job(db=db, name="c", family="cnn-lstm", dataset=synth_dataset, options={})
    with session_scope(db) as session:
        patience = [get_job(session=session, job_id=j).params["options"]["patience"] for j in (default, given, lstm)]
    assert patience == [2, 5, 3]


def test_a_tokenizer_folder_is_made_absolute_and_checked_before_queueing(
    synth_dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "blip-base"
    _, _, _, options = options_from_cli(cli_values(family="blip", base_model=folder, tokenizer="tok"))
    monkeypatch.chdir(tmp_path)
    _, _, _, options = options_from_cli(cli_values(family="blip", base_model=folder, tokenizer="tok"))
    assert options["tokenizer"] == str(tmp_path / "tok")
    tiny_blip(folder)
    result = invoke("submit", "train", "m", "--family", "blip", "--base-model", str(folder),
                    "--dataset", synth_dataset, "--tokenizer", str(tmp_path / "missing-tok"))  # fmt: skip
    assert (
        result.exit_code == 1 and "tokenizer folder" in result.output and "missing-tok does not exist" in result.output
    )
    assert "train" not in invoke("jobs", "list").output


def test_the_models_row_records_what_a_vision_language_trainer_read(synth_dataset: str, tmp_path: Path) -> None:
    folder = tiny_blip(tmp_path / "blip-base")
    result = invoke(
        "train", "vl", "--family", "blip", "--base-model", str(folder), "--dataset", synth_dataset,
        "--epochs", "1", "--tokenizer-vocab-size", "300",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    from vicap_jobs.cli.common import open_store
    from vicap_jobs.services.models import resolve_model

    _, db = open_store()
    recorded = resolve_model(db=db, name="vl").hyperparameters
    assert recorded["base_model"] == str(folder.resolve()) and recorded["patience"] == 2
    assert not {"backbone", "image_size", "embed_dim", "progress_bar"} & set(recorded)


def test_a_gpu_train_job_is_queued_from_a_machine_without_a_gpu(synth_dataset: str) -> None:
    """The worker pinned to the GPU checks CUDA; the submitting machine only checks the device's spelling."""
    import torch

    from vicap_jobs.cli.common import open_store
    from vicap_jobs.errors import InputError
    from vicap_jobs.services.training import create_train_job

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _, db = open_store()
    job_id = create_train_job(
        db=db, name="g", family="cnn-lstm", dataset=synth_dataset, options={"device": "cuda"}, gpu=0
    )
    assert job_id > 0
    with pytest.raises(InputError, match="device"):
        create_train_job(db=db, name="h", family="cnn-lstm", dataset=synth_dataset, options={"device": "tpu"})
