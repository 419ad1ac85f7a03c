"""Self-critical sequence training (training/scst.py): the loss, baselines, rewards, the phase in train_lstm, the CLI.

The must-show (slow) trains the cnn-lstm family on the synthetic set for 3 seeds and checks that
SCST after cross-entropy raises test CIDEr-D by more than the spread of the cross-entropy seeds.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from vicap_jobs.cli.train_cmd import train as train_command
from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.data.synth import generate_synth
from vicap_jobs.errors import InputError, UnknownNameError
from vicap_jobs.metrics.cider import CiderD
from vicap_jobs.metrics.scores import score_captions
from vicap_jobs.models.checkpoint import load_checkpoint
from vicap_jobs.models.decoding import sample_decode, sampled_captions
from vicap_jobs.training import lstm as lstm_module
from vicap_jobs.training import scst as scst_module
from vicap_jobs.training.batches import encode_captions
from vicap_jobs.training.lstm import train_lstm
from vicap_jobs.training.options import TrainOptions, TrainProgress
from vicap_jobs.training.scst import CaptionRewards, baseline_rewards, scst_loss, train_references

from .test_lstm import tiny_options
from .test_must_show import greedy_captions, read_split

Splits = tuple[list[CaptionSample], list[CaptionSample]]
BOS, EOS, VOCAB = 1, 2, 6


def table_policy(theta: torch.Tensor):  # noqa: ANN201
    """A step function whose logits are ``theta[previous token]`` (V, V): a learnable bigram policy."""

    def step(tokens: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        return theta[tokens], state

    return step


def caption_log_prob(theta: torch.Tensor, ids: list[int]) -> float:
    """log p(ids, EOS) under the bigram policy."""
    log_probs = torch.log_softmax(theta.detach(), dim=-1)
    previous, total = BOS, 0.0
    for token in [*ids, EOS]:
        total += float(log_probs[previous, token])
        previous = token
    return total


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_one_step_raises_the_log_prob_of_a_sample_above_its_baseline(advantage: float) -> None:
    """Reward above the baseline: the sample becomes more likely after one step; below: less likely."""
    torch.manual_seed(0)
    theta = torch.randn(VOCAB, VOCAB, requires_grad=True)
    state = (torch.zeros(8, 1),)
    tokens, log_probs, mask = sample_decode(
        table_policy(theta), state, batch_size=8, bos_id=BOS, eos_id=EOS, max_len=5,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    captions = sampled_captions(tokens, EOS)
    target = captions[0]
    rewards = torch.tensor([advantage] + [0.0] * 7)  # only sample 0 differs from the baseline
    others_same = [row for row, ids in enumerate(captions) if ids == target and row > 0]
    rewards[others_same] = advantage  # identical samples get the identical reward
    before = caption_log_prob(theta, target)
    loss = scst_loss(log_probs, mask, rewards, torch.zeros(8))
    loss.backward()
    with torch.no_grad():
        theta -= 0.5 * theta.grad
    after = caption_log_prob(theta, target)
    assert (after > before) if advantage > 0 else (after < before)


def test_loss_ignores_log_probs_after_eos() -> None:
    """Positions after a sample's EOS get no gradient and do not change the loss value."""
    log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    rewards, baseline = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    loss = scst_loss(log_probs, mask, rewards, baseline)
    assert float(loss.detach()) == pytest.approx(-((1.0 * -3.0) + (-1.0 * -1.5)) / 2)
    loss.backward()
    assert log_probs.grad is not None
    assert log_probs.grad.tolist() == [[-0.5, -0.5, 0.0], [0.5, 0.5, 0.5]]


def test_baselines_greedy_and_mean_of_the_other_samples() -> None:
    rewards = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    greedy = np.array([1.5, 2.0])
    assert baseline_rewards("greedy", rewards, greedy).tolist() == [[1.5] * 3, [2.0] * 3]
    assert baseline_rewards("mean", rewards, greedy).tolist() == [[2.5, 2.0, 1.5], [3.0, 3.0, 0.0]]
    with pytest.raises(InputError):
        baseline_rewards("mean", rewards[:, :1], greedy)


