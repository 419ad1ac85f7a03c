"""Family-agnostic training of the CNN+LSTM captioners: one function, `train_model`.

Vocabulary from the TRAIN split only; the model built through the family
registry; frozen-backbone features cached once (`training.features`), or the
backbone trained end to end from pixels when ``finetune_backbone``; teacher
forcing over whole captions with PAD masked; AdamW with gradient clipping;
early stopping on validation loss or validation BLEU-4 (greedy decoding); the
best epoch kept as a checkpoint written to a temporary folder and renamed.
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.data.text import detokenize
from vicap_jobs.data.vocab import BOS_ID, EOS_ID, PAD_ID, Vocabulary
from vicap_jobs.errors import InputError, VicapError
from vicap_jobs.metrics.scores import score_captions
from vicap_jobs.models.checkpoint import save_checkpoint
from vicap_jobs.models.decoding import greedy_decode
from vicap_jobs.models.registry import FamilySpec, get_family
from vicap_jobs.training.batches import (
    CaptionBatch,
    EncodedCaptions,
    batch_for_captions,
    batch_for_images,
    encode_captions,
    index_batches,
    tokenize_samples,
)
from vicap_jobs.training.features import FeatureKey, cached_features, load_pixels, module_digest
from vicap_jobs.training.options import (
    TrainOptions,
    TrainProgress,
    TrainResult,
)

log = logging.getLogger(__name__)

FINAL_LR_FRACTION = 0.05  # the decay ends at lr * this
PIXEL_MEMORY_BUDGET = 1 << 30  # when fine-tuning, keep decoded pixels in memory below this many bytes
CHECKPOINT_FILES = frozenset({"model.safetensors", "config.json", "vocab.json"})


@dataclass
class _Split:
    """One split ready for training: samples with at least one caption, encoded, with their inputs."""

    samples: list[CaptionSample]
    encoded: EncodedCaptions
    features: Tensor | None = None  # (N, C, h, w) float16 when the backbone is frozen
    pixels: Tensor | None = None  # (N, 3, S, S) float32 when fine-tuning and small enough to keep


# ----------------------------------------------------------------------------------------------- setup


@contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed torch and use deterministic kernels for the run, restoring the global flags afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a folder that is not a checkpoint (the best epoch is written over `out_dir`)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputError(f"output path {out_dir} exists and is not a folder")
        extra = sorted(p.name for p in out_dir.iterdir() if p.name not in CHECKPOINT_FILES)
        if extra:
            raise InputError(
                f"output folder {out_dir} holds files that are not a checkpoint ({', '.join(extra[:5])}); "
                "choose an empty or new folder"
            )


def _model_config(spec: FamilySpec, options: TrainOptions, vocab_size: int) -> Any:
    """The family's config dataclass from the options (named overrides, then `config_overrides`)."""
    known = {f.name for f in dataclasses.fields(spec.config_cls)}
    values: dict[str, Any] = {
        "vocab_size": vocab_size,
        "backbone": options.backbone,
        "image_size": options.image_size,
        "finetune_backbone": options.finetune_backbone,
    }
    for name in ("embed_dim", "hidden_dim", "attention_dim", "dropout"):
        if getattr(options, name) is not None and name in known:
            values[name] = getattr(options, name)
    unknown = sorted(set(options.config_overrides) - known)
    if unknown:
        raise InputError(f"unknown {spec.config_cls.__name__} fields {unknown}; known: {sorted(known)}")
    values.update(options.config_overrides)
    return spec.config_cls(**{name: value for name, value in values.items() if name in known})


def _prepare_split(
    samples: Sequence[CaptionSample],
    vocab: Vocabulary,
    options: TrainOptions,
    token_lists: list[list[list[str]]] | None = None,
) -> _Split:
    """Tokenize and encode a split, dropping images left without any non-empty caption."""
    token_lists = token_lists if token_lists is not None else tokenize_samples(samples, options.tokenization)
    kept = [(s, t) for s, t in zip(samples, token_lists, strict=True) if any(t)]
    encoded = encode_captions([t for _, t in kept], vocab, max_len=options.max_len)
    return _Split(samples=[s for s, _ in kept], encoded=encoded)


# ------------------------------------------------------------------------------------------- the loop


def _image_features(
    model: nn.Module, split: _Split, rows: list[int], options: TrainOptions, device: torch.device
) -> Tensor:
    """Backbone grids (B, C, h, w) float32 of images `rows`: from the cache, or the backbone when fine-tuning."""
    index = torch.as_tensor(rows, dtype=torch.long)
    if split.features is not None:
        return split.features.index_select(0, index).to(device, torch.float32)  # (B, C, h, w)
    if split.pixels is not None:
        pixels = split.pixels.index_select(0, index)  # (B, 3, S, S)
    else:
        pixels = load_pixels([split.samples[row] for row in rows], options.image_size)
    return model.extract_features(pixels.to(device))


