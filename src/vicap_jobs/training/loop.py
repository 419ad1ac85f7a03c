"""The family-agnostic training loop: epochs, lr schedule, early stopping, best checkpoint, progress.

A family's trainer (``training/lstm.py`` for the CNN+LSTM families) prepares its
data and model and hands :func:`run_epochs` an :class:`EpochTrainer`: one epoch
of optimizer steps, one validation pass, and how to save a checkpoint. The loop
owns the rest, the same for every family:

- AdamW with weight decay on matrices and embeddings only (:func:`make_optimizer`);
- the lr schedule (:func:`lr_factor`): linear warm-up, then the peak lr, then (``wsd``)
  a cosine decay to ``lr * FINAL_LR_FRACTION`` over the last ``decay_fraction`` of steps;
- early stopping on validation loss or validation BLEU-4, keeping the best epoch's weights;
- the best checkpoint written to a temporary sibling folder and swapped in
  (:func:`save_best`), so a crash never leaves half a checkpoint;
- a log line and an ``on_progress`` callback per epoch, and the :class:`TrainResult`.

It knows nothing of Celery or the database: a task wraps it and turns
``on_progress`` calls into job-row updates.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import shutil
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.data.text import Tokenization
from vicap_jobs.errors import InputError, VicapError
from vicap_jobs.metrics.scores import CaptionScores, score_captions
from vicap_jobs.models.codec import TextCodec
from vicap_jobs.models.hf_codec import CODEC_DIR
from vicap_jobs.models.manifest import (
    ADAPTER_DIR,
    HF_DIR,
    MANIFEST_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    manifest_codec,
    read_manifest,
)
from vicap_jobs.training.options import TrainOptions, TrainProgress, TrainResult

log = logging.getLogger(__name__)

FINAL_LR_FRACTION = 0.05  # the decay ends at lr * this
CHECKPOINT_ENTRIES = frozenset({MANIFEST_FILE, WEIGHTS_FILE, VOCAB_FILE, HF_DIR, ADAPTER_DIR, CODEC_DIR})

Schedule = torch.optim.lr_scheduler.LambdaLR


class EpochTrainer(Protocol):
    """What a family's trainer gives :func:`run_epochs`."""

    @property
    def model(self) -> nn.Module: ...

    @property
    def codec(self) -> TextCodec:
        """Built from the train split, saved with every checkpoint."""
        ...

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch."""
        ...

    @property
    def n_train(self) -> int:
        """Train images used."""
        ...

    @property
    def n_val(self) -> int:
        """Validation images used."""
        ...

    def train_epoch(self, optimizer: torch.optim.Optimizer, schedule: Schedule, bar: tqdm) -> float:
        """One pass over the train split (``optimizer_step`` per batch, ``bar.update(1)``); mean loss per target."""
        ...

    def evaluate(self) -> tuple[float, CaptionScores]:
        """Validation loss per target token (no smoothing) and the scores of greedy captions (our metrics)."""
        ...

    def save(self, out_dir: Path, meta: dict[str, Any]) -> None:
        """Write a complete checkpoint of the current weights into ``out_dir`` (``meta`` into its manifest)."""
        ...


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and use deterministic kernels for the run, restoring the global flags afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a folder that is not a checkpoint (the best epoch is written over `out_dir`)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputError(f"output path {out_dir} exists and is not a folder")
        extra = sorted(p.name for p in out_dir.iterdir() if p.name not in CHECKPOINT_ENTRIES)
        if extra:
            raise InputError(
                f"output folder {out_dir} holds files that are not a checkpoint ({', '.join(extra[:5])}); "
                "choose an empty or new folder"
            )


def config_from_options(config_cls: type, options: TrainOptions, **values: Any) -> Any:
    """The family's config dataclass from the trainer's ``values``, then ``options.config_overrides``.

    ``values`` apply only to fields the config has (a family trainer passes what it takes
    from the options); an unknown ``config_overrides`` field is an InputError naming the known ones.
    """
    known = {f.name for f in dataclasses.fields(config_cls)}
    values = dict(values)
    unknown = sorted(set(options.config_overrides) - known)
    if unknown:
        raise InputError(f"unknown {config_cls.__name__} fields {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(config_cls)
    values.update(
        {
            name: coerce_value(config_cls.__name__, name, hints.get(name), value)
            for name, value in options.config_overrides.items()
        }
    )
    return config_cls(**{name: value for name, value in values.items() if name in known})


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def coerce_value(owner: str, name: str, annotation: Any, value: Any) -> Any:
    """A ``--set`` value as the config field's type (bool, int, float, str, tuple of str); else one-line InputError.

    "False" must not become a truthy string, nor "8" a string where a number is meant.
    """
    kinds = set(typing.get_args(annotation)) | {annotation} if typing.get_args(annotation) else {annotation}
    problem = f"{owner}.{name} must be"
    if bool in kinds:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise InputError(f"{problem} true or false, got {value!r}")
    if int in kinds and float not in kinds:
        if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
            return int(value)
        raise InputError(f"{problem} an integer, got {value!r}")
    if float in kinds:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InputError(f"{problem} a number, got {value!r}") from None
    if typing.get_origin(annotation) is tuple or annotation is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
            raise InputError(f"{problem} a list of names, got {value!r}")
        return tuple(item.strip() for item in items if item.strip())
    if str in kinds and not isinstance(value, str):
        raise InputError(f"{problem} text, got {value!r}")
    return value


def make_optimizer(model: nn.Module, options: TrainOptions) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices and embeddings only (not biases or norm scales)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=options.lr)


def lr_factor(step: int, total_steps: int, options: TrainOptions) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): warm-up, stable, then (wsd) cosine decay."""
    warmup = min(options.warmup_steps, total_steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = round(options.decay_fraction * total_steps) if options.lr_schedule == "wsd" else 0
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, decay_steps))
    return FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_step(
    loss: torch.Tensor, *, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, options: TrainOptions
) -> None:
    """Backward, clip, step the optimizer and the schedule; a non-finite loss stops the run with a clear error."""
    if not torch.isfinite(loss):
        raise VicapError(f"training diverged (loss {loss.item()}); lower the learning rate (now {options.lr:g})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if options.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
    optimizer.step()
    schedule.step()


def validation_scores(
    predictions: dict[int, str], samples: Sequence[CaptionSample], tokenization: Tokenization
) -> CaptionScores:
    """Corpus BLEU-1..4 / ROUGE-L (0..1) of ``predictions`` (image id → caption) against the samples' references."""
    references = {sample.image_id: list(sample.captions) for sample in samples}
    return score_captions(predictions, references, tokenization=tokenization)


def save_best(out_dir: Path, save: Callable[[Path], object]) -> None:
    """Run ``save(folder)`` into a temporary sibling folder, then swap it in for `out_dir`."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    previous = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        save(temporary)
        if out_dir.exists():
            os.replace(out_dir, previous)
        os.replace(temporary, out_dir)
    finally:
        if previous.exists() and not out_dir.exists():  # the swap failed half-way: keep the earlier best
            os.replace(previous, out_dir)
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


def run_epochs(
    trainer: EpochTrainer,
    *,
    family: str,
    options: TrainOptions,
    out_dir: Path,
    dataset_key: str,
    started: float,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Train up to ``options.epochs`` epochs, early-stop, and leave the best epoch's checkpoint at ``out_dir``."""
    model = trainer.model
    optimizer = make_optimizer(model, options)
    total_steps = trainer.steps_per_epoch * options.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, total_steps, options))
    higher_is_better = options.early_stop_on == "val_bleu4"
    best_score, best_epoch, best_state = -math.inf, 0, None
    history: list[TrainProgress] = []
    step, bad_epochs, stopped_early = 0, 0, False

    def meta(stopped: bool) -> dict[str, Any]:
        return _meta(options, dataset_key, history, best_epoch, stopped, trainer.n_train, trainer.n_val)

    bar = tqdm(total=total_steps, desc=f"train {family}", unit="step", disable=not options.progress_bar)
    try:
        for epoch in range(1, options.epochs + 1):
            bar.set_description(f"train {family} epoch {epoch}/{options.epochs}")
            train_loss = trainer.train_epoch(optimizer, schedule, bar)
            step += trainer.steps_per_epoch
            val_loss, val_scores = trainer.evaluate()
            val_bleu4 = val_scores.bleu_4
            score = val_bleu4 if higher_is_better else -val_loss
            improved = score > best_score
            if improved:
                best_score, best_epoch, bad_epochs = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
            progress = TrainProgress(
                epoch=epoch,
                epochs=options.epochs,
                step=step,
                steps=total_steps,
                train_loss=train_loss,
                val_loss=val_loss,
                val_bleu4=val_bleu4,
                val_rouge_l=val_scores.rouge_l,
                elapsed=time.perf_counter() - started,
                best_epoch=best_epoch,
                improved=improved,
            )
            history.append(progress)
            log.info(
                "%s epoch %d/%d: train_loss %.4f, val_loss %.4f, val_bleu4 %.4f, val_rouge_l %.4f%s (%.1f s)",
                family,
                epoch,
                options.epochs,
                train_loss,
                val_loss,
                val_bleu4,
                val_scores.rouge_l,
                " (best)" if improved else "",
                progress.elapsed,
            )
            if improved:
                save_best(out_dir, lambda folder: trainer.save(folder, meta(False)))
            if on_progress is not None:
                on_progress(progress)
            if bad_epochs >= options.patience:
                stopped_early = epoch < options.epochs
                if stopped_early:
                    log.info(
                        "%s: no improvement of %s for %d epochs; stopping after epoch %d",
                        family,
                        options.early_stop_on,
                        bad_epochs,
                        epoch,
                    )
                break
    finally:
        bar.close()

    # Rewrite the best checkpoint once more so its meta tells the whole run (epochs run, stop reason).
    assert best_state is not None
    model.load_state_dict(best_state)
    save_best(out_dir, lambda folder: trainer.save(folder, meta(stopped_early)))
    best = history[best_epoch - 1]
    codec_kind, codec_file = manifest_codec(read_manifest(out_dir))
    return TrainResult(
        out_dir=out_dir,
        best_epoch=best_epoch,
        val_loss=best.val_loss,
        val_bleu4=best.val_bleu4,
        val_rouge_l=best.val_rouge_l,
        history=history,
        vocab_size=len(trainer.codec),
        seconds=time.perf_counter() - started,
        stopped_early=stopped_early,
        codec_kind=codec_kind,
        codec_file=out_dir / codec_file,
    )


def _meta(
    options: TrainOptions,
    dataset_key: str,
    history: list[TrainProgress],
    best_epoch: int,
    stopped_early: bool,
    n_train: int,
    n_val: int,
) -> dict[str, Any]:
    """Checkpoint meta: how the best epoch was reached (the checkpoint adds config and versions)."""
    best = history[best_epoch - 1]
    return {
        "dataset": dataset_key,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "val_loss": best.val_loss,
        "val_bleu4": best.val_bleu4,
        "val_rouge_l": best.val_rouge_l,
        "early_stop_on": options.early_stop_on,
        "stopped_early": stopped_early,
        "train_images": n_train,
        "val_images": n_val,
        "options": options.to_json(),
        "history": [
            {
                "epoch": h.epoch,
                "train_loss": h.train_loss,
                "val_loss": h.val_loss,
                "val_bleu4": h.val_bleu4,
                "val_rouge_l": h.val_rouge_l,
            }
            for h in history
        ],
    }
