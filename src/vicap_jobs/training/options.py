"""What a training run takes and reports: options, per-epoch progress, the result.

Plain dataclasses with no torch import, so the CLI, services and the job system
can build and validate options without loading a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vicap_jobs.data.text import Tokenization, check_tokenization
from vicap_jobs.devices import parse_device
from vicap_jobs.errors import InputError, UnknownNameError

EarlyStopOn = Literal["val_loss", "val_bleu4"]
EARLY_STOP_ON: tuple[EarlyStopOn, ...] = ("val_loss", "val_bleu4")
LrSchedule = Literal["constant", "wsd"]
LR_SCHEDULES: tuple[LrSchedule, ...] = ("constant", "wsd")
ScstBaseline = Literal["greedy", "mean"]
SCST_BASELINES: tuple[ScstBaseline, ...] = ("greedy", "mean")


@dataclass
class TrainOptions:
    """Hyper-parameters of one run. Defaults: the tiny-backbone demo on the synthetic set (tuned, see below).

    Tuned on viic-synth (1,000 images at 96 px, tiny backbone from scratch, 2 CPU cores):
    both families beat the blind baseline by 25+ BLEU-4 in 30-90 s. A backbone learned
    from scratch needs a high, long-held learning rate and no dropout to pick up small
    cues (shirt colour, player count); with lr 5e-4, dropout 0.5 or an early decay the
    attention model stalls at "right sport, wrong colour". For real photos use e.g.
    ``backbone="densenet201", backbone_weights="pretrained", image_size=224,
    finetune_backbone=False`` (features cached once) with larger dims and some dropout.
    """

    epochs: int = 8
    lr: float = 2e-3  # peak learning rate
    # "wsd": warm-up, stable (peak lr), then cosine decay to lr/20 over the last `decay_fraction`
    # of all steps; "constant": warm-up, then peak lr throughout.
    lr_schedule: LrSchedule = "wsd"
    warmup_steps: int = 50  # linear warm-up, at most a tenth of all steps
    decay_fraction: float = 0.3
    batch_size: int = 32  # captions per optimizer step (an epoch shows every train caption once)
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    grad_clip: float = 5.0  # max global gradient norm; 0 disables clipping
    patience: int = 3  # epochs without improvement of `early_stop_on` before stopping
    early_stop_on: EarlyStopOn = "val_loss"  # val BLEU-4 is noisier and flat while the model learns colours
    seed: int = 0
    min_freq: int = 1
    tokenization: Tokenization = "syllable"
    max_len: int = 32  # tokens per training caption, <bos> and <eos> included (longer ones are cut)
    image_size: int = 96
    backbone: str = "tiny"
    backbone_weights: Literal["pretrained", "random"] | Path = "random"
    finetune_backbone: bool = True  # False: frozen backbone, features extracted once and cached
    # CNN+LSTM config fields (training/lstm.py sets them); None keeps the family default,
    # a field the family's config lacks is skipped.
    embed_dim: int | None = 64
    hidden_dim: int | None = 128
    attention_dim: int | None = 64
    dropout: float | None = 0.0
    config_overrides: dict[str, Any] = field(default_factory=dict)  # any other config field (must exist)
    # Vision-language families (training/pretrained.py): local Hugging Face folders, the tokenizer
    # ("train": a byte-level BPE learned on the train captions; a folder: that tokenizer; None: the
    # family's default) and gradient accumulation (micro-batches per optimizer step).
    vision_model: str | None = None
    text_model: str | None = None
    base_model: str | None = None
    tokenizer: str | None = None
    tokenizer_vocab_size: int = 8000
    grad_accum: int = 1
    decode_max_len: int = 24  # greedy decoding length for validation BLEU-4 (and SCST sampling)
    # Self-critical sequence training (training/scst.py, CNN+LSTM families): after cross-entropy,
    # `scst_epochs` epochs of REINFORCE with CIDEr-D rewards on `scst_samples` sampled captions per
    # image, baseline the greedy caption's reward ("greedy") or the other samples' mean ("mean"),
    # at the constant learning rate `scst_lr`; the best epoch by validation CIDEr-D is kept.
    scst_epochs: int = 0
    scst_samples: int = 5
    scst_baseline: ScstBaseline = "greedy"
    scst_lr: float = 1e-3  # tuned on the tiny demo, like `lr`; ~5e-5 suits a pretrained backbone
    eval_batch_size: int = 64
    feature_batch_size: int = 32
    device: str = "cpu"
    progress_bar: bool = True

    def validate(self) -> None:
        """Raise InputError (or UnknownNameError) on options no run can use."""
        check_tokenization(self.tokenization)
        parse_device(self.device)
        if self.early_stop_on not in EARLY_STOP_ON:
            raise UnknownNameError("early-stopping metric", str(self.early_stop_on), EARLY_STOP_ON)
        if self.scst_baseline not in SCST_BASELINES:
            raise UnknownNameError("SCST baseline", str(self.scst_baseline), SCST_BASELINES)
        if self.scst_epochs < 0 or self.scst_samples < 2 or not self.scst_lr > 0:
            raise InputError(
                "TrainOptions.scst_epochs must be non-negative, scst_samples at least 2 and scst_lr positive, got "
                f"{self.scst_epochs}, {self.scst_samples}, {self.scst_lr}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise UnknownNameError("learning-rate schedule", str(self.lr_schedule), LR_SCHEDULES)
        if self.warmup_steps < 0:
            raise InputError(f"TrainOptions.warmup_steps must be non-negative, got {self.warmup_steps}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise InputError(f"TrainOptions.decay_fraction must be in [0, 1], got {self.decay_fraction}")
        positive = (
            "epochs",
            "batch_size",
            "patience",
            "image_size",
            "decode_max_len",
            "eval_batch_size",
            "feature_batch_size",
            "min_freq",
            "grad_accum",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise InputError(f"TrainOptions.{name} must be at least 1, got {getattr(self, name)}")
        if self.tokenizer_vocab_size < 300:
            raise InputError(f"TrainOptions.tokenizer_vocab_size must be at least 300, got {self.tokenizer_vocab_size}")
        if self.max_len < 3:
            raise InputError(f"TrainOptions.max_len must leave room for one word, <bos> and <eos>, got {self.max_len}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.grad_clip >= 0):
            raise InputError("TrainOptions.lr must be positive, weight_decay and grad_clip non-negative")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise InputError(f"TrainOptions.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not (self.backbone_weights in ("pretrained", "random") or isinstance(self.backbone_weights, Path)):
            raise InputError(
                f"backbone_weights must be 'pretrained', 'random' or a Path, got {self.backbone_weights!r}"
            )

    def to_json(self) -> dict[str, Any]:
        """The options as JSON-ready values (paths as strings), for checkpoint meta."""
        return {
            name: str(value) if isinstance(value, Path) else value for name, value in dataclasses.asdict(self).items()
        }


@dataclass(frozen=True)
class TrainProgress:
    """Reported after every epoch (to the logger and to ``on_progress``)."""

    epoch: int
    epochs: int
    step: int  # optimizer steps so far
    steps: int  # optimizer steps if every epoch runs
    train_loss: float
    val_loss: float
    val_bleu4: float  # 0..1
    val_rouge_l: float  # 0..1
    elapsed: float  # seconds since training started
    best_epoch: int
    improved: bool
    # Self-critical epochs only (None during cross-entropy): mean CIDEr-D reward of the sampled and of the
    # greedy captions on train, and the validation CIDEr-D of greedy captions that picks the best epoch.
    phase: Literal["xe", "scst"] = "xe"
    mean_reward: float | None = None
    greedy_reward: float | None = None
    val_cider_d: float | None = None


@dataclass(frozen=True)
class TrainResult:
    """Where the best checkpoint is and how the run went."""

    out_dir: Path
    best_epoch: int
    val_loss: float  # of the best epoch
    val_bleu4: float  # of the best epoch, 0..1
    val_rouge_l: float  # of the best epoch, 0..1
    history: list[TrainProgress]
    vocab_size: int  # ids of the text codec
    seconds: float
    stopped_early: bool
    codec_kind: str  # the text codec saved with the checkpoint ("vocab": a Vocabulary)
    codec_file: Path  # where it is (``out_dir / "vocab.json"`` for a vocabulary)
