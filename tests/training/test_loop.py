"""The family-agnostic loop: a second family's trainer reuses schedule, early stopping, best swap and progress."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from tqdm.auto import tqdm

from vicap_jobs.data.vocab import Vocabulary
from vicap_jobs.errors import InputError
from vicap_jobs.metrics.scores import CaptionScores
from vicap_jobs.models.manifest import FORMAT_VERSION, read_manifest, write_manifest
from vicap_jobs.training.loop import (
    FINAL_LR_FRACTION,
    Schedule,
    check_out_dir,
    config_from_options,
    lr_factor,
    optimizer_step,
    run_epochs,
    save_best,
)
from vicap_jobs.training.options import TrainOptions, TrainProgress


class ScriptedTrainer:
    """A trainer of no real family: one parameter, scripted validation numbers, a minimal checkpoint."""

    def __init__(self, val_losses: list[float], options: TrainOptions) -> None:
        self.model = torch.nn.Linear(1, 1)
        self.codec = Vocabulary.build([["a", "b"]], tokenization="syllable")
        self.steps_per_epoch, self.n_train, self.n_val = 2, 10, 3
        self.val_losses, self.options, self.saved_weights = list(val_losses), options, []

    def train_epoch(self, optimizer: torch.optim.Optimizer, schedule: Schedule, bar: tqdm) -> float:
        for _ in range(self.steps_per_epoch):
            loss = (self.model(torch.ones(1, 1)) - 3.0).pow(2).sum()
            optimizer_step(loss, model=self.model, optimizer=optimizer, schedule=schedule, options=self.options)
            bar.update(1)
        return loss.item()

    def evaluate(self) -> tuple[float, CaptionScores]:
        loss = self.val_losses.pop(0)
        return loss, CaptionScores(1.0, 1.0, 1.0, 1.0 / loss, 0.5 / loss, n_images=3, tokenization="syllable")

    def save(self, out_dir: Path, meta: dict[str, Any]) -> None:
        out_dir.mkdir(parents=True)
        self.codec.save_codec(out_dir)
        self.saved_weights.append(self.model.weight.item())
        manifest = {"format_version": FORMAT_VERSION, "family": "scripted", "config": {}, "meta": meta}
        write_manifest(out_dir, {**manifest, "weight": self.model.weight.item()})


def options(**changes: Any) -> TrainOptions:
    return dataclasses.replace(
        TrainOptions(epochs=6, patience=2, warmup_steps=0, lr=0.1, progress_bar=False), **changes
    )


def test_a_second_trainer_gets_early_stopping_best_checkpoint_and_progress(tmp_path: Path) -> None:
    trainer = ScriptedTrainer([3.0, 2.0, 2.5, 2.6, 1.0, 0.5], options())
    seen: list[TrainProgress] = []
    result = run_epochs(
        trainer,
        family="scripted",
        options=options(),
        out_dir=tmp_path / "ckpt",
        dataset_key="d",
        started=0.0,
        on_progress=seen.append,
    )
    assert [p.epoch for p in seen] == [1, 2, 3, 4] and [p.improved for p in seen] == [True, True, False, False]
    assert result.best_epoch == 2 and result.stopped_early and result.history == seen
    assert (result.codec_kind, result.codec_file) == ("vocab", tmp_path / "ckpt" / "vocab.json")
    assert result.vocab_size == len(trainer.codec) and seen[-1].step == 8 and seen[-1].steps == 12
    manifest = read_manifest(tmp_path / "ckpt")
    assert manifest["weight"] == trainer.saved_weights[1]  # epoch 2's weights, saved again with the full story
    assert manifest["weight"] == trainer.saved_weights[-1] and manifest["meta"]["epochs_run"] == 4
    assert manifest["meta"]["stopped_early"] and manifest["meta"]["best_epoch"] == 2
    assert result.val_rouge_l == manifest["meta"]["val_rouge_l"] == 0.25  # the best epoch's ROUGE-L (0.5 / 2.0)
    assert [h["val_rouge_l"] for h in manifest["meta"]["history"]] == [0.5 / loss for loss in (3.0, 2.0, 2.5, 2.6)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_lr_schedule_warms_up_holds_and_decays() -> None:
    wsd = options(warmup_steps=10, decay_fraction=0.3, lr_schedule="wsd")
    factors = [lr_factor(step, 100, wsd) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[69] == 1.0
    assert factors[70:] == sorted(factors[70:], reverse=True) and FINAL_LR_FRACTION < factors[-1] < 0.06
    assert lr_factor(100, 100, wsd) == pytest.approx(FINAL_LR_FRACTION)
    assert lr_factor(99, 100, options(warmup_steps=10, lr_schedule="constant")) == 1.0
    assert lr_factor(0, 20, options(warmup_steps=50)) == pytest.approx(0.5)  # warm-up capped at a tenth of the steps


def test_save_best_swaps_whole_folders(tmp_path: Path) -> None:
    out = tmp_path / "best"
    save_best(out, lambda folder: (folder.mkdir(), (folder / "x").write_text("1")))
    assert (out / "x").read_text() == "1"

    def crash(folder: Path) -> None:
        folder.mkdir()
        (folder / "x").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_best(out, crash)
    assert (out / "x").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_config_from_options_fills_only_fields_the_config_has() -> None:
    @dataclasses.dataclass
    class ViTConfig:
        vocab_size: int = 0
        hidden_dim: int = 768
        image_size: int = 224

    config = config_from_options(ViTConfig, options(hidden_dim=64), vocab_size=9, backbone="tiny")
    assert config == ViTConfig(vocab_size=9, hidden_dim=768, image_size=224)  # LSTM dims are not the loop's
    config = config_from_options(ViTConfig, options(config_overrides={"hidden_dim": 384}), vocab_size=9)
    assert config == ViTConfig(vocab_size=9, hidden_dim=384)
    with pytest.raises(InputError, match=r"unknown ViTConfig fields \['n_heads'\]"):
        config_from_options(ViTConfig, options(config_overrides={"n_heads": 4}))


def test_out_dir_may_hold_a_checkpoint_of_either_layout(tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors", "vocab.json", "hf", "adapter"):
        (tmp_path / name).mkdir()
    check_out_dir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt"):
        check_out_dir(tmp_path)


@dataclasses.dataclass
class _Settings:
    freeze: bool = False
    rank: int = 16
    dropout: float = 0.05
    name: str = "mlp"
    targets: tuple[str, ...] = ("q_proj",)
    optional_rank: int | None = None


@pytest.mark.parametrize(
    ("field", "given", "expected"),
    [
        ("freeze", "False", False),
        ("freeze", "yes", True),
        ("freeze", True, True),
        ("rank", "8", 8),
        ("rank", 4, 4),
        ("dropout", 0, 0.0),
        ("dropout", "0.1", 0.1),
        ("name", "transformer", "transformer"),
        ("targets", "q_proj, v_proj", ("q_proj", "v_proj")),
        ("targets", ["k_proj"], ("k_proj",)),
        ("optional_rank", 3, 3),
    ],
)
def test_config_overrides_take_the_field_type(field: str, given: Any, expected: Any) -> None:
    config = config_from_options(_Settings, options(config_overrides={field: given}))
    value = getattr(config, field)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("field", "given", "message"),
    [
        ("freeze", "maybe", "_Settings.freeze must be true or false, got 'maybe'"),
        ("rank", 2.5, "must be an integer"),
        ("dropout", "lots", "must be a number"),
        ("name", 3, "must be text"),
        ("targets", [1, 2], "must be a list of names"),
        ("nope", 1, "unknown _Settings fields \\['nope'\\]"),
    ],
)
def test_bad_config_overrides_are_one_line(field: str, given: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        config_from_options(_Settings, options(config_overrides={field: given}))
