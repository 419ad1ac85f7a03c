"""train_lstm (the CNN+LSTM families' FamilySpec.train) on a tiny colour set.

Checkpoint, learning, determinism, early stopping, the feature cache, bad input.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.errors import InputError, UnknownNameError, VicapError
from vicap_jobs.models.checkpoint import load_checkpoint
from vicap_jobs.models.registry import get_family
from vicap_jobs.training import lstm as lstm_module
from vicap_jobs.training.lstm import train_lstm
from vicap_jobs.training.options import TrainOptions, TrainProgress

Splits = tuple[list[CaptionSample], list[CaptionSample]]


def tiny_options(**changes: object) -> TrainOptions:
    """A seconds-long run: tiny backbone at 32 px, small LSTM."""
    options = TrainOptions(
        epochs=2,
        lr=5e-3,
        batch_size=8,
        patience=5,
        seed=3,
        image_size=32,
        backbone="tiny",
        backbone_weights="random",
        finetune_backbone=True,
        embed_dim=16,
        hidden_dim=32,
        attention_dim=16,
        dropout=0.0,
        decode_max_len=8,
        progress_bar=False,
    )
    return dataclasses.replace(options, **changes)


def run(tmp_path: Path, splits: Splits, name: str = "ckpt", family: str = "cnn-lstm", **changes: object):
    train, val = splits
    return train_lstm(
        family=family,
        options=tiny_options(**changes),
        train=train,
        val=val,
        out_dir=tmp_path / name,
        cache_dir=tmp_path / "cache",
        dataset_key="colours",
    )


@pytest.mark.parametrize("family", ["cnn-lstm", "cnn-lstm-attn"])
def test_tiny_run_learns_and_leaves_a_loadable_checkpoint(tmp_path: Path, colour_set: Splits, family: str) -> None:
    seen: list[TrainProgress] = []
    train, val = colour_set
    result = get_family(family).train(  # what services.training calls
        options=tiny_options(epochs=3),
        train=train,
        val=val,
        out_dir=tmp_path / "ckpt",
        cache_dir=tmp_path / "cache",
        dataset_key="colours",
        on_progress=seen.append,
    )
    assert [p.epoch for p in seen] == [1, 2, 3] and seen[-1].step == seen[-1].steps == 3 * 64 // 8  # 64 captions
    assert seen[-1].train_loss < seen[0].train_loss
    assert seen[-1].val_loss < seen[0].val_loss
    assert result.history == seen and 1 <= result.best_epoch <= 3

    loaded = load_checkpoint(result.out_dir)
    assert len(loaded.codec) == result.vocab_size
    assert (result.codec_kind, result.codec_file) == ("vocab", result.out_dir / "vocab.json")
    assert result.codec_file.is_file()
    assert not loaded.model.training
    meta = json.dumps(loaded.manifest)
    assert "colours" in meta and "best_epoch" in meta
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folders left (fine-tuning: no cache)


def test_same_seed_same_weights(tmp_path: Path, colour_set: Splits) -> None:
    one = load_file(
        str(run(tmp_path, colour_set, "a", family="cnn-lstm-attn", dropout=0.3).out_dir / "model.safetensors")
    )
    two = load_file(
        str(run(tmp_path, colour_set, "b", family="cnn-lstm-attn", dropout=0.3).out_dir / "model.safetensors")
    )
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    other = load_file(
        str(run(tmp_path, colour_set, "c", family="cnn-lstm-attn", dropout=0.3, seed=4).out_dir / "model.safetensors")
    )
    assert not all(torch.equal(one[k], other[k]) for k in one)


def test_early_stopping_after_patience_epochs(tmp_path: Path, colour_set: Splits) -> None:
    # lr≈0 and a frozen backbone: the greedy captions never change, so val BLEU-4 never improves
    # after the first epoch; `patience` epochs without improvement then end the run.
    result = run(
        tmp_path, colour_set, epochs=20, patience=2, lr=1e-12, early_stop_on="val_bleu4", finetune_backbone=False
    )
    assert result.best_epoch == 1
    assert len(result.history) == 3 and result.stopped_early
    meta = json.loads((result.out_dir / "config.json").read_text())
    assert "stopped_early" in json.dumps(meta) and '"epochs_run": 3' in json.dumps(meta)


def test_no_early_stop_while_improving(tmp_path: Path, colour_set: Splits) -> None:
    result = run(tmp_path, colour_set, epochs=3, patience=1, early_stop_on="val_loss")
    assert len(result.history) == 3 and not result.stopped_early
    assert result.best_epoch == 3


def test_vocabulary_comes_from_train_only(tmp_path: Path, colour_set: Splits) -> None:
    train, val = colour_set
    val = [dataclasses.replace(s, captions=(*s.captions, "con ngựa vằn")) for s in val]
    result = run(tmp_path, (train, val), epochs=1)
    vocab = load_checkpoint(result.out_dir).codec
    assert "màu" in vocab and "ngựa" not in vocab and "vằn" not in vocab


def test_frozen_backbone_features_are_cached_and_shared_by_families(
    tmp_path: Path, colour_set: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(tmp_path, colour_set, "a", finetune_backbone=False, epochs=1)
    files = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 2  # train and val

    real = lstm_module.cached_features
    extracted: list[int] = []

    def spy(**kwargs):  # noqa: ANN003, ANN202
        table = real(**kwargs)
        extracted.append(table.extracted)
        return table

    monkeypatch.setattr(lstm_module, "cached_features", spy)
    run(tmp_path, colour_set, "b", family="cnn-lstm-attn", finetune_backbone=False, epochs=1)
    assert extracted == [0, 0]  # same tiny backbone (same seed), same size: no backbone call
    run(tmp_path, colour_set, "c", finetune_backbone=False, epochs=1, image_size=48)
    assert extracted[2:] == [32, 8]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 4


def test_crash_while_saving_leaves_no_half_checkpoint(
    tmp_path: Path, colour_set: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_save(out_dir: Path, **kwargs: object) -> Path:
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(lstm_module, "save_checkpoint", broken_save)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, colour_set, epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # finetuning: no cache; no checkpoint, no temp


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"family": "transformer"}, UnknownNameError, "cnn-lstm"),
        ({"backbone": "resnet9000"}, UnknownNameError, "densenet201"),
        ({"tokenization": "letters"}, UnknownNameError, "syllable"),
        ({"early_stop_on": "train_loss"}, UnknownNameError, "val_bleu4"),
        ({"epochs": 0}, InputError, "epochs"),
        ({"config_overrides": {"n_heads": 4}}, InputError, "n_heads"),
    ],
)
def test_bad_options(tmp_path: Path, colour_set: Splits, changes: dict, error: type, match: str) -> None:
    family = changes.pop("family", "cnn-lstm")
    with pytest.raises(error, match=match):
        run(tmp_path, colour_set, family=family, **changes)


def test_empty_splits_and_foreign_out_dir(tmp_path: Path, colour_set: Splits) -> None:
    train, val = colour_set
    with pytest.raises(InputError, match="train split"):
        run(tmp_path, ([], val))
    with pytest.raises(InputError, match="validation"):
        run(tmp_path, (train, []))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "thesis.docx").write_text("precious")
    with pytest.raises(InputError, match="not a checkpoint"):
        run(tmp_path, colour_set)
    assert (tmp_path / "ckpt" / "thesis.docx").exists()


def test_divergence_is_a_clear_error(tmp_path: Path, colour_set: Splits, monkeypatch: pytest.MonkeyPatch) -> None:
    real = lstm_module._batch_loss

    def nan_loss(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        loss, n_tokens = real(*args, **kwargs)
        return loss * float("nan"), n_tokens

    monkeypatch.setattr(lstm_module, "_batch_loss", nan_loss)
    with pytest.raises(VicapError, match="diverged"):
        run(tmp_path, colour_set, epochs=1)
    assert not (tmp_path / "ckpt").exists()
