"""Self-critical sequence training (Rennie et al., 2017) after cross-entropy: `run_scst`.

Per train image the decoder draws K captions from its softmax (`decoding.sample_decode`);
each gets a reward, its CIDEr-D against the image's train references (one `CiderD` on
the train references: document frequencies once, each image's reference vectors cached,
the K samples scored in one numpy call, and repeated captions of an image memoized).
The loss is REINFORCE with a baseline (`scst_loss`):
``-(reward - baseline) · Σ log p(token)`` over each sample's tokens up to and including
its EOS, averaged over samples. The baseline (`baseline_rewards`) is the reward of the
image's greedy caption ("greedy", the original SCST) or the mean reward of the image's
other samples ("mean", the "new SCST" that needs no greedy pass for the baseline).

The phase starts from the best cross-entropy epoch and keeps, by validation CIDEr-D of
greedy captions, the best of that epoch and every SCST epoch as the checkpoint (written and
swapped like the cross-entropy loop does). Every SCST epoch runs (no early stopping: the
rewards are noisy and a dip often recovers). Each epoch logs
and reports (`TrainProgress.phase == "scst"`) the mean sampled and greedy rewards.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vicap_jobs.data.vocab import PAD_ID, Vocabulary
from vicap_jobs.errors import InputError
from vicap_jobs.metrics.cider import CiderD
from vicap_jobs.metrics.scores import CaptionScores
from vicap_jobs.models.decoding import StepFn, ban_tokens, greedy_decode, sample_decode, sampled_captions
from vicap_jobs.models.lstm_common import LSTMCaptioner
from vicap_jobs.training.batches import EncodedCaptions, index_batches
from vicap_jobs.training.loop import _meta, make_optimizer, optimizer_step, save_best
from vicap_jobs.training.options import ScstBaseline, TrainOptions, TrainProgress, TrainResult

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
MEMO_PER_IMAGE = 512  # distinct sampled captions remembered per image before its memo is cleared


def scst_loss(log_probs: Tensor, mask: Tensor, rewards: Tensor, baseline: Tensor) -> Tensor:
    """Mean over samples of ``-(reward - baseline) · Σ_t log p(token_t)``, tokens after a sample's EOS masked.

    ``log_probs`` and ``mask`` are (S, T) from `sample_decode`, ``rewards`` and ``baseline`` (S,);
    the advantage carries no gradient.
    """
    advantage = (rewards - baseline).detach().to(log_probs.dtype)  # (S,)
    summed = (log_probs * mask.to(log_probs.dtype)).sum(dim=1)  # (S,)
    return -(advantage * summed).mean()


def baseline_rewards(kind: ScstBaseline, rewards: FloatArray, greedy: FloatArray) -> FloatArray:
    """Baseline of each sample, (B, K): the image's greedy reward, or the mean reward of its other K - 1 samples."""
    if kind == "greedy":
        return np.repeat(greedy[:, None], rewards.shape[1], axis=1)
    if kind == "mean":
        k = rewards.shape[1]
        if k < 2:
            raise InputError("the mean baseline needs at least 2 samples per image")
        return (rewards.sum(axis=1, keepdims=True) - rewards) / (k - 1)
    raise InputError(f"unknown SCST baseline {kind!r}; known: greedy, mean")


class CaptionRewards:
    """CIDEr-D rewards of id sequences against each image's references; scores memoized per image."""

    def __init__(self, references: Mapping[int, Sequence[Sequence[int]]]) -> None:
        self.cider: CiderD[int] = CiderD(references)
        self._memo: dict[int, dict[tuple[int, ...], float]] = {}

    def score(self, key: int, candidates: Sequence[Sequence[int]]) -> FloatArray:
        """CIDEr-D of each candidate of image `key`, shape (C,); only captions not seen before are computed."""
        memo = self._memo.setdefault(key, {})
        if len(memo) > MEMO_PER_IMAGE:
            memo.clear()
        wanted = [tuple(candidate) for candidate in candidates]
        missing = list(dict.fromkeys(c for c in wanted if c not in memo))
        if missing:
            memo.update(zip(missing, self.cider.score(key, missing).tolist(), strict=True))
        return np.array([memo[c] for c in wanted], dtype=np.float64)