def test_rewards_are_cider_d_of_ids_and_memoized_per_image() -> None:
    """Rewards equal CiderD on the same references; a caption seen before for that image is not scored again."""
    references = {0: [[5, 6, 7, 8], [5, 6, 9]], 1: [[10, 11, 12], [10, 13]], 2: [[14, 15], [14, 16, 17]]}
    rewards = CaptionRewards(references)
    calls: list[int] = []
    score = rewards.cider.score

    def counting(key: int, candidates: Any) -> Any:
        calls.append(len(candidates))
        return score(key, candidates)

    rewards.cider.score = counting  # type: ignore[method-assign]
    samples = [[5, 6, 7, 8], [5, 6, 7, 8], [10, 11], []]
    got = rewards.score(0, samples)
    expected = CiderD(references).score(0, samples)
    assert np.allclose(got, expected) and got[0] > got[2] and got[3] == 0.0
    assert calls == [3]  # three distinct captions
    assert np.allclose(rewards.score(0, [[10, 11], [5, 6, 9]]), CiderD(references).score(0, [[10, 11], [5, 6, 9]]))
    assert calls == [3, 1]  # only [5, 6, 9] was new


def test_train_references_strip_bos_and_eos() -> None:
    from vicap_jobs.data.vocab import Vocabulary

    vocab = Vocabulary.build([["a", "b"], ["c"]], min_freq=1, tokenization="syllable")
    encoded = encode_captions([[["a", "b"], ["c"]], [["b"]]], vocab, max_len=10)
    refs = train_references(encoded)
    assert refs == {0: [vocab.encode(["a", "b"], max_len=10)[1:-1], [vocab.encode(["c"], max_len=10)[1]]], 1: [
        vocab.encode(["b"], max_len=10)[1:-1]
    ]}  # fmt: skip
    assert all(BOS not in ids and EOS not in ids for captions in refs.values() for ids in captions)


def test_options_validate_scst_fields() -> None:
    TrainOptions(scst_epochs=3, scst_baseline="mean").validate()
    with pytest.raises(UnknownNameError):
        TrainOptions(scst_baseline="median").validate()  # type: ignore[arg-type]
    for bad in ({"scst_samples": 1}, {"scst_epochs": -1}, {"scst_lr": 0.0}):
        with pytest.raises(InputError):
            TrainOptions(**bad).validate()  # type: ignore[arg-type]


def scst_run(tmp_path: Path, splits: Splits, name: str, family: str = "cnn-lstm", **changes: object):  # noqa: ANN201
    train, val = splits
    seen: list[TrainProgress] = []
    options = tiny_options(finetune_backbone=False, epochs=2, scst_epochs=2, scst_samples=3, **changes)
    result = train_lstm(
        family=family,
        options=options,
        train=train,
        val=val,
        out_dir=tmp_path / name,
        cache_dir=tmp_path / "cache",
        dataset_key="colours",
        on_progress=seen.append,
    )
    return result, seen


@pytest.mark.parametrize(("family", "baseline"), [("cnn-lstm", "greedy"), ("cnn-lstm-attn", "mean")])
def test_scst_phase_reports_rewards_and_records_itself_in_the_checkpoint(
    tmp_path: Path, colour_set: Splits, family: str, baseline: str
) -> None:
    """Epochs 3-4 are SCST with rewards in progress; the manifest holds the options and the SCST history."""
    result, seen = scst_run(tmp_path, colour_set, "ckpt", family, scst_baseline=baseline)
    assert [p.epoch for p in seen] == [1, 2, 3, 4] and [p.phase for p in seen] == ["xe", "xe", "scst", "scst"]
    assert all(p.mean_reward is None for p in seen[:2])
    assert all(
        p.mean_reward is not None and p.greedy_reward is not None and p.val_cider_d is not None for p in seen[2:]
    )
    assert seen[-1].steps == seen[-1].step == 2 * 64 // 8 + 2 * 32 // 8  # CE steps over captions, SCST over images
    assert result.history == seen and 1 <= result.best_epoch <= 4
    manifest = json.dumps(load_checkpoint(result.out_dir).manifest)
    meta = json.loads((result.out_dir / "config.json").read_text())
    text = json.dumps(meta)
    assert '"scst_epochs": 2' in text and f'"scst_baseline": "{baseline}"' in text and '"mean_reward"' in text
    assert '"epochs_run": 4' in text and "val_cider_d" in manifest