def _batch_loss(
    model: nn.Module, features: Tensor, batch: CaptionBatch, device: torch.device, label_smoothing: float
) -> tuple[Tensor, int]:
    """Mean cross-entropy over non-PAD targets of `batch` and the number of those targets."""
    per_caption = features.index_select(0, batch.image_row.to(device))  # (B_cap, C, h, w)
    logits = model(per_caption, batch.tokens_in.to(device))  # (B_cap, T, V)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),  # (B_cap * T, V)
        batch.targets.to(device).reshape(-1),  # (B_cap * T,)
        ignore_index=PAD_ID,
        label_smoothing=label_smoothing,
    )
    return loss, batch.n_tokens


@torch.no_grad()
def _evaluate(
    model: nn.Module, split: _Split, vocab: Vocabulary, options: TrainOptions, device: torch.device
) -> tuple[float, float]:
    """Validation loss (per target token, no smoothing) and BLEU-4 of greedy captions (0..1)."""
    model.eval()
    total_loss, total_tokens = 0.0, 0
    predictions: dict[int, str] = {}
    for rows in index_batches(len(split.samples), options.eval_batch_size):
        features = _image_features(model, split, rows, options, device)  # (B, C, h, w)
        loss, n_tokens = _batch_loss(model, features, batch_for_images(split.encoded, rows), device, 0.0)
        total_loss += loss.item() * n_tokens
        total_tokens += n_tokens
        sequences = greedy_decode(
            model.step,
            model.start(features),
            batch_size=len(rows),
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            max_len=options.decode_max_len,
        )
        for row, ids in zip(rows, sequences, strict=True):
            predictions[split.samples[row].image_id] = detokenize(vocab.decode(ids))
    references = {sample.image_id: list(sample.captions) for sample in split.samples}
    scores = score_captions(predictions, references, tokenization=options.tokenization)
    return total_loss / max(total_tokens, 1), scores.bleu_4


def _make_optimizer(model: nn.Module, options: TrainOptions) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices and embeddings only (not biases or norm scales)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=options.lr)


