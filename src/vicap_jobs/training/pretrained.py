"""Training of the vision-language families (BLIP, ClipCap, BLIP-2 + LoRA, ViT + Vietnamese decoder): `train_pretrained`.

The second trainer of the family-agnostic loop (``training/loop.py``: AdamW, warm-up
and decay, early stopping on validation loss with patience, the best checkpoint
swapped in atomically, progress). What it adds for models built from local
pretrained folders:

- the text codec first (``models/hf_codec.py``): a byte-level BPE trained on the
  TRAIN captions, or a local tokenizer folder checked to keep every diacritic;
  the family then builds its model around it (``build(config, codec=...)``);
- images streamed from disk in batches (never a whole split in memory), decoded
  in a background thread while the previous batch trains; a frozen image encoder
  (``model.backbone_frozen``) runs once per data set through the feature cache;
- batches over images: each image's features are computed once per step and
  shared by all of its captions (an epoch shows every caption once);
- gradient accumulation (``grad_accum`` micro-batches per optimizer step) and,
  on a GPU, mixed precision (bf16 autocast where supported, else fp16 with a
  gradient scaler); fp32 on the CPU;
- deterministic seeds (``training.loop.deterministic``).

The model side is the step-wise contract (``models/pretrained.py``), so validation
BLEU-4 uses the same greedy search as every engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vicap_jobs.data.images import Preprocessing
from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.devices import torch_device
from vicap_jobs.errors import InputError, VicapError
from vicap_jobs.metrics.scores import CaptionScores
from vicap_jobs.models.checkpoint import save_checkpoint
from vicap_jobs.models.decoding import ban_tokens, greedy_decode
from vicap_jobs.models.hf_codec import HFTokenizerCodec, check_keeps_text, load_tokenizer, train_caption_tokenizer
from vicap_jobs.models.pretrained import PretrainedCaptioner, pretrained_dir
from vicap_jobs.models.registry import get_family
from vicap_jobs.training.batches import CaptionBatch, EncodedCaptions, batch_for_images, index_batches
from vicap_jobs.training.features import FeatureKey, cached_features, load_pixels, module_digest
from vicap_jobs.training.loop import (
    Schedule,
    check_out_dir,
    config_from_options,
    deterministic,
    run_epochs,
    validation_scores,
)
from vicap_jobs.training.options import TrainOptions, TrainProgress, TrainResult

# TrainOptions fields naming local pretrained folders, by the config field they fill.
PRETRAINED_INPUTS = {"vision_model": "--vision-model", "text_model": "--text-model", "base_model": "--base-model"}
IGNORE = -100  # cross-entropy target that is not scored
CUT_WARN_FRACTION = 0.01  # more cut captions than this share is a warning naming the fix
log = logging.getLogger(__name__)


def make_codec(config: Any, options: TrainOptions, train: Sequence[CaptionSample]) -> HFTokenizerCodec:
    """The text codec: trained on the train captions, or a local tokenizer folder that keeps Vietnamese text."""
    source = options.tokenizer or config.default_tokenizer()
    captions = [caption for sample in train for caption in sample.captions]
    specials = tuple(getattr(config, "extra_special_tokens", ()))
    if source == "train":
        return train_caption_tokenizer(captions, vocab_size=options.tokenizer_vocab_size, extra_special=specials)
    tokenizer = load_tokenizer(Path(source))
    missing = [token for token in specials if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    codec = HFTokenizerCodec(tokenizer)
    check_keeps_text(codec, captions, source=str(source))
    return codec


def encode_split(samples: Sequence[CaptionSample], codec: HFTokenizerCodec, max_len: int) -> EncodedCaptions:
    """Every non-empty caption of every sample as ``[bos .. eos]`` (cut to ``max_len`` ids).

    ``max_len`` counts tokenizer ids, not syllables: an English byte-level tokenizer spends
    two or three ids on an accented syllable, so cut captions (which would teach the model
    to stop mid-sentence) are counted and reported (:func:`warn_if_cut`).
    """
    ids: list[list[int]] = []
    image_row: list[int] = []
    captions_of_image: list[list[int]] = []
    cut = 0
    for row, sample in enumerate(samples):
        mine: list[int] = []
        for caption in sample.captions:
            text_ids = codec.encode_text(caption)
            if not text_ids:
                continue  # nothing left after normalization
            cut += len(text_ids) + 2 > max_len
            mine.append(len(ids))
            ids.append([codec.bos_id, *text_ids[: max_len - 2], codec.eos_id])
            image_row.append(row)
        captions_of_image.append(mine)
    warn_if_cut(cut, len(ids), max_len)
    return EncodedCaptions(ids=ids, image_row=image_row, captions_of_image=captions_of_image)


def warn_if_cut(cut: int, total: int, max_len: int) -> None:
    """Log how many captions ``max_len`` cuts; above CUT_WARN_FRACTION it names the fix."""
    if cut and cut > CUT_WARN_FRACTION * total:
        log.warning(
            "%d of %d captions are longer than max_len=%d tokenizer ids and are cut (the model learns to stop "
            "early); raise --max-len or use --tokenizer train (a Vietnamese BPE needs fewer ids per syllable)",
            cut,
            total,
            max_len,
        )
    elif cut:
        log.info("%d of %d captions are cut at max_len=%d tokenizer ids", cut, total, max_len)


def caption_loss(
    model: nn.Module, features: Tensor, batch: CaptionBatch, device: torch.device, label_smoothing: float = 0.0
) -> tuple[Tensor, int]:
    """Mean cross-entropy over each caption's targets up to its EOS, and how many targets that is."""
    per_caption = features.index_select(0, batch.image_row.to(device))  # (B_cap, ...)
    logits = model(per_caption, batch.tokens_in.to(device))  # (B_cap, T, V)
    targets = batch.targets.masked_fill(~batch.mask, IGNORE).to(device)  # (B_cap, T)
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        label_smoothing=label_smoothing,
    )
    return loss, batch.n_tokens