def test_scst_runs_are_deterministic_and_keep_the_best_epoch_by_val_cider_d(tmp_path: Path, colour_set: Splits) -> None:
    """Same seed, same weights and rewards; the kept epoch is the first best val CIDEr-D of CE start and SCST epochs."""
    result, _ = scst_run(tmp_path, colour_set, "a")
    again, _ = scst_run(tmp_path, colour_set, "b")
    first, second = load_file(result.out_dir / "model.safetensors"), load_file(again.out_dir / "model.safetensors")
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert [p.mean_reward for p in result.history] == [p.mean_reward for p in again.history]
    meta = json.loads((result.out_dir / "config.json").read_text())["meta"]
    candidates = [(meta["scst"]["start_val_cider_d"], meta["scst"]["start_epoch"])]
    candidates += [(p.val_cider_d, p.epoch) for p in result.history if p.phase == "scst"]
    best = max(value for value, _ in candidates)
    assert result.best_epoch == next(epoch for value, epoch in candidates if value == best)
    ce_only = train_lstm(
        family="cnn-lstm",
        options=tiny_options(finetune_backbone=False, epochs=2),
        train=colour_set[0],
        val=colour_set[1],
        out_dir=tmp_path / "ce",
        cache_dir=tmp_path / "cache",
        dataset_key="colours",
    )
    ce = load_file(ce_only.out_dir / "model.safetensors")
    kept_ce = result.best_epoch <= 2
    assert all(torch.equal(first[key], ce[key]) for key in first) == kept_ce


