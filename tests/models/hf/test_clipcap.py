"""clipcap beyond the shared contract: mappers, position limits, what is frozen, the feature cache, CLIP folders, GPT-2's tokenizer.

Every model is a tiny random CLIP + GPT-2 written with ``save_pretrained``
(``tiny_clipcap``) and trained through ``train_pretrained`` (the code users run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.models.hf.tiny_clipcap import tiny_clip_model, tiny_clip_vision, tiny_gpt2
from tests.training.conftest import make_colour_set
from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.errors import InputError, UnknownNameError
from vicap_jobs.models import clipcap
from vicap_jobs.models.checkpoint import load_checkpoint
from vicap_jobs.models.clipcap import ClipCapCaptioner, ClipCapConfig, MLPMapper, TransformerMapper
from vicap_jobs.models.decoding import greedy_decode
from vicap_jobs.models.hf_codec import HFTokenizerCodec, load_tokenizer, train_caption_tokenizer
from vicap_jobs.training.features import FeatureKey, cached_features, load_pixels, module_digest
from vicap_jobs.training.options import TrainOptions, TrainResult
from vicap_jobs.training.pretrained import train_pretrained

CAPTIONS = ["một bức ảnh màu đỏ", "ảnh nền xanh trơn", "một bức ảnh màu vàng", "ảnh nền đen trơn"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrained")
    return {
        "clip": tiny_clip_vision(root / "clip"),
        "clip_model": tiny_clip_model(root / "clip_model"),
        "gpt2": tiny_gpt2(root / "gpt2"),
        "gpt2_bare": tiny_gpt2(root / "gpt2_bare", with_tokenizer=False),
        "gpt2_short": tiny_gpt2(root / "gpt2_short", n_positions=16),
    }


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> list[CaptionSample]:
    return make_colour_set(tmp_path_factory.mktemp("colours"), 24)


def options(folders: dict[str, Path], *, clip: str = "clip", gpt2: str = "gpt2", **changes: Any) -> TrainOptions:
    overrides = changes.pop("config_overrides", {})
    values: dict[str, Any] = dict(
        epochs=4,
        lr=3e-3,
        batch_size=16,
        warmup_steps=2,
        tokenizer_vocab_size=300,
        decode_max_len=8,
        max_len=12,
        progress_bar=False,
    )
    values.update(changes)
    return TrainOptions(
        **values, vision_model=str(folders[clip]), text_model=str(folders[gpt2]), config_overrides=overrides
    )


def train(opts: TrainOptions, samples: list[CaptionSample], root: Path) -> TrainResult:
    return train_pretrained(
        family="clipcap",
        options=opts,
        train=samples[:20],
        val=samples[20:],
        out_dir=root / "checkpoint",
        cache_dir=root / "cache",
        dataset_key="colours",
    )


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[ClipCapCaptioner, dict[str, torch.Tensor]]]]:
    """Every clipcap model train_pretrained builds, with a copy of its weights as built (before training)."""
    seen: list[tuple[ClipCapCaptioner, dict[str, torch.Tensor]]] = []
    original = clipcap.FAMILY.build

    def spy(config: ClipCapConfig, **kwargs: Any) -> ClipCapCaptioner:
        model = original(config, **kwargs)
        seen.append((model, {name: t.detach().clone() for name, t in model.state_dict().items()}))
        return model

    monkeypatch.setattr(clipcap, "FAMILY", dataclasses.replace(clipcap.FAMILY, build=spy))
    yield seen


def codec_of(captions: list[str] = CAPTIONS) -> HFTokenizerCodec:
    return train_caption_tokenizer(captions, vocab_size=300)


# --- mappers -------------------------------------------------------------------------------


@pytest.mark.parametrize("mapper", ["mlp", "transformer"])
def test_mappers_turn_one_embedding_into_prefix_length_vectors_of_gpt2_width(mapper: str) -> None:
    config = ClipCapConfig(mapping_type=mapper, prefix_length=5, clip_length=3, mapper_layers=2, mapper_heads=4)
    module = clipcap.MAPPERS[mapper](config, 24, 32)
    embedding = torch.randn(3, 24)  # (B, D_clip)
    prefix = module(embedding)
    assert prefix.shape == (3, 5, 32)  # (B, P, D_gpt2)
    assert not torch.allclose(prefix[0], prefix[1])  # each image its own prefix


def test_the_mlp_mapper_is_the_papers_shape() -> None:
    mapper = MLPMapper(24, 32, prefix_length=10)
    layers = [m for m in mapper.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in layers] == [(24, 160), (160, 320)]
    assert isinstance(mapper.net[1], torch.nn.Tanh)


def test_the_transformer_mapper_reads_the_image_through_the_learned_constants() -> None:
    mapper = TransformerMapper(24, 32, 4, clip_length=3, layers=2, heads=4)
    assert mapper.prefix_const.shape == (4, 32) and mapper.prefix_const.requires_grad
    assert len(mapper.transformer.layers) == 2
    one = torch.randn(1, 24)
    other = torch.randn(1, 24)
    assert not torch.allclose(mapper(one), mapper(other))  # the image reaches the constants' positions


def test_config_refuses_unknown_mapper_and_nonpositive_sizes() -> None:
    with pytest.raises(UnknownNameError, match="mlp, transformer"):
        ClipCapConfig(mapping_type="lstm").validate()
    with pytest.raises(InputError, match="prefix_length must be at least 1"):
        ClipCapConfig(prefix_length=0).validate()


# --- building from folders ------------------------------------------------------------------


def test_default_tokenizer_is_the_gpt2_folders_own_else_train(folders: dict[str, Path]) -> None:
    assert ClipCapConfig(text_model=str(folders["gpt2"])).default_tokenizer() == str(folders["gpt2"].resolve())
    assert ClipCapConfig(text_model=str(folders["gpt2_bare"])).default_tokenizer() == "train"
    assert ClipCapConfig().default_tokenizer() == "train"


def test_gpt2s_own_tokenizer_pads_and_starts_with_eos_and_keeps_the_embeddings(folders: dict[str, Path]) -> None:
    codec = HFTokenizerCodec(load_tokenizer(folders["gpt2"]))
    assert codec.pad_id == codec.eos_id == codec.bos_id  # <|endoftext|>: GPT-2 has no pad token
    assert codec.banned_ids == ()  # nothing to ban: every special id is the one that stops
    config = ClipCapConfig(vision_model=str(folders["clip"]), text_model=str(folders["gpt2"]))
    model = clipcap.build(config, codec=codec)
    from transformers import GPT2LMHeadModel

    pretrained = GPT2LMHeadModel.from_pretrained(str(folders["gpt2"]))
    assert not model.config.new_embeddings
    torch.testing.assert_close(model.gpt2.transformer.wte.weight, pretrained.transformer.wte.weight)


def test_a_trained_tokenizer_gets_fresh_tied_embeddings_of_its_size(folders: dict[str, Path]) -> None:
    codec = codec_of()
    config = ClipCapConfig(vision_model=str(folders["clip"]), text_model=str(folders["gpt2"]), freeze_text=True)
    model = clipcap.build(config, codec=codec)
    wte = model.gpt2.get_input_embeddings()
    assert model.config.new_embeddings and wte.num_embeddings == len(codec) == model.gpt2.config.vocab_size
    assert model.gpt2.lm_head.weight is wte.weight
    assert 0.015 < float(wte.weight.detach().std()) < 0.025  # drawn afresh, N(0, 0.02)
    assert wte.weight.requires_grad  # the new ids must be learned although GPT-2 is frozen
    assert not any(p.requires_grad for p in model.clip.parameters())  # freeze_vision is the default
    assert not any(p.requires_grad for p in model.gpt2.transformer.h.parameters())
    assert model.gpt2.config.eos_token_id == codec.eos_id and model.gpt2.config.pad_token_id == codec.pad_id


def test_wrong_folders_are_one_line(folders: dict[str, Path]) -> None:
    codec = codec_of()
    swapped = ClipCapConfig(vision_model=str(folders["gpt2"]), text_model=str(folders["gpt2"]))
    with pytest.raises(InputError, match="is not a CLIP model \\(model_type 'gpt2'\\)") as info:
        clipcap.build(swapped, codec=codec)
    assert "\n" not in str(info.value)
    clip_as_text = ClipCapConfig(vision_model=str(folders["clip"]), text_model=str(folders["clip"]))
    with pytest.raises(InputError, match="is not a GPT-2 model"):
        clipcap.build(clip_as_text, codec=codec)


def test_prefix_plus_caption_longer_than_gpt2s_positions_is_one_line(
    folders: dict[str, Path], colours: list[CaptionSample], tmp_path: Path
) -> None:
    # 16 positions: a prefix of 14 leaves room for BOS + EOS only; "một bức ảnh màu đỏ" is 5 more ids.
    opts = options(folders, gpt2="gpt2_short", epochs=1, config_overrides={"prefix_length": 14})
    with pytest.raises(InputError) as info:
        train(opts, colours, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "prefix of 14 plus" in message and "16 positions" in message and "max_len" in message
    with pytest.raises(InputError, match="leaves no room for a caption"):
        clipcap.build(
            ClipCapConfig(vision_model=str(folders["clip"]), text_model=str(folders["gpt2_short"]), prefix_length=15),
            codec=codec_of(),
        )


# --- training ---------------------------------------------------------------------------------


def test_frozen_clip_is_unchanged_and_its_embeddings_come_from_the_feature_cache(
    folders: dict[str, Path], colours: list[CaptionSample], tmp_path: Path
) -> None:
    result = train(options(folders), colours, tmp_path)
    loaded = load_checkpoint(result.out_dir)
    model = loaded.model
    from transformers import CLIPVisionModel

    pretrained = CLIPVisionModel.from_pretrained(str(folders["clip"]))
    for name, tensor in pretrained.state_dict().items():
        torch.testing.assert_close(model.clip.state_dict()[name], tensor, rtol=0, atol=0, msg=name)

    files = sorted(p.name for p in (tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 2 and files[0].startswith("colours__train__clipcap__32px")
    # The key the trainer used is the trained model's own: asking again computes nothing.
    key = FeatureKey("colours", "train", module_digest(model.feature_extractor()), loaded.preprocessing, "clipcap")

    def never(pixels: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the cache should have every train image")

    table = cached_features(key=key, samples=colours[:20], extractor=never, cache_dir=tmp_path / "cache")
    assert table.extracted == 0 and table.features.shape == (20, 32)  # (N, D_clip) CLIP pooled embeddings
    with torch.no_grad():
        fresh = model.extract_features(load_pixels(colours[:4], loaded.preprocessing))
    torch.testing.assert_close(table.features[:4].float(), fresh, rtol=1e-2, atol=1e-2)  # stored as fp16


@pytest.mark.parametrize("tokenizer", ["own", "train"])
def test_freeze_text_keeps_gpt2s_blocks_while_the_mapper_learns(
    tokenizer: str,
    folders: dict[str, Path],
    colours: list[CaptionSample],
    tmp_path: Path,
    built: list[tuple[ClipCapCaptioner, dict[str, torch.Tensor]]],
) -> None:
    opts = options(
        folders, epochs=2, tokenizer=None if tokenizer == "own" else "train", config_overrides={"freeze_text": True}
    )
    result = train(opts, colours, tmp_path)
    (_, before), after = built[0], load_checkpoint(result.out_dir).model.state_dict()

    def changed(prefix: str) -> list[bool]:
        return [not torch.equal(before[n], after[n]) for n in before if n.startswith(prefix)]

    assert not any(changed("gpt2.transformer.h.")) and not any(changed("gpt2.transformer.wpe"))
    assert not any(changed("clip."))
    assert all(changed("mapper."))
    assert any(changed("gpt2.transformer.wte")) == (tokenizer == "train")  # only new ids' embeddings learn


def test_a_full_clip_model_folder_gives_clips_projected_image_embeds(
    folders: dict[str, Path], colours: list[CaptionSample], tmp_path: Path
) -> None:
    result = train(options(folders, clip="clip_model", epochs=1), colours, tmp_path)
    loaded = load_checkpoint(result.out_dir)
    model = loaded.model
    assert model.config.image_embedding == "projected" and model.clip_dim == 24
    from transformers import CLIPModel

    reference = CLIPModel.from_pretrained(str(folders["clip_model"])).eval()
    pixels = load_pixels(colours[:3], loaded.preprocessing)
    with torch.no_grad():
        expected = reference.get_image_features(pixel_values=pixels).pooler_output  # (B, projection_dim)
        torch.testing.assert_close(model.extract_features(pixels), expected)
    saved = (result.out_dir / "hf" / "clip" / "config.json").read_text(encoding="utf-8")
    assert "CLIPVisionModelWithProjection" in saved and "text_config" not in saved  # the text tower is dropped


def test_gpt2s_own_tokenizer_still_learns_to_stop(
    folders: dict[str, Path], colours: list[CaptionSample], tmp_path: Path
) -> None:
    """pad == eos: the EOS after each caption is scored (masked by caption length), so greedy captions end."""
    # 30 epochs (~2 s): enough for the frozen random CLIP's colour cues to reach the captions.
    result = train(options(folders, epochs=30, early_stop_on="val_bleu4", patience=30), colours, tmp_path)
    loaded = load_checkpoint(result.out_dir)
    codec, model = loaded.codec, loaded.model
    assert codec.pad_id == codec.eos_id and not model.config.new_embeddings
    max_len = 16
    with torch.no_grad():
        features = model.extract_features(load_pixels(colours[20:], loaded.preprocessing))
        sequences = greedy_decode(
            model.step, model.start(features), batch_size=4, bos_id=codec.bos_id, eos_id=codec.eos_id, max_len=max_len
        )
    captions = [codec.decode_caption(ids) for ids in sequences]
    assert all(len(ids) < max_len - 1 for ids in sequences), captions  # EOS came well before the limit
    truths = [set(sample.captions) for sample in colours[20:]]
    assert sum(caption in truth for caption, truth in zip(captions, truths, strict=True)) >= 3, captions


def test_a_mapper_that_does_not_match_the_config_is_one_line(
    folders: dict[str, Path], colours: list[CaptionSample], tmp_path: Path
) -> None:
    result = train(options(folders, epochs=1), colours, tmp_path)
    hf_dir = result.out_dir / "hf"
    config = load_checkpoint(result.out_dir).model.config
    wrong = dataclasses.replace(config, prefix_length=config.prefix_length + 1)
    with pytest.raises(InputError, match="cannot load the ClipCap mapper") as info:
        clipcap.load_pretrained(hf_dir, wrong)
    assert "\n" not in str(info.value)
    (hf_dir / "config.json").write_text('{"model_type": "gpt2"}', encoding="utf-8")
    with pytest.raises(InputError, match="not a ClipCap checkpoint"):
        clipcap.load_pretrained(hf_dir, config)
