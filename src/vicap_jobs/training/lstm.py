"""Training of the CNN+LSTM families (``FamilySpec.train`` of ``cnn-lstm`` and ``cnn-lstm-attn``): `train_lstm`.

Vocabulary from the TRAIN split only; the model built through the family
registry; frozen-backbone features cached once (`training.features`), or the
backbone trained end to end from pixels when ``finetune_backbone``; teacher
forcing over whole captions with PAD masked (`training.batches`), batches drawn
over captions. Everything else (optimizer, lr schedule, early stopping on
validation loss or greedy-caption BLEU-4, the best epoch kept as a checkpoint
written to a temporary folder and renamed, progress) is the family-agnostic
loop of `training.loop`. With ``scst_epochs`` > 0, self-critical fine-tuning
(`training.scst`) follows and keeps the best epoch by validation CIDEr-D.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from vicap_jobs.data.images import Preprocessing
from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.data.vocab import PAD_ID, Vocabulary
from vicap_jobs.devices import torch_device
from vicap_jobs.errors import InputError
from vicap_jobs.metrics.scores import CaptionScores
from vicap_jobs.models.checkpoint import save_checkpoint
from vicap_jobs.models.decoding import greedy_decode
from vicap_jobs.models.lstm_common import LSTMCaptioner
from vicap_jobs.models.registry import get_family
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
from vicap_jobs.training.loop import (
    Schedule,
    check_out_dir,
    config_from_options,
    deterministic,
    optimizer_step,
    run_epochs,
    validation_scores,
)
from vicap_jobs.training.options import TrainOptions, TrainProgress, TrainResult
from vicap_jobs.training.scst import run_scst

PIXEL_MEMORY_BUDGET = 1 << 30  # when fine-tuning, keep decoded pixels in memory below this many bytes
# TrainOptions fields that set the CNN+LSTM config fields of the same name (None: the family's default).
LSTM_DIMENSIONS = ("embed_dim", "hidden_dim", "attention_dim", "dropout")


@dataclass
class _Split:
    """One split ready for training: samples with at least one caption, encoded, with their inputs."""

    samples: list[CaptionSample]
    encoded: EncodedCaptions
    features: Tensor | None = None  # (N, C, h, w) float16 when the backbone is frozen
    pixels: Tensor | None = None  # (N, 3, S, S) float32 when fine-tuning and small enough to keep


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


def _batch_loss(
    model: LSTMCaptioner, features: Tensor, batch: CaptionBatch, device: torch.device, label_smoothing: float
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


class LSTMEpochs:
    """The CNN+LSTM side of :func:`vicap_jobs.training.loop.run_epochs` (an EpochTrainer)."""

    def __init__(
        self,
        *,
        family: str,
        model: LSTMCaptioner,
        codec: Vocabulary,
        preprocessing: Preprocessing,
        train: _Split,
        val: _Split,
        options: TrainOptions,
        device: torch.device,
    ) -> None:
        self.family, self.model, self.codec, self.preprocessing = family, model, codec, preprocessing
        self.train, self.val, self.options, self.device = train, val, options, device
        self.steps_per_epoch = math.ceil(len(train.encoded.ids) / options.batch_size)
        self.n_train, self.n_val = len(train.samples), len(val.samples)
        self.shuffler = torch.Generator().manual_seed(options.seed)

    def image_features(self, split: _Split, rows: list[int]) -> Tensor:
        """Backbone grids (B, C, h, w) float32 of images `rows`: from the cache, or the backbone when fine-tuning."""
        index = torch.as_tensor(rows, dtype=torch.long)
        if split.features is not None:
            return split.features.index_select(0, index).to(self.device, torch.float32)  # (B, C, h, w)
        if split.pixels is not None:
            pixels = split.pixels.index_select(0, index)  # (B, 3, S, S)
        else:
            pixels = load_pixels([split.samples[row] for row in rows], self.preprocessing)
        return self.model.extract_features(pixels.to(self.device))

    def train_epoch(self, optimizer: torch.optim.Optimizer, schedule: Schedule, bar: tqdm) -> float:
        """One pass over every train caption in shuffled batches; returns the mean loss per target token."""
        model, options = self.model.train(), self.options
        loss_sum, token_sum = 0.0, 0
        for captions in index_batches(len(self.train.encoded.ids), options.batch_size, generator=self.shuffler):
            rows, batch = batch_for_captions(self.train.encoded, captions)
            features = self.image_features(self.train, rows)  # (B_img, C, h, w)
            loss, n_tokens = _batch_loss(model, features, batch, self.device, options.label_smoothing)
            optimizer_step(loss, model=model, optimizer=optimizer, schedule=schedule, options=options)
            loss_sum += loss.item() * n_tokens
            token_sum += n_tokens
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / token_sum:.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
        return loss_sum / max(token_sum, 1)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, CaptionScores]:
        """Validation loss (per target token, no smoothing) and the scores of greedy captions (0..1)."""
        model, split, options = self.model.eval(), self.val, self.options
        total_loss, total_tokens = 0.0, 0
        predictions: dict[int, str] = {}
        for rows in index_batches(len(split.samples), options.eval_batch_size):
            features = self.image_features(split, rows)  # (B, C, h, w)
            loss, n_tokens = _batch_loss(model, features, batch_for_images(split.encoded, rows), self.device, 0.0)
            total_loss += loss.item() * n_tokens
            total_tokens += n_tokens
            sequences = greedy_decode(
                model.step,
                model.start(features),
                batch_size=len(rows),
                bos_id=self.codec.bos_id,
                eos_id=self.codec.eos_id,
                max_len=options.decode_max_len,
            )
            for row, ids in zip(rows, sequences, strict=True):
                predictions[split.samples[row].image_id] = self.codec.decode_caption(ids)
        return total_loss / max(total_tokens, 1), validation_scores(predictions, split.samples, options.tokenization)

    def save(self, out_dir: Path, meta: dict[str, Any]) -> None:
        save_checkpoint(
            out_dir, model=self.model, family=self.family, codec=self.codec, meta=meta, preprocessing=self.preprocessing
        )

    def attach_inputs(self, cache_dir: Path, dataset_key: str) -> None:
        """Give each split its cached features (frozen backbone) or, if small enough, its pixels (fine-tuning)."""
        model, options, splits = self.model, self.options, (self.train, self.val)
        if model.backbone_frozen:
            model.eval()
            weights_id = module_digest(model.feature_extractor())
            for name, split in zip(("train", "val"), splits, strict=True):
                key = FeatureKey(
                    dataset_key=dataset_key,
                    split=name,
                    weights_id=weights_id,
                    preprocessing=self.preprocessing,
                    label=options.backbone,
                )
                table = cached_features(
                    key=key,
                    samples=split.samples,
                    extractor=model.extract_features,
                    cache_dir=cache_dir,
                    batch_size=options.feature_batch_size,
                    device=self.device,
                    progress=options.progress_bar,
                )
                split.features = table.features
            return
        for split in splits:
            size = len(split.samples) * 3 * self.preprocessing.size**2 * 4
            if size <= PIXEL_MEMORY_BUDGET:
                split.pixels = load_pixels(split.samples, self.preprocessing)  # (N, 3, S, S)


def train_lstm(
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
    """Train a CNN+LSTM `family` captioner on `train`, early-stop on `val`, keep the best epoch at `out_dir`.

    `cache_dir` holds frozen-backbone features (shared by runs whose backbone weights,
    preprocessing, data set and split agree); `dataset_key` names the data set in that
    cache and in the checkpoint meta. Raises InputError on empty splits or bad options,
    UnknownNameError on an unknown family or backbone.
    """
    started = time.perf_counter()
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    spec = get_family(family)
    options.validate()
    if not train:
        raise InputError("the train split has no images; a model cannot be trained on nothing")
    if not val:
        raise InputError("the validation split has no images; early stopping and model choice need one")
    check_out_dir(out_dir)
    device = torch_device(options.device)

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

    family_model = spec.model
    dimensions = {name: getattr(options, name) for name in LSTM_DIMENSIONS if getattr(options, name) is not None}
    with deterministic(options.seed):
        config = config_from_options(
            family_model.config_cls,
            options,
            vocab_size=len(vocab),
            backbone=options.backbone,
            image_size=options.image_size,
            finetune_backbone=options.finetune_backbone,
            **dimensions,
        )
        model = spec.build(config, backbone_weights=options.backbone_weights).to(device)
        epochs = LSTMEpochs(
            family=family,
            model=model,
            codec=vocab,
            preprocessing=family_model.preprocessing(config),
            train=train_split,
            val=val_split,
            options=options,
            device=device,
        )
        epochs.attach_inputs(cache_dir, dataset_key)
        torch.manual_seed(options.seed + 1)  # the loop's randomness does not depend on cache hits
        result = run_epochs(
            epochs,
            family=family,
            options=options,
            out_dir=out_dir,
            dataset_key=dataset_key,
            started=started,
            on_progress=on_progress,
        )
        if options.scst_epochs == 0:
            return result
        return run_scst(  # self-critical fine-tuning of the best cross-entropy epoch (now in `model`)
            epochs,
            result,
            family=family,
            options=options,
            out_dir=out_dir,
            dataset_key=dataset_key,
            started=started,
            on_progress=on_progress,
        )