def train_references(encoded: EncodedCaptions) -> dict[int, list[list[int]]]:
    """Per sample row, its encoded captions without BOS and EOS (the reward's references)."""
    return {row: [encoded.ids[i][1:-1] for i in captions] for row, captions in enumerate(encoded.captions_of_image)}


class ScstTrainer(Protocol):
    """What the SCST phase needs of a family trainer (``training.lstm.LSTMEpochs``)."""

    @property
    def model(self) -> LSTMCaptioner: ...

    @property
    def codec(self) -> Vocabulary: ...

    @property
    def train(self) -> Any: ...

    @property
    def n_train(self) -> int: ...

    @property
    def n_val(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def shuffler(self) -> torch.Generator: ...

    def image_features(self, split: Any, rows: list[int]) -> Tensor: ...

    def evaluate(self) -> tuple[float, CaptionScores]: ...

    def save(self, out_dir: Path, meta: dict[str, Any]) -> None: ...


class ScstEpoch:
    """One self-critical epoch over the train images of `trainer`."""

    def __init__(self, trainer: ScstTrainer, options: TrainOptions) -> None:
        self.trainer, self.options = trainer, options
        self.rewards = CaptionRewards(train_references(trainer.train.encoded))
        codec = trainer.codec
        self.bos_id, self.eos_id = codec.bos_id, codec.eos_id
        self.banned = tuple(sorted({PAD_ID, codec.bos_id} - {codec.eos_id}))
        self.generator = torch.Generator(device=trainer.device).manual_seed(options.seed + 2)
        self.steps = math.ceil(trainer.n_train / options.batch_size)

    def step_fn(self) -> StepFn:
        """The model's step without PAD and BOS (no caption contains them)."""
        return ban_tokens(self.trainer.model.step, self.banned)

    def run(
        self, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LambdaLR, bar: tqdm
    ) -> tuple[float, float, float]:
        """Optimizer steps over shuffled batches of images; (mean loss, mean sampled reward, mean greedy reward)."""
        trainer, options = self.trainer, self.options
        model, k = trainer.model, options.scst_samples
        loss_sum, reward_sum, greedy_sum, n_images = 0.0, 0.0, 0.0, 0
        for rows in index_batches(trainer.n_train, options.batch_size, generator=trainer.shuffler):
            features = trainer.image_features(trainer.train, rows)  # (B, C, h, w)
            model.eval()  # the greedy caption: the "greedy" baseline, and shown in progress with either baseline
            with torch.no_grad():
                greedy = greedy_decode(
                    self.step_fn(),
                    model.start(features),
                    batch_size=len(rows),
                    bos_id=self.bos_id,
                    eos_id=self.eos_id,
                    max_len=options.decode_max_len,
                )
            greedy_rewards = np.array(
                [self.rewards.score(row, [ids])[0] for row, ids in zip(rows, greedy, strict=True)]
            )
            model.train()
            state = tuple(part.repeat_interleave(k, dim=0) for part in model.start(features))  # (B*K, ...)
            tokens, log_probs, mask = sample_decode(
                self.step_fn(),
                state,
                batch_size=len(rows) * k,
                bos_id=self.bos_id,
                eos_id=self.eos_id,
                max_len=options.decode_max_len,
                generator=self.generator,
            )  # (B*K, T) each
            samples = sampled_captions(tokens, self.eos_id)
            rewards = np.stack([self.rewards.score(row, samples[i * k : (i + 1) * k]) for i, row in enumerate(rows)])
            baseline = baseline_rewards(options.scst_baseline, rewards, greedy_rewards)  # (B, K)
            loss = scst_loss(
                log_probs,
                mask,
                torch.as_tensor(rewards.reshape(-1), device=log_probs.device),
                torch.as_tensor(baseline.reshape(-1), device=log_probs.device),
            )
            optimizer_step(loss, model=model, optimizer=optimizer, schedule=schedule, options=options)
            loss_sum += loss.item() * len(rows)
            reward_sum += float(rewards.mean()) * len(rows)
            greedy_sum += float(greedy_rewards.mean()) * len(rows)
            n_images += len(rows)
            bar.update(1)
            bar.set_postfix(reward=f"{reward_sum / n_images:.3f}", greedy=f"{greedy_sum / n_images:.3f}")
        return loss_sum / n_images, reward_sum / n_images, greedy_sum / n_images


def run_scst(
    trainer: ScstTrainer,
    cross_entropy: TrainResult,
    *,
    family: str,
    options: TrainOptions,
    out_dir: Path,
    dataset_key: str,
    started: float,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Fine-tune the best cross-entropy model (loaded in `trainer.model`) for ``options.scst_epochs`` SCST epochs.

    Leaves at `out_dir` the best of the cross-entropy epoch and the SCST epochs by validation
    CIDEr-D, with the whole history (and the rewards) in its meta.
    """
    model: nn.Module = trainer.model
    epoch_runner = ScstEpoch(trainer, options)
    scst_options = dataclasses.replace(options, lr=options.scst_lr)
    optimizer = make_optimizer(model, scst_options)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # constant lr
    history = list(cross_entropy.history)
    best_epoch = cross_entropy.best_epoch
    _, start_scores = trainer.evaluate()
    start_cider = start_scores.cider_d or 0.0
    best_cider, best_state = start_cider, copy.deepcopy(model.state_dict())
    scst_log: list[dict[str, Any]] = []
    first, last = len(history) + 1, len(history) + options.scst_epochs
    steps_done = history[-1].step if history else 0
    total_steps = steps_done + epoch_runner.steps * options.scst_epochs
    log.info("%s SCST from epoch %d: val CIDEr-D %.4f", family, best_epoch, start_cider)

    def meta(stopped: bool) -> dict[str, Any]:
        data = _meta(options, dataset_key, history, best_epoch, stopped, trainer.n_train, trainer.n_val)
        data["scst"] = {
            "selected_by": "val_cider_d",
            "start_epoch": cross_entropy.best_epoch,
            "start_val_cider_d": start_cider,
            "baseline": options.scst_baseline,
            "samples": options.scst_samples,
            "lr": options.scst_lr,
            "epochs": scst_log,
        }
        return data

    bar = tqdm(total=epoch_runner.steps * options.scst_epochs, desc=f"scst {family}", disable=not options.progress_bar)
    try:
        for epoch in range(first, last + 1):
            bar.set_description(f"scst {family} epoch {epoch - first + 1}/{options.scst_epochs}")
            loss, reward, greedy = epoch_runner.run(optimizer, schedule, bar)
            steps_done += epoch_runner.steps
            val_loss, scores = trainer.evaluate()
            cider = scores.cider_d or 0.0
            improved = cider > best_cider
            if improved:
                best_cider, best_epoch = cider, epoch
                best_state = copy.deepcopy(model.state_dict())
            progress = TrainProgress(
                epoch=epoch,
                epochs=last,
                step=steps_done,
                steps=total_steps,
                train_loss=loss,
                val_loss=val_loss,
                val_bleu4=scores.bleu_4,
                val_rouge_l=scores.rouge_l,
                elapsed=time.perf_counter() - started,
                best_epoch=best_epoch,
                improved=improved,
                phase="scst",
                mean_reward=reward,
                greedy_reward=greedy,
                val_cider_d=cider,
            )
            history.append(progress)
            scst_log.append(
                {"epoch": epoch, "loss": loss, "mean_reward": reward, "greedy_reward": greedy, "val_cider_d": cider}
            )
            log.info(
                "%s SCST epoch %d/%d: mean reward %.4f, greedy reward %.4f, val CIDEr-D %.4f, val_bleu4 %.4f%s (%.1f s)",
                family,
                epoch - first + 1,
                options.scst_epochs,
                reward,
                greedy,
                cider,
                scores.bleu_4,
                " (best)" if improved else "",
                progress.elapsed,
            )
            if improved:
                save_best(out_dir, lambda folder: trainer.save(folder, meta(False)))
            if on_progress is not None:
                on_progress(progress)
    finally:
        bar.close()

    model.load_state_dict(best_state)
    save_best(out_dir, lambda folder: trainer.save(folder, meta(cross_entropy.stopped_early)))
    best = history[best_epoch - 1]
    return dataclasses.replace(
        cross_entropy,
        best_epoch=best_epoch,
        val_loss=best.val_loss,
        val_bleu4=best.val_bleu4,
        val_rouge_l=best.val_rouge_l,
        history=history,
        seconds=time.perf_counter() - started,
    )