def _train_epoch(
    model: nn.Module,
    split: _Split,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    shuffler: torch.Generator,
    options: TrainOptions,
    device: torch.device,
    bar: tqdm,
) -> float:
    """One pass over every train caption in shuffled batches; returns the mean loss per target token."""
    model.train()
    loss_sum, token_sum = 0.0, 0
    for captions in index_batches(len(split.encoded.ids), options.batch_size, generator=shuffler):
        rows, batch = batch_for_captions(split.encoded, captions)
        features = _image_features(model, split, rows, options, device)  # (B_img, C, h, w)
        loss, n_tokens = _batch_loss(model, features, batch, device, options.label_smoothing)
        if not torch.isfinite(loss):
            raise VicapError(f"training diverged (loss {loss.item()}); lower the learning rate (now {options.lr:g})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if options.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
        optimizer.step()
        schedule.step()
        loss_sum += loss.item() * n_tokens
        token_sum += n_tokens
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / token_sum:.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
    return loss_sum / max(token_sum, 1)


def _lr_factor(step: int, total_steps: int, options: TrainOptions) -> float:
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


def _save_best(out_dir: Path, model: nn.Module, family: str, vocab: Vocabulary, meta: dict[str, Any]) -> None:
    """Write the checkpoint into a temporary sibling folder, then swap it in for `out_dir`."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    previous = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        save_checkpoint(temporary, model=model, family=family, vocab=vocab, meta=meta)
        if out_dir.exists():
            os.replace(out_dir, previous)
        os.replace(temporary, out_dir)
    finally:
        if previous.exists() and not out_dir.exists():  # the swap failed half-way: keep the earlier best
            os.replace(previous, out_dir)
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


def train_model(
    *,
    family: str,
    options: TrainOptions,
    train: Sequence[CaptionSample],
    val: Sequence[CaptionSample],
    out_dir: Path,
    cache_dir: Path,
    dataset_key: str,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Train a `family` captioner on `train`, early-stop on `val`, keep the best epoch at `out_dir`.

    `cache_dir` holds frozen-backbone features (shared by runs on the same data
    set, backbone, weights and image size); `dataset_key` names the data set in
    that cache and in the checkpoint meta. Raises InputError on empty splits or
    bad options, UnknownNameError on an unknown family or backbone.
    """
    started = time.perf_counter()
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    spec = get_family(family)
    options.validate()
    if not train:
        raise InputError("the train split has no images; a model cannot be trained on nothing")
    if not val:
        raise InputError("the validation split has no images; early stopping and model choice need one")
    _check_out_dir(out_dir)
    device = torch.device(options.device)

    train_tokens = tokenize_samples(train, options.tokenization)
    vocab = Vocabulary.build(
        (tokens for captions in train_tokens for tokens in captions),
        min_freq=options.min_freq,
        tokenization=options.tokenization,
    )
    if len(vocab) <= 4:
        raise InputError("the train captions have no words after normalization")
    train_split = _prepare_split(train, vocab, options, train_tokens)
    val_split = _prepare_split(val, vocab, options)
    if not train_split.samples or not val_split.samples:
        raise InputError("every train or every validation image has only empty captions")

    with _deterministic(options.seed):
        config = _model_config(spec, options, len(vocab))
        model = spec.build(config, backbone_weights=options.backbone_weights).to(device)
        _attach_inputs(model, [train_split, val_split], options, cache_dir, dataset_key, device)
        torch.manual_seed(options.seed + 1)  # the loop's randomness does not depend on cache hits
        shuffler = torch.Generator().manual_seed(options.seed)
        optimizer = _make_optimizer(model, options)
        steps_per_epoch = math.ceil(len(train_split.encoded.ids) / options.batch_size)
        total_steps = steps_per_epoch * options.epochs
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: _lr_factor(i, total_steps, options))
        higher_is_better = options.early_stop_on == "val_bleu4"
        best_score, best_epoch, best_state = -math.inf, 0, None
        history: list[TrainProgress] = []
        step, bad_epochs, stopped_early = 0, 0, False
        bar = tqdm(total=total_steps, desc=f"train {family}", unit="step", disable=not options.progress_bar)
        try:
            for epoch in range(1, options.epochs + 1):
                bar.set_description(f"train {family} epoch {epoch}/{options.epochs}")
                train_loss = _train_epoch(model, train_split, optimizer, schedule, shuffler, options, device, bar)
                step += steps_per_epoch
                val_loss, val_bleu4 = _evaluate(model, val_split, vocab, options, device)
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
                    elapsed=time.perf_counter() - started,
                    best_epoch=best_epoch,
                    improved=improved,
                )
                history.append(progress)
                log.info(
                    "%s epoch %d/%d: train_loss %.4f, val_loss %.4f, val_bleu4 %.4f%s (%.1f s)",
                    family,
                    epoch,
                    options.epochs,
                    progress.train_loss,
                    val_loss,
                    val_bleu4,
                    " (best)" if improved else "",
                    progress.elapsed,
                )
                if improved:
                    meta = _meta(
                        options,
                        dataset_key,
                        history,
                        best_epoch,
                        stopped_early=False,
                        n_train=len(train_split.samples),
                        n_val=len(val_split.samples),
                    )
                    _save_best(out_dir, model, family, vocab, meta)
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
    meta = _meta(
        options,
        dataset_key,
        history,
        best_epoch,
        stopped_early=stopped_early,
        n_train=len(train_split.samples),
        n_val=len(val_split.samples),
    )
    _save_best(out_dir, model, family, vocab, meta)
    best = history[best_epoch - 1]
    return TrainResult(
        out_dir=out_dir,
        best_epoch=best_epoch,
        val_loss=best.val_loss,
        val_bleu4=best.val_bleu4,
        history=history,
        vocab_size=len(vocab),
        seconds=time.perf_counter() - started,
        stopped_early=stopped_early,
    )


def _attach_inputs(
    model: nn.Module,
    splits: list[_Split],
    options: TrainOptions,
    cache_dir: Path,
    dataset_key: str,
    device: torch.device,
) -> None:
    """Give each split its cached features (frozen backbone) or, if small enough, its pixels (fine-tuning)."""
    if model.backbone_frozen:
        model.eval()
        backbone = getattr(model, "backbone", model)
        weights_id = module_digest(backbone)
        for name, split in zip(("train", "val"), splits, strict=True):
            key = FeatureKey(
                dataset_key=dataset_key,
                split=name,
                backbone=options.backbone,
                weights_id=weights_id,
                image_size=options.image_size,
            )
            table = cached_features(
                key=key,
                samples=split.samples,
                extractor=model.extract_features,
                cache_dir=cache_dir,
                batch_size=options.feature_batch_size,
                device=device,
                progress=options.progress_bar,
            )
            split.features = table.features
        return
    for split in splits:
        size = len(split.samples) * 3 * options.image_size**2 * 4
        if size <= PIXEL_MEMORY_BUDGET:
            split.pixels = load_pixels(split.samples, options.image_size)  # (N, 3, S, S)


def _meta(
    options: TrainOptions,
    dataset_key: str,
    history: list[TrainProgress],
    best_epoch: int,
    *,
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
        "early_stop_on": options.early_stop_on,
        "stopped_early": stopped_early,
        "train_images": n_train,
        "val_images": n_val,
        "options": options.to_json(),
        "history": [
            {"epoch": h.epoch, "train_loss": h.train_loss, "val_loss": h.val_loss, "val_bleu4": h.val_bleu4}
            for h in history
        ],
    }
