"""A train job's progress line, and where self-critical training is refused."""

from __future__ import annotations

import pytest

from vicap_jobs.errors import InputError
from vicap_jobs.services.training import progress_line
from vicap_jobs.training.options import TrainOptions, TrainProgress
from vicap_jobs.training.pretrained import check_pretrained_options


def _progress(**changes: object) -> TrainProgress:
    values: dict[str, object] = dict(
        epoch=9, epochs=23, step=90, steps=230, train_loss=1.25, val_loss=1.5, val_bleu4=0.4, val_rouge_l=0.5,
        elapsed=3.0, best_epoch=8, improved=True,
    )  # fmt: skip
    values.update(changes)
    return TrainProgress(**values)  # type: ignore[arg-type]


def test_cross_entropy_epochs_show_losses_and_scores_only() -> None:
    line = progress_line(_progress())
    assert line == "epoch 9/23 train loss 1.250 val loss 1.500 val BLEU-4 40.0 ROUGE-L 50.0"


def test_self_critical_epochs_add_the_rewards_and_validation_cider_d() -> None:
    line = progress_line(_progress(phase="scst", mean_reward=1.234, greedy_reward=1.1, val_cider_d=2.05))
    assert line.endswith("· SCST reward 1.234 (greedy 1.100) val CIDEr-D 2.050")


def test_a_family_that_cannot_sample_refuses_scst_before_anything_runs() -> None:
    with pytest.raises(InputError, match="SCST .* not available for the blip family"):
        check_pretrained_options("blip", TrainOptions(scst_epochs=2))