class _Split:
    """One split: samples with at least one caption, their encoded captions, cached features if frozen."""

    def __init__(self, samples: Sequence[CaptionSample], codec: HFTokenizerCodec, max_len: int) -> None:
        encoded = encode_split(samples, codec, max_len)
        kept = [row for row, mine in enumerate(encoded.captions_of_image) if mine]
        self.samples = [samples[row] for row in kept]
        new_row = {old: new for new, old in enumerate(kept)}
        self.encoded = EncodedCaptions(
            ids=encoded.ids,
            image_row=[new_row[row] for row in encoded.image_row],
            captions_of_image=[encoded.captions_of_image[row] for row in kept],
        )
        self.features: Tensor | None = None  # (N, ...) float16 when the image encoder is frozen


class PretrainedEpochs:
    """The vision-language side of :func:`vicap_jobs.training.loop.run_epochs` (an EpochTrainer)."""

    def __init__(
        self,
        *,
        family: str,
        model: PretrainedCaptioner,
        codec: HFTokenizerCodec,
        preprocessing: Preprocessing,
        train: _Split,
        val: _Split,
        options: TrainOptions,
        device: torch.device,
    ) -> None:
        self.family, self.model, self.codec, self.preprocessing = family, model, codec, preprocessing
        self.train, self.val, self.options, self.device = train, val, options, device
        captions_per_image = len(train.encoded.ids) / max(1, len(train.samples))
        self.images_per_batch = max(1, round(options.batch_size / max(1.0, captions_per_image)))
        micro_batches = math.ceil(len(train.samples) / self.images_per_batch)
        self.steps_per_epoch = math.ceil(micro_batches / options.grad_accum)
        self.n_train, self.n_val = len(train.samples), len(val.samples)
        self.shuffler = torch.Generator().manual_seed(options.seed)
        self.autocast_dtype = _autocast_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _inputs(self, split: _Split, batches: Sequence[list[int]]) -> Iterator[tuple[list[int], Tensor]]:
        """(rows, image input) per batch: cached features, or pixels decoded one batch ahead in a thread."""
        if split.features is not None:
            for rows in batches:
                yield rows, split.features.index_select(0, torch.as_tensor(rows)).float()
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
            pending: Future[Tensor] | None = None
            for i, rows in enumerate(batches):
                if pending is None:
                    pending = pool.submit(load_pixels, [split.samples[r] for r in rows], self.preprocessing)
                pixels = pending.result()  # (B, 3, S, S)
                if i + 1 < len(batches):
                    upcoming = batches[i + 1]
                    pending = pool.submit(load_pixels, [split.samples[r] for r in upcoming], self.preprocessing)
                yield rows, pixels

    def _features(self, split: _Split, image_input: Tensor) -> Tensor:
        image_input = image_input.to(self.device)
        return image_input if split.features is not None else self.model.extract_features(image_input)

    def train_epoch(self, optimizer: torch.optim.Optimizer, schedule: Schedule, bar: tqdm) -> float:
        """One pass over the train images (all captions of each), ``grad_accum`` micro-batches per step."""
        model, options = self.model.train(), self.options
        batches = list(index_batches(len(self.train.samples), self.images_per_batch, generator=self.shuffler))
        loss_sum, token_sum, pending = 0.0, 0, 0
        optimizer.zero_grad(set_to_none=True)
        started = time.perf_counter()
        for i, (rows, image_input) in enumerate(self._inputs(self.train, batches)):
            batch = batch_for_images(self.train.encoded, rows, pad_id=self.codec.pad_id)
            with self._autocast():
                features = self._features(self.train, image_input)
                loss, n_tokens = caption_loss(model, features, batch, self.device, options.label_smoothing)
            if not torch.isfinite(loss):
                raise VicapError(
                    f"training diverged (loss {loss.item()}); lower the learning rate (now {options.lr:g})"
                )
            scaled = loss / options.grad_accum
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss.item() * n_tokens
            token_sum += n_tokens
            pending += 1
            if pending == options.grad_accum or i == len(batches) - 1:
                self._optimizer_step(optimizer, schedule)
                pending = 0
                bar.update(1)
                images_per_s = (i + 1) * self.images_per_batch / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(
                    loss=f"{loss_sum / token_sum:.3f}",
                    lr=f"{schedule.get_last_lr()[0]:.1e}",
                    img_s=f"{images_per_s:.1f}",
                )
        return loss_sum / max(token_sum, 1)

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, schedule: Schedule) -> None:
        """Clip, step (through the scaler under fp16), advance the schedule, clear the gradients."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if self.options.grad_clip > 0:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            nn.utils.clip_grad_norm_(trainable, self.options.grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, CaptionScores]:
        """Validation loss per target token and the scores (0..1) of greedy captions, with our metrics."""
        model, split, options, codec = self.model.eval(), self.val, self.options, self.codec
        total_loss, total_tokens = 0.0, 0
        predictions: dict[int, str] = {}
        batches = list(index_batches(len(split.samples), options.eval_batch_size))
        step = ban_tokens(model.step, tuple(codec.banned_ids))
        for rows, image_input in self._inputs(split, batches):
            with self._autocast():
                features = self._features(split, image_input)
                batch = batch_for_images(split.encoded, rows, pad_id=codec.pad_id)
                loss, n_tokens = caption_loss(model, features, batch, self.device)
                sequences = greedy_decode(
                    step,
                    model.start(features),
                    batch_size=len(rows),
                    bos_id=codec.bos_id,
                    eos_id=codec.eos_id,
                    max_len=options.decode_max_len,
                )
            total_loss += loss.item() * n_tokens
            total_tokens += n_tokens
            for row, ids in zip(rows, sequences, strict=True):
                predictions[split.samples[row].image_id] = codec.decode_caption(ids)
        return total_loss / max(total_tokens, 1), validation_scores(predictions, split.samples, "syllable")

    def save(self, out_dir: Path, meta: dict[str, Any]) -> None:
        save_checkpoint(
            out_dir, model=self.model, family=self.family, codec=self.codec, meta=meta, preprocessing=self.preprocessing
        )

    def attach_features(self, cache_dir: Path, dataset_key: str) -> None:
        """A frozen image encoder runs once per data set and split: its features come from the cache."""
        model = self.model
        if not model.backbone_frozen:
            return
        extractor = model.feature_extractor()
        extractor.eval()
        weights_id = module_digest(extractor)
        for name, split in (("train", self.train), ("val", self.val)):
            key = FeatureKey(dataset_key, name, weights_id, self.preprocessing, label=self.family)
            table = cached_features(
                key=key,
                samples=split.samples,
                extractor=model.extract_features,
                cache_dir=cache_dir,
                batch_size=self.options.feature_batch_size,
                device=self.device,
                progress=self.options.progress_bar,
            )
            split.features = table.features


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision only on a GPU: bf16 where supported, else fp16 (with a gradient scaler)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _check_inputs(config_cls: type, options: TrainOptions, family: str) -> dict[str, str]:
    """The pretrained folders given, refusing one this family does not take (one line naming the right ones)."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    given = {name: str(getattr(options, name)) for name in PRETRAINED_INPUTS if getattr(options, name)}
    takes = [flag for name, flag in PRETRAINED_INPUTS.items() if name in fields]
    wrong = [PRETRAINED_INPUTS[name] for name in given if name not in fields]
    if wrong:
        raise InputError(f"model family {family!r} takes {' and '.join(takes)}, not {', '.join(wrong)}")
    return given