def test_each_scst_epoch_moves_the_decoder_and_not_the_frozen_backbone(
    tmp_path: Path, colour_set: Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With weight decay off, only the reward-weighted gradient changes weights: decoder yes, frozen backbone no."""
    changed: list[set[str]] = []
    original = scst_module.ScstEpoch.run

    def recording(self: scst_module.ScstEpoch, *args: Any) -> tuple[float, float, float]:
        before = {key: value.clone() for key, value in self.trainer.model.state_dict().items()}
        out = original(self, *args)
        after = self.trainer.model.state_dict()
        changed.append({key for key in before if not torch.equal(before[key], after[key])})
        return out

    monkeypatch.setattr(scst_module.ScstEpoch, "run", recording)
    scst_run(tmp_path, colour_set, "ckpt", weight_decay=0.0)
    assert len(changed) == 2
    for keys in changed:
        assert {"output.weight", "lstm.weight_hh_l0", "embedding.weight"} <= keys
        assert not any(key.startswith("backbone.") for key in keys)


def test_cli_refuses_scst_for_families_that_cannot_sample_yet(tmp_path: Path) -> None:
    """A vision-language family with --scst-epochs: a one-line usage error naming SCST and the family."""
    runner = CliRunner()
    result = runner.invoke(
        train_command,
        ["m", "--family", "blip", "--base-model", str(tmp_path), "--dataset", "d", "--scst-epochs", "2"],
    )
    assert result.exit_code == 2
    assert "SCST (--scst-epochs) is not available for the blip family yet" in result.output
    help_text = runner.invoke(train_command, ["--help"]).output
    assert "--scst-epochs" in help_text and "--scst-baseline" in help_text and "Example: vicap-jobs train" in help_text


# --- must show ---------------------------------------------------------------------------------------------

MUST_SHOW_IMAGES = 1000  # generated; training uses the first 300 train and 100 val images, testing all 60 test ones
MUST_SHOW_SEEDS = (0, 1, 2)


def must_show_options(seed: int) -> TrainOptions:
    """Tiny frozen random backbone (features cached), 8 cross-entropy epochs, then 15 SCST epochs, mean baseline."""
    return TrainOptions(
        epochs=8,
        image_size=64,
        finetune_backbone=False,
        seed=seed,
        scst_epochs=15,
        scst_baseline="mean",
        progress_bar=False,
    )


def test_cross_entropy_phase_of_an_scst_run_is_the_cross_entropy_only_run(tmp_path: Path, colour_set: Splits) -> None:
    """The must-show copies the checkpoint SCST starts from as its cross-entropy result: that equals a CE-only run."""
    copies = copy_cross_entropy_checkpoint_before_scst(tmp_path / "copied")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lstm_module, "run_scst", copies)
        scst_run(tmp_path, colour_set, "scst")
    ce_only = train_lstm(
        family="cnn-lstm",
        options=tiny_options(finetune_backbone=False, epochs=2),
        train=colour_set[0],
        val=colour_set[1],
        out_dir=tmp_path / "ce",
        cache_dir=tmp_path / "cache",
        dataset_key="colours",
    )
    copied, ce = load_file(tmp_path / "copied" / "model.safetensors"), load_file(ce_only.out_dir / "model.safetensors")
    assert all(torch.equal(copied[key], ce[key]) for key in ce)


def copy_cross_entropy_checkpoint_before_scst(destination: Path):  # noqa: ANN201
    """A stand-in for lstm.run_scst that copies the cross-entropy checkpoint, then runs the real SCST phase."""
    real = lstm_module.run_scst

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        shutil.copytree(kwargs["out_dir"], destination)
        return real(*args, **kwargs)

    return wrapped


def spread(values: list[float]) -> float:
    return max(values) - min(values)


def cider_of(predictions: dict[int, str], samples: list[CaptionSample]) -> float:
    references = {sample.image_id: list(sample.captions) for sample in samples}
    cider = score_captions(predictions, references, tokenization="syllable").cider_d
    assert cider is not None
    return cider


@pytest.mark.slow
def test_must_show_scst_raises_test_cider_d_beyond_the_seed_spread(tmp_path: Path) -> None:
    """Mean test CIDEr-D of CE+SCST minus mean of CE-only exceeds the spread (max - min) of EITHER group's 3 seeds."""
    root = tmp_path / "synth"
    generate_synth(root, n_images=MUST_SHOW_IMAGES, seed=0, size=64)
    train, _ = read_split(root, "train")
    val, _ = read_split(root, "val")
    test, _ = read_split(root, "test")
    train, val = train[:300], val[:100]
    ce_scores, scst_scores = [], []
    started = time.perf_counter()
    for seed in MUST_SHOW_SEEDS:
        options = must_show_options(seed)
        ce_dir = tmp_path / f"ce-{seed}"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(lstm_module, "run_scst", copy_cross_entropy_checkpoint_before_scst(ce_dir))
            result = train_lstm(
                family="cnn-lstm",
                options=options,
                train=train,
                val=val,
                out_dir=tmp_path / f"scst-{seed}",
                cache_dir=tmp_path / "cache",
                dataset_key="viic-synth-must-show",
            )
        ce_scores.append(cider_of(greedy_captions(ce_dir, test, options.decode_max_len), test))
        scst_scores.append(cider_of(greedy_captions(result.out_dir, test, options.decode_max_len), test))
    gain = statistics.mean(scst_scores) - statistics.mean(ce_scores)
    message = (
        f"test CIDEr-D on {len(test)} images, seeds {MUST_SHOW_SEEDS}: CE {[round(s, 4) for s in ce_scores]} "
        f"(mean {statistics.mean(ce_scores):.4f}, spread {spread(ce_scores):.4f}); CE+SCST "
        f"{[round(s, 4) for s in scst_scores]} (mean {statistics.mean(scst_scores):.4f}, spread "
        f"{spread(scst_scores):.4f}); gain {gain:.4f}; {time.perf_counter() - started:.0f} s"
    )
    print("\n" + message)
    assert gain > max(spread(ce_scores), spread(scst_scores)), message
