"""Caption encoding, padding, shifting and masks for teacher forcing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.data.vocab import BOS_ID, EOS_ID, PAD_ID, Vocabulary
from vicap_jobs.training.batches import (
    batch_for_captions,
    batch_for_images,
    collate,
    encode_captions,
    index_batches,
    tokenize_samples,
)


def test_collate_shifts_pads_and_masks() -> None:
    batch = collate([[BOS_ID, 7, 8, 9, EOS_ID], [BOS_ID, 5, EOS_ID]], [0, 1])
    assert batch.tokens_in.tolist() == [[BOS_ID, 7, 8, 9], [BOS_ID, 5, EOS_ID, PAD_ID]]
    assert batch.targets.tolist() == [[7, 8, 9, EOS_ID], [5, EOS_ID, PAD_ID, PAD_ID]]
    assert batch.mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert batch.n_tokens == 6
    assert batch.tokens_in.dtype == batch.targets.dtype == torch.long
    assert batch.image_row.tolist() == [0, 1]


def test_collate_pads_to_longest_in_batch_only() -> None:
    batch = collate([[BOS_ID, 4, EOS_ID]] * 3, [0, 0, 0])
    assert batch.tokens_in.shape == (3, 2)  # not to a global max_len
    assert bool(batch.mask.all())


def test_collate_rejects_empty() -> None:
    with pytest.raises(ValueError):
        collate([], [])


def samples() -> list[CaptionSample]:
    return [
        CaptionSample(1, Path("a.png"), ("Hai cầu thủ đá bóng.", "cầu thủ")),
        CaptionSample(2, Path("b.png"), ("  ...  ",)),  # nothing left after normalization
        CaptionSample(3, Path("c.png"), ("một cầu thủ áo đỏ chạy trên sân cỏ xanh",)),
    ]


def test_encode_keeps_image_rows_and_cuts_long_captions() -> None:
    tokens = tokenize_samples(samples(), "syllable")
    vocab = Vocabulary.build((t for caps in tokens for t in caps), tokenization="syllable")
    encoded = encode_captions(tokens, vocab, max_len=6)
    assert encoded.n_images == 3
    assert encoded.captions_of_image == [[0, 1], [], [2]]
    assert encoded.image_row == [0, 0, 2]
    assert all(ids[0] == BOS_ID and ids[-1] == EOS_ID and len(ids) <= 6 for ids in encoded.ids)
    assert vocab.decode(encoded.ids[0]) == ["hai", "cầu", "thủ", "đá"]  # cut to max_len - 2 words


def test_batch_for_images_gathers_all_captions_with_local_rows() -> None:
    tokens = tokenize_samples(samples(), "syllable")
    vocab = Vocabulary.build((t for caps in tokens for t in caps), tokenization="syllable")
    encoded = encode_captions(tokens, vocab, max_len=32)
    batch = batch_for_images(encoded, [2, 0])
    assert batch.image_row.tolist() == [0, 1, 1]  # image 2 has one caption, image 0 two
    assert batch.tokens_in.shape[0] == 3
    words = [vocab.token_id(t) for t in tokens[2][0]]
    assert batch.tokens_in[0][batch.mask[0]].tolist() == [BOS_ID, *words]
    assert batch.targets[0][batch.mask[0]].tolist() == [*words, EOS_ID]


def test_batch_for_captions_runs_each_image_once() -> None:
    tokens = tokenize_samples(samples(), "syllable")
    vocab = Vocabulary.build((t for caps in tokens for t in caps), tokenization="syllable")
    encoded = encode_captions(tokens, vocab, max_len=32)
    rows, batch = batch_for_captions(encoded, [1, 2, 0])  # captions of images 0, 2, 0
    assert rows == [0, 2]
    assert batch.image_row.tolist() == [0, 1, 0]
    assert batch.tokens_in[1][batch.mask[1]].tolist() == encoded.ids[2][:-1]


def test_index_batches_cover_all_and_shuffle_reproducibly() -> None:
    assert list(index_batches(5, 2)) == [[0, 1], [2, 3], [4]]
    one = list(index_batches(10, 3, generator=torch.Generator().manual_seed(1)))
    two = list(index_batches(10, 3, generator=torch.Generator().manual_seed(1)))
    assert one == two and sorted(i for b in one for i in b) == list(range(10))
