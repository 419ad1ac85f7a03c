"""The vision-language family contract, checked on every family in ``recipes.RECIPES``.

Per family (and config variant): tiny random pretrained folders are written with
``save_pretrained``; the family is trained through ``train_pretrained`` (the code
``vicap-jobs train`` runs) on a tiny colour set; the checkpoint is read back through
``load_checkpoint`` / ``load_engine``. It must: lower the training loss; keep its
tokenizer (diacritics intact) in the checkpoint; generate Vietnamese text with
every engine its registry line lists; give identical generations after a second
load; step-wise decoding must equal teacher forcing; its int8 engine must give
torch's greedy tokens (``tests/engines/int8_checks.py``: logits within 2 % of their
spread, a caption may differ only at a near-tie); a missing folder must be one line
naming the option.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.engines.int8_checks import check_int8_agrees
from tests.models.hf.recipes import RECIPES, recipe_variants, tiny_options
from tests.training.conftest import make_colour_set
from vicap_jobs.data.images import load_rgb
from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.engines import DecodeOptions, ModelArtifacts, load_engine
from vicap_jobs.errors import WeightsMissingError
from vicap_jobs.models.checkpoint import load_checkpoint
from vicap_jobs.models.hf_codec import HFTokenizerCodec
from vicap_jobs.models.pretrained import PretrainedCaptioner
from vicap_jobs.models.registry import get_family
from vicap_jobs.training.options import TrainResult
from vicap_jobs.training.pretrained import train_pretrained

VARIANTS = recipe_variants()
IDS = [f"{family}-{variant}" for family, variant in VARIANTS]
VIETNAMESE_LETTERS = set("ảàáạãăắằẳẵặâấầẩẫậđèéẻẽẹêếềểễệìíỉĩịòóỏõọôốồổỗộơớờởỡợùúủũụưứừửữựỳýỷỹỵ")


@dataclasses.dataclass(frozen=True)
class Trained:
    family: str
    result: TrainResult
    samples: list[CaptionSample]

    @property
    def artifacts(self) -> ModelArtifacts:
        return ModelArtifacts(self.result.out_dir)


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> list[CaptionSample]:
    return make_colour_set(tmp_path_factory.mktemp("colours"), 24)


@pytest.fixture(scope="module", params=VARIANTS, ids=IDS)
def trained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, colours: list[CaptionSample]
) -> Trained:
    family, variant = request.param
    recipe = RECIPES[family]
    root = tmp_path_factory.mktemp(f"{family}-{variant}".replace(" ", "-"))
    options = tiny_options(
        recipe.make(root / "pretrained"),
        recipe.overrides(variant, root / "pretrained"),
        **recipe.options.get(variant, {}),
    )
    result = train_pretrained(
        family=family,
        options=options,
        train=colours[:20],
        val=colours[20:],
        out_dir=root / "checkpoint",
        cache_dir=root / "cache",
        dataset_key="colours",
    )
    return Trained(family, result, colours)


def images(trained: Trained, n: int = 4) -> list[Any]:
    return [load_rgb(sample.image_path) for sample in trained.samples[:n]]


def test_training_lowers_the_loss(trained: Trained) -> None:
    history = trained.result.history
    assert history[-1].train_loss < history[0].train_loss
    assert trained.result.val_loss == min(h.val_loss for h in history)


def test_checkpoint_holds_manifest_model_and_tokenizer(trained: Trained) -> None:
    entries = {p.name for p in trained.result.out_dir.iterdir()}
    assert {"config.json", "hf", "tokenizer"} <= entries
    loaded = load_checkpoint(trained.result.out_dir)
    assert isinstance(loaded.model, PretrainedCaptioner) and not loaded.model.training
    assert isinstance(loaded.codec, HFTokenizerCodec)
    assert loaded.manifest["family"] == trained.family and loaded.manifest["layout"] == "hf"
    assert loaded.codec.round_trips("Mỹ Tho: những cầu thủ đá bóng ở sân vận động")  # unseen "ỹ" too


def test_every_engine_writes_vietnamese(trained: Trained) -> None:
    spec = get_family(trained.family)
    for name in spec.engine_names:
        captions = load_engine(name, trained.artifacts, decode=DecodeOptions(beam_size=2, max_len=8)).caption(
            images(trained)
        )
        assert len(captions) == 4 and all(captions), name
        assert any(set(caption) & VIETNAMESE_LETTERS for caption in captions), (name, captions)


def test_int8_greedy_tokens_equal_torch(trained: Trained) -> None:
    if "int8" not in get_family(trained.family).engines:
        pytest.skip(f"{trained.family} lists no int8 engine")
    decode = DecodeOptions(beam_size=1, max_len=8)
    fp32 = load_engine("torch", trained.artifacts, decode=decode)
    int8 = load_engine("int8", trained.artifacts, decode=decode)
    assert int8.precision == "int8" and int8.quantized  # really quantized, not a silent fp32 engine
    check_int8_agrees(int8, fp32, fp32.preprocess(images(trained, 8)))


def test_a_second_load_gives_identical_generations(trained: Trained) -> None:
    decode = DecodeOptions(beam_size=3, max_len=8)
    first = load_engine("torch", trained.artifacts, decode=decode).caption(images(trained))
    second = load_engine("torch", trained.artifacts, decode=decode).caption(images(trained))
    assert first == second


def test_step_by_step_logits_equal_teacher_forcing(trained: Trained) -> None:
    loaded = load_checkpoint(trained.result.out_dir)
    model, codec = loaded.model, loaded.codec
    pixels = torch.from_numpy(loaded.preprocessing.apply(images(trained, 2)))
    tokens = torch.tensor([codec.encode_caption("một bức ảnh màu đỏ")[:5]] * 2)  # (2, 5)
    with torch.no_grad():
        features = model.extract_features(pixels)
        forced = model(features, tokens)  # (2, 5, V)
        state = model.start(features)
        stepped = []
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state)
            stepped.append(logits)
    torch.testing.assert_close(torch.stack(stepped, dim=1), forced.float(), rtol=1e-4, atol=1e-5)


def test_engines_preprocess_by_the_checkpoint_policy(trained: Trained) -> None:
    policy = load_checkpoint(trained.result.out_dir).preprocessing
    engine = load_engine("torch", trained.artifacts)
    assert engine.preprocessing == policy
    np.testing.assert_array_equal(engine.preprocess(images(trained, 2)), policy.apply(images(trained, 2)))


@pytest.mark.parametrize("family", list(RECIPES))
def test_a_missing_pretrained_folder_is_one_line(family: str, tmp_path: Path, colours: list[CaptionSample]) -> None:
    recipe = RECIPES[family]
    inputs = recipe.make(tmp_path / "pretrained")
    inputs[recipe.missing_option] = str(tmp_path / "nowhere")
    with pytest.raises(WeightsMissingError) as info:
        train_pretrained(
            family=family,
            options=tiny_options(inputs, {}),
            train=colours[:4],
            val=colours[4:6],
            out_dir=tmp_path / "out",
            cache_dir=tmp_path / "cache",
            dataset_key="colours",
        )
    message = str(info.value)
    assert "\n" not in message and "nowhere does not exist" in message
    assert "--" + recipe.missing_option.replace("_", "-") in message


def test_images_left_without_captions_are_dropped_and_rows_renumbered(colours: list[CaptionSample]) -> None:
    from vicap_jobs.models.hf_codec import train_caption_tokenizer
    from vicap_jobs.training.pretrained import _Split

    codec = train_caption_tokenizer([c for s in colours for c in s.captions], vocab_size=300)
    empty = CaptionSample(999, colours[0].image_path, ("!!!", "..."))
    split = _Split([colours[0], empty, colours[1]], codec, max_len=12)
    assert [s.image_id for s in split.samples] == [colours[0].image_id, colours[1].image_id]
    assert split.encoded.captions_of_image == [[0, 1], [2, 3]] and split.encoded.image_row == [0, 0, 1, 1]
    assert split.encoded.ids[2] == codec.encode_caption(colours[1].captions[0], max_len=12)


def test_captions_cut_by_max_len_are_reported(colours: list[CaptionSample], caplog: pytest.LogCaptureFixture) -> None:
    from vicap_jobs.models.hf_codec import train_caption_tokenizer
    from vicap_jobs.training.pretrained import encode_split

    codec = train_caption_tokenizer([c for s in colours for c in s.captions], vocab_size=300)
    longest = max(len(codec.encode_text(c)) for s in colours for c in s.captions)
    encoded = encode_split(colours, codec, max_len=longest + 2)
    assert not caplog.records and all(ids[-1] == codec.eos_id for ids in encoded.ids)
    encode_split(colours, codec, max_len=4)
    assert "captions are longer than max_len=4 tokenizer ids" in caplog.text and "--max-len" in caplog.text
    cut = encode_split(colours, codec, max_len=4)
    assert all(len(ids) == 4 and ids[-1] == codec.eos_id for ids in cut.ids)


def test_label_smoothing_reaches_the_training_loss(colours: list[CaptionSample]) -> None:
    from vicap_jobs.models.hf_codec import train_caption_tokenizer
    from vicap_jobs.training.batches import batch_for_images
    from vicap_jobs.training.pretrained import caption_loss, encode_split

    codec = train_caption_tokenizer([c for s in colours for c in s.captions], vocab_size=300)
    encoded = encode_split(colours[:2], codec, max_len=12)
    batch = batch_for_images(encoded, [0, 1], pad_id=codec.pad_id)

    class Uniformish(torch.nn.Module):
        def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(*tokens.shape, len(codec))
            return logits.scatter(2, tokens.unsqueeze(2) % len(codec), 5.0)

    plain, _ = caption_loss(Uniformish(), torch.zeros(2, 1), batch, torch.device("cpu"))
    smoothed, _ = caption_loss(Uniformish(), torch.zeros(2, 1), batch, torch.device("cpu"), label_smoothing=0.1)
    assert smoothed.item() != pytest.approx(plain.item())
