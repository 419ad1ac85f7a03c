"""``vit-seq2seq`` beyond the shared contract: how the two halves are assembled and what is refused.

The contract suite (``test_pretrained_contract.py``) trains, saves, reloads and decodes
every variant; here: a seq2seq checkpoint's decoder keeps its pretrained weights, every
decoder layer cross-attends, the projection between unequal widths is applied and
trains, a frozen encoder stays unchanged and is cached, the text model's own tokenizer
keeps the embeddings, the preprocessing follows the encoder folder, and wrong folders
are one-line errors.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.models.hf.tiny_vit import tiny_gpt2, tiny_mbart, tiny_tokenizer, tiny_vit
from tests.training.conftest import make_colour_set
from vicap_jobs.errors import InputError
from vicap_jobs.models.checkpoint import load_checkpoint
from vicap_jobs.models.hf_codec import HFTokenizerCodec, train_caption_tokenizer
from vicap_jobs.models.vit_seq2seq import VitSeq2SeqCaptioner, VitSeq2SeqConfig, build, preprocessing
from vicap_jobs.training.options import TrainOptions
from vicap_jobs.training.pretrained import train_pretrained


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrained")
    return {
        "vit": tiny_vit(root / "vit"),
        "gpt2": tiny_gpt2(root / "gpt2", with_tokenizer=True),
        "gpt2-wide": tiny_gpt2(root / "gpt2-wide", hidden=48),
        "mbart": tiny_mbart(root / "mbart", with_tokenizer=True, logits_bias=True),
    }


@pytest.fixture(scope="module")
def trained_codec() -> HFTokenizerCodec:
    """A tokenizer learned on other text than the decoders' own: its ids mean nothing to them."""
    return train_caption_tokenizer(["xe buýt màu vàng trên đường phố", "con mèo nằm trên ghế sô pha"] * 4)