def check_pretrained_options(family: str, options: TrainOptions) -> Any:
    """Validate a run before it is queued: options, ``--set`` fields, and every pretrained folder on disk.

    Returns the family's config. Raises the one-line errors a run would raise later
    (unknown config field, missing folder naming the option and the model ids to fetch).
    """
    spec = get_family(family)
    options.validate()
    if options.scst_epochs:
        raise InputError(f"SCST (--scst-epochs) is not available for the {family} family yet")
    inputs = _check_inputs(spec.config_cls, options, family)
    for name, hint in spec.inputs.items():
        pretrained_dir(
            inputs.get(name), what=f"{family} {name.replace('_', ' ')}", option=PRETRAINED_INPUTS[name], model_ids=hint
        )
    config = config_from_options(spec.config_cls, options, **inputs)
    if hasattr(config, "validate"):
        config.validate()
    if options.tokenizer not in (None, "train"):
        load_tokenizer(Path(str(options.tokenizer)))  # a missing or unreadable folder is one line now
    return config


def train_pretrained(
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
    """Fine-tune a vision-language ``family`` on ``train``, early-stop on ``val``, keep the best epoch at ``out_dir``."""
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
    family_model = spec.model
    config = check_pretrained_options(family, options)
    with deterministic(options.seed):
        codec = make_codec(config, options, train)
        model = spec.build(config, codec=codec).to(device)
        train_split, val_split = _Split(train, codec, options.max_len), _Split(val, codec, options.max_len)
        if not train_split.samples or not val_split.samples:
            raise InputError("every train or every validation image has only empty captions")
        epochs = PretrainedEpochs(
            family=family,
            model=model,
            codec=codec,
            preprocessing=family_model.preprocessing(model.config),
            train=train_split,
            val=val_split,
            options=options,
            device=device,
        )
        epochs.attach_features(cache_dir, dataset_key)
        torch.manual_seed(options.seed + 1)  # the loop's randomness does not depend on cache hits
        return run_epochs(
            epochs,
            family=family,
            options=options,
            out_dir=out_dir,
            dataset_key=dataset_key,
            started=started,
            on_progress=on_progress,
        )