def make(folders: dict[str, Path], text: str, codec: HFTokenizerCodec, **config: Any) -> VitSeq2SeqCaptioner:
    return build(
        VitSeq2SeqConfig(vision_model=str(folders["vit"]), text_model=str(folders[text]), **config), codec=codec
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_the_seq2seq_decoder_keeps_its_pretrained_weights(
    folders: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoModelForCausalLM, MBartForConditionalGeneration

    source = MBartForConditionalGeneration.from_pretrained(str(folders["mbart"]), local_files_only=True)
    with caplog.at_level(logging.WARNING, logger="vicap_jobs.models.vit_seq2seq"):
        model = make(folders, "mbart", tiny_tokenizer())  # the folder's own tokenizer: embeddings kept
    decoder = model.hf.decoder
    assert type(decoder).__name__ == "MBartForCausalLM"
    torch.testing.assert_close(decoder.get_input_embeddings().weight, source.model.shared.weight, rtol=0, atol=0)
    torch.testing.assert_close(decoder.lm_head.weight, source.lm_head.weight, rtol=0, atol=0)
    own = {k: v for k, v in source.state_dict().items() if k.startswith("model.decoder.")}
    mine = decoder.state_dict()
    assert own.keys() <= mine.keys()
    for key, value in own.items():
        assert torch.equal(mine[key], value), key
    assert "final_logits_bias is not zero" in caplog.text
    # What the transplant avoids: the causal-LM loader redraws the shared embeddings.
    naive = AutoModelForCausalLM.from_pretrained(str(folders["mbart"]), local_files_only=True)
    assert not torch.equal(naive.get_input_embeddings().weight, source.model.shared.weight)


@pytest.mark.parametrize(("text", "attention"), [("gpt2", "crossattention"), ("mbart", "encoder_attn")])
def test_every_decoder_layer_cross_attends_to_the_image(
    folders: dict[str, Path], trained_codec: HFTokenizerCodec, text: str, attention: str
) -> None:
    model = make(folders, text, trained_codec).eval()
    layers = model.hf.decoder.transformer.h if text == "gpt2" else model.hf.decoder.model.decoder.layers
    assert len(layers) == 2 and all(isinstance(getattr(layer, attention, None), torch.nn.Module) for layer in layers)
    grids = torch.randn(2, 17, 32)  # two different images' (B, 1 + N, D) grids
    with torch.no_grad():
        logits = model(grids, torch.full((2, 3), trained_codec.bos_id))  # (2, 3, V)
    assert not torch.allclose(logits[0], logits[1])


def test_a_different_decoder_width_is_projected_and_matches_the_hf_forward(
    folders: dict[str, Path], trained_codec: HFTokenizerCodec
) -> None:
    model = make(folders, "gpt2-wide", trained_codec).eval()
    projection = model.hf.enc_to_dec_proj
    assert (projection.in_features, projection.out_features) == (32, 48)
    pixels = torch.randn(2, 3, 32, 32)
    tokens = torch.tensor([[trained_codec.bos_id, 5, 6], [trained_codec.bos_id, 7, 8]])
    with torch.no_grad():
        features = model.extract_features(pixels)  # (2, 1 + 16, 32): the encoder's own width
        mine = model(features, tokens)
        theirs = model.hf(pixel_values=pixels, decoder_input_ids=tokens).logits
        assert features.shape == (2, 17, 32) and model.memory(features).shape == (2, 17, 48)
    torch.testing.assert_close(mine, theirs)


def test_equal_widths_need_no_projection(folders: dict[str, Path], trained_codec: HFTokenizerCodec) -> None:
    model = make(folders, "gpt2", trained_codec).eval()
    assert not hasattr(model.hf, "enc_to_dec_proj")
    pixels, tokens = torch.randn(1, 3, 32, 32), torch.tensor([[trained_codec.bos_id, 9]])
    with torch.no_grad():
        torch.testing.assert_close(
            model(model.extract_features(pixels), tokens),
            model.hf(pixel_values=pixels, decoder_input_ids=tokens).logits,
        )


def test_the_own_tokenizer_keeps_the_embeddings_a_trained_one_redraws_them(
    folders: dict[str, Path], trained_codec: HFTokenizerCodec
) -> None:
    pretrained = weights(folders["gpt2"])["transformer.wte.weight"]
    config = VitSeq2SeqConfig(vision_model=str(folders["vit"]), text_model=str(folders["gpt2"]))
    assert config.default_tokenizer() == str(folders["gpt2"].resolve())
    own = make(folders, "gpt2", tiny_tokenizer())
    assert torch.equal(own.hf.decoder.get_input_embeddings().weight, pretrained)
    fresh = make(folders, "gpt2", trained_codec)
    table = fresh.hf.decoder.get_input_embeddings().weight
    assert table.shape[0] == len(trained_codec) == fresh.hf.config.decoder.vocab_size
    assert not torch.allclose(table[:50], pretrained[:50])
    assert fresh.hf.decoder.lm_head.weight is table  # GPT-2's output layer stays tied to the new table
    assert fresh.hf.config.decoder_start_token_id == trained_codec.bos_id
    assert fresh.hf.config.pad_token_id == trained_codec.pad_id


def test_a_folder_without_a_tokenizer_trains_one(folders: dict[str, Path]) -> None:
    config = VitSeq2SeqConfig(vision_model=str(folders["vit"]), text_model=str(folders["gpt2-wide"]))
    assert config.default_tokenizer() == "train"
    assert VitSeq2SeqConfig().default_tokenizer() == "train"


def test_preprocessing_follows_the_encoder_folder(tmp_path: Path, folders: dict[str, Path]) -> None:
    processor = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3}
    vit = tiny_vit(tmp_path / "vit", image_size=48, processor=processor)
    config = VitSeq2SeqConfig(vision_model=str(vit), text_model=str(folders["gpt2"]))
    model = build(config, codec=tiny_tokenizer())
    policy = preprocessing(model.config)
    assert (policy.size, policy.resize, policy.resample) == (48, "squash", "bicubic")
    assert policy.mean == (0.485, 0.456, 0.406) and policy.std == (0.229, 0.224, 0.225)
    default = preprocessing(make(folders, "gpt2", tiny_tokenizer()).config)  # no preprocessor_config.json
    assert (default.size, default.resample, default.mean, default.std) == (32, "bilinear", (0.5,) * 3, (0.5,) * 3)


def test_a_frozen_encoder_is_cached_and_unchanged_while_the_projection_trains(
    tmp_path: Path, folders: dict[str, Path]
) -> None:
    samples = make_colour_set(tmp_path / "colours", 12)
    options = TrainOptions(
        epochs=2,
        lr=3e-3,
        batch_size=8,
        warmup_steps=1,
        tokenizer_vocab_size=300,
        decode_max_len=6,
        max_len=12,
        progress_bar=False,
        vision_model=str(folders["vit"]),
        text_model=str(folders["gpt2-wide"]),
        config_overrides={"freeze_vision": True},
    )
    result = train_pretrained(
        family="vit-seq2seq",
        options=options,
        train=samples[:8],
        val=samples[8:],
        out_dir=tmp_path / "checkpoint",
        cache_dir=tmp_path / "cache",
        dataset_key="colours",
    )
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # train and val encoder outputs
    loaded = load_checkpoint(result.out_dir)
    assert loaded.manifest["backbone_frozen"] is True
    from transformers import ViTModel

    source = ViTModel.from_pretrained(str(folders["vit"]), local_files_only=True).state_dict()
    encoder = loaded.model.hf.encoder.state_dict()
    assert encoder.keys() == source.keys()
    for key, value in source.items():
        assert torch.equal(encoder[key], value), key
    built = make(folders, "gpt2-wide", loaded.codec)  # the same seed's projection before training
    assert not torch.allclose(loaded.model.hf.enc_to_dec_proj.weight, built.hf.enc_to_dec_proj.weight)


def test_a_folder_that_is_not_a_decoder_is_one_line(folders: dict[str, Path], trained_codec: HFTokenizerCodec) -> None:
    with pytest.raises(InputError) as info:
        build(VitSeq2SeqConfig(vision_model=str(folders["vit"]), text_model=str(folders["vit"])), codec=trained_codec)
    message = str(info.value)
    assert "\n" not in message and "'vit' model, not a text decoder" in message and "--text-model" in message


def test_a_folder_that_is_not_an_image_encoder_is_one_line(
    folders: dict[str, Path], trained_codec: HFTokenizerCodec
) -> None:
    with pytest.raises(InputError) as info:
        build(VitSeq2SeqConfig(vision_model=str(folders["gpt2"]), text_model=str(folders["gpt2"])), codec=trained_codec)
    message = str(info.value)
    assert "\n" not in message and "not an image encoder" in message and "--vision-model" in message


def test_t5_is_refused_in_one_line(tmp_path: Path, folders: dict[str, Path], trained_codec: HFTokenizerCodec) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=300, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2)
    T5ForConditionalGeneration(config).save_pretrained(str(tmp_path / "t5"))
    with pytest.raises(InputError) as info:
        build(VitSeq2SeqConfig(vision_model=str(folders["vit"]), text_model=str(tmp_path / "t5")), codec=trained_codec)
    message = str(info.value)
    assert "\n" not in message and "'t5' encoder-decoder" in message and "BARTpho" in message


def test_a_decoder_without_cross_attention_is_refused(
    tmp_path: Path, folders: dict[str, Path], trained_codec: HFTokenizerCodec
) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(str(tmp_path / "llama"))
    with pytest.raises(InputError) as info:
        build(
            VitSeq2SeqConfig(vision_model=str(folders["vit"]), text_model=str(tmp_path / "llama")), codec=trained_codec
        )
    message = str(info.value)
    assert "\n" not in message and "'llama' decoder" in message and "no cross-attention" in message


def test_config_validation_is_one_line() -> None:
    for bad in ({"image_size": 0}, {"resample": "nearest"}, {"image_std": (0.5, 0.0, 0.5)}):
        with pytest.raises(InputError) as info:
            dataclasses.replace(VitSeq2SeqConfig(), **bad).validate()
        assert "\n" not in str(info.value)
