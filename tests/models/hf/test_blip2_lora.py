"""``blip2-lora``: what the LoRA adapter touches, where it is saved, and that reloading and merging change nothing.

A tiny random BLIP-2 + OPT (``tiny_blip2``) is built through the family's ``build``
with the codec the trainer would make, trained a few optimizer steps on colour
images and saved with ``save_checkpoint``; the checkpoint is read back unmerged
(``load_adapter(merge=False)``) and merged (``load_checkpoint``, what engines use).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests.models.hf.tiny_blip2 import LM_ROWS, NUM_QUERY_TOKENS, VOCAB, tiny_blip2
from tests.models.hf.tiny_hf import tiny_blip
from tests.training.conftest import make_colour_set
from vicap_jobs.data.images import load_rgb
from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.errors import InputError
from vicap_jobs.models import blip2_lora
from vicap_jobs.models.blip2_lora import IMAGE_TOKEN, Blip2LoraCaptioner, Blip2LoraConfig
from vicap_jobs.models.checkpoint import load_checkpoint, save_checkpoint
from vicap_jobs.models.decoding import beam_search, greedy_decode
from vicap_jobs.models.hf_codec import HFTokenizerCodec
from vicap_jobs.training.options import TrainOptions
from vicap_jobs.training.pretrained import make_codec, train_pretrained

ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_blip2(tmp_path_factory.mktemp("base") / "blip2")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[CaptionSample]:
    return make_colour_set(tmp_path_factory.mktemp("colours"), 8)


def built(
    base: Path, samples: list[CaptionSample], *, tokenizer: str | None = None, **overrides: Any
) -> tuple[Blip2LoraCaptioner, HFTokenizerCodec]:
    """The family's model and codec as ``train_pretrained`` makes them (before its first step)."""
    config = Blip2LoraConfig(base_model=str(base), **overrides)
    config.validate()
    codec = make_codec(config, TrainOptions(tokenizer=tokenizer, tokenizer_vocab_size=300), samples)
    torch.manual_seed(0)
    return blip2_lora.build(config, codec=codec), codec


def batch(
    model: Blip2LoraCaptioner, codec: HFTokenizerCodec, samples: list[CaptionSample]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels (B, 3, S, S), tokens_in (B, T) and targets (B, T) (pad → -100) of each sample's first caption."""
    pixels = torch.from_numpy(blip2_lora.preprocessing(model.config).apply([load_rgb(s.image_path) for s in samples]))
    encoded = [codec.encode_caption(s.captions[0]) for s in samples]
    width = max(len(ids) for ids in encoded)
    ids = torch.tensor([row + [codec.pad_id] * (width - len(row)) for row in encoded])  # (B, W)
    targets = ids[:, 1:].masked_fill(ids[:, 1:] == codec.pad_id, -100)
    return pixels, ids[:, :-1], targets


def train_steps(
    model: Blip2LoraCaptioner, codec: HFTokenizerCodec, samples: list[CaptionSample], steps: int, lr: float = 1e-2
) -> None:
    pixels, tokens_in, targets = batch(model, codec, samples)
    with torch.no_grad():
        features = model.eval().extract_features(pixels)  # the trainer's cached features
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        logits = model(features, tokens_in)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def logits_of(model: Blip2LoraCaptioner, codec: HFTokenizerCodec, samples: list[CaptionSample]) -> torch.Tensor:
    pixels, tokens_in, _ = batch(model, codec, samples)
    with torch.no_grad():
        return model.eval()(model.extract_features(pixels), tokens_in)


def lora_modules(model: Blip2LoraCaptioner) -> list[str]:
    return sorted({name.split(".lora_A")[0] for name, _ in model.hf.named_parameters() if ".lora_A." in name})


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


VARIANTS = {  # name: (tokenizer, config overrides, modules the adapter saves whole)
    "default": (None, {}, ()),
    "trained tokenizer": ("train", {}, ("embed_tokens", "lm_head")),  # fresh (tied) embeddings
    "qformer trained": (None, {"train_qformer": True}, ("qformer", "language_projection")),
}


@dataclasses.dataclass(frozen=True)
class Saved:
    variant: str
    model: Blip2LoraCaptioner  # as trained (adapter unmerged)
    codec: HFTokenizerCodec
    path: Path

    @property
    def saved_whole(self) -> tuple[str, ...]:
        return VARIANTS[self.variant][2]


@pytest.fixture(scope="module", params=list(VARIANTS))
def saved(
    request: pytest.FixtureRequest, base: Path, samples: list[CaptionSample], tmp_path_factory: pytest.TempPathFactory
) -> Saved:
    """A model of each variant after 3 optimizer steps, and its checkpoint."""
    tokenizer, overrides, _ = VARIANTS[request.param]
    model, codec = built(base, samples, tokenizer=tokenizer, **overrides)
    train_steps(model, codec, samples, steps=3)
    folder = tmp_path_factory.mktemp("ckpt") / "ckpt"
    path = save_checkpoint(folder, model=model, family="blip2-lora", codec=codec, meta={})
    return Saved(request.param, model, codec, path)


# --- the adapter: defaults, where it attaches, what trains ---------------------------------------------


def test_lora_defaults_are_the_studys_and_attach_to_opt_only(base: Path, samples: list[CaptionSample]) -> None:
    model, codec = built(base, samples)
    lora = model.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.bias) == (16, 32, 0.05, "none")
    assert lora.modules_to_save is None  # the base tokenizer: pretrained embeddings kept frozen
    layers = [f"language_model.model.decoder.layers.{i}.self_attn" for i in range(2)]
    assert lora_modules(model) == sorted(f"{layer}.{proj}" for layer in layers for proj in ("k_proj", "q_proj"))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert model.config.vocab_size == len(codec) == VOCAB and model.backbone_frozen
    assert model.hf.language_model.get_input_embeddings().num_embeddings == LM_ROWS  # kept, not cut to the codec
    assert logits_of(model, codec, samples[:2]).shape[-1] == VOCAB  # the LM's padding rows are never scored
    model.train()
    assert not model.hf.vision_model.training and not model.hf.qformer.training  # frozen: no dropout


def test_overrides_configure_rank_targets_and_the_qformer(base: Path, samples: list[CaptionSample]) -> None:
    model, _ = built(base, samples, lora_r=8, lora_alpha=16, lora_targets="q_proj,v_proj", train_qformer=True)
    assert model.config.lora_targets == ("q_proj", "v_proj")
    assert (model.peft_config["default"].r, model.peft_config["default"].lora_alpha) == (8, 16)
    assert {name.rsplit(".", 1)[1] for name in lora_modules(model)} == {"q_proj", "v_proj"}
    assert all(name.startswith("language_model.") for name in lora_modules(model))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(name.startswith("hf.qformer.modules_to_save.") for name in trainable)
    assert any(name.startswith("hf.language_projection.modules_to_save.") for name in trainable)
    assert not any("vision_model" in name or "query_tokens" in name for name in trainable)


def test_targets_are_looked_for_in_the_language_model_only(base: Path, samples: list[CaptionSample]) -> None:
    with pytest.raises(InputError) as info:
        built(base, samples, lora_targets=["query", "value"])  # the Q-Former's names, not OPT's
    message = str(info.value)
    assert "\n" not in message and "LoRA targets query,value do not fit the language model" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("q_proj,v_proj", ("q_proj", "v_proj")),
        (["k_proj"], ("k_proj",)),
        ((" q_proj ", "out_proj"), ("q_proj", "out_proj")),
    ],
)
def test_targets_accept_a_comma_string_or_a_list(value: Any, expected: tuple[str, ...]) -> None:
    config = Blip2LoraConfig(lora_targets=value)
    config.validate()
    assert config.lora_targets == expected


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("lora_targets", "", "lora_targets"),
        ("lora_targets", 3, "lora_targets"),
        ("lora_r", 0, "lora_r"),
        ("lora_alpha", 2.5, "lora_alpha"),
        ("lora_dropout", 1.0, "lora_dropout"),
        ("lora_bias", "all", "frozen image encoder's biases"),
        ("train_qformer", "yes", "train_qformer"),
    ],
)
def test_bad_settings_are_one_line(field: str, value: Any, says: str) -> None:
    config = dataclasses.replace(Blip2LoraConfig(), **{field: value})
    with pytest.raises(InputError, match=says) as info:
        config.validate()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_training_step_changes_only_adapter_tensors(base: Path, samples: list[CaptionSample], variant: str) -> None:
    tokenizer, overrides, saved_whole = VARIANTS[variant]
    model, codec = built(base, samples, tokenizer=tokenizer, **overrides)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    train_steps(model, codec, samples, steps=2)  # the second step moves lora_A too (lora_B starts at zero)
    changed = {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}
    adapter = {name for name in before if ".lora_" in name or ".modules_to_save." in name}
    assert changed and changed <= adapter
    assert {name for name in adapter if ".lora_" in name} <= changed  # every LoRA matrix learned
    for module in saved_whole:
        assert any(f"{module}.modules_to_save." in name for name in changed), module
    if "embed_tokens" in saved_whole:  # the output layer stays tied to the trained embeddings
        lm = model.hf.language_model
        assert lm.lm_head.weight is lm.get_input_embeddings().weight


# --- the checkpoint: adapter apart, clean base, reload, merge ---------------------------------------------


def test_the_checkpoint_holds_the_adapter_apart_and_the_base_untouched(base: Path, saved: Saved) -> None:
    path = saved.path
    assert sorted(p.name for p in (path / "adapter").iterdir()) == ADAPTER_FILES
    adapter = tensors(path / "adapter" / "adapter_model.safetensors")
    whole = {key for key in adapter if ".lora_A." not in key and ".lora_B." not in key}
    assert any(".lora_B." in key for key in adapter)
    assert {module for module in saved.saved_whole if any(f".{module}." in key for key in whole)} == set(
        saved.saved_whole
    )
    assert all(any(f".{module}." in key for module in saved.saved_whole) for key in whole)
    hf = tensors(path / "hf" / "model.safetensors")
    assert not [key for key in hf if "lora_" in key or "base_layer" in key or "modules_to_save" in key]
    original = tensors(base / "model.safetensors")
    assert hf.keys() == original.keys()
    embed = "language_model.model.decoder.embed_tokens.weight"
    if "embed_tokens" in saved.saved_whole:  # a fresh table: hf/ holds it as drawn, the adapter as trained
        lm = saved.model.hf.language_model
        assert torch.equal(hf.pop(embed), lm.get_input_embeddings().original_module.weight)
    assert all(torch.equal(hf[key], original[key]) for key in hf)  # LoRA never merged into hf/


def test_lora_alone_is_a_small_part_of_the_model(saved: Saved) -> None:
    adapter_bytes = (saved.path / "adapter" / "adapter_model.safetensors").stat().st_size
    base_bytes = (saved.path / "hf" / "model.safetensors").stat().st_size
    if saved.saved_whole:  # the tiny Q-Former or embedding table is a third of the tiny model
        assert adapter_bytes < base_bytes
    else:  # measured 17.6 kB of 315 kB here; 20 MiB of 15 GB for blip2-opt-2.7b
        assert adapter_bytes * 10 < base_bytes, (adapter_bytes, base_bytes)


def test_adapter_save_and_reload_gives_identical_logits(samples: list[CaptionSample], saved: Saved) -> None:
    config = load_checkpoint(saved.path).model.config  # the merged model engines use: read only for its config
    reloaded = blip2_lora.load_pretrained(saved.path / "hf", config)
    reloaded = blip2_lora.load_adapter(reloaded, saved.path / "adapter", merge=False)
    assert reloaded.peft_config is not None and lora_modules(reloaded) == lora_modules(saved.model)
    reference = logits_of(saved.model, saved.codec, samples)
    assert torch.equal(logits_of(reloaded, saved.codec, samples), reference)


def test_merged_inference_gives_the_same_tokens(samples: list[CaptionSample], saved: Saved) -> None:
    model, codec = saved.model, saved.codec
    merged = load_checkpoint(saved.path).model
    assert merged.peft_config is None and not any("lora_" in name for name in merged.state_dict())
    reference = logits_of(model, codec, samples)
    unadapted = blip2_lora.load_pretrained(saved.path / "hf", merged.config)
    assert not torch.allclose(logits_of(unadapted, codec, samples), reference, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(logits_of(merged, codec, samples), reference, rtol=0, atol=1e-5)
    pixels, _, _ = batch(model, codec, samples)
    ids = {"bos_id": codec.bos_id, "eos_id": codec.eos_id, "batch_size": len(samples), "max_len": 8}
    with torch.no_grad():
        greedy = [greedy_decode(m.step, m.start(m.extract_features(pixels)), **ids) for m in (model, merged)]
        beams = [beam_search(m.step, m.start(m.extract_features(pixels)), beam_size=3, **ids) for m in (model, merged)]
    assert greedy[0] == greedy[1] and beams[0] == beams[1]
    assert any(greedy[0]) and any(beams[0])


def test_forward_equals_blip2_with_image_placeholders(samples: list[CaptionSample], saved: Saved) -> None:
    codec = saved.codec
    model = load_checkpoint(saved.path).model
    pixels, tokens_in, _ = batch(model, codec, samples[:2])
    image_id = codec.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert model.hf.config.image_token_index == image_id
    placeholders = torch.full((2, NUM_QUERY_TOKENS), image_id)
    with torch.no_grad():
        ours = model(model.extract_features(pixels), tokens_in)  # (2, T, V)
        theirs = model.hf(pixel_values=pixels, input_ids=torch.cat([placeholders, tokens_in], 1)).logits
    torch.testing.assert_close(ours, theirs[:, NUM_QUERY_TOKENS:, : len(codec)], rtol=1e-5, atol=1e-5)


# --- inputs: the base folder and its tokenizer ---------------------------------------------


def test_the_base_folders_tokenizer_is_the_default(base: Path, tmp_path: Path) -> None:
    assert Blip2LoraConfig(base_model=str(base)).default_tokenizer() == str(base)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((base / "config.json").read_text())
    assert Blip2LoraConfig(base_model=str(bare)).default_tokenizer() == "train"


@pytest.mark.parametrize("lm_rows", [LM_ROWS, VOCAB], ids=["room in the padding rows", "one row added"])
def test_a_tokenizer_without_the_image_token_gets_it(
    samples: list[CaptionSample], tmp_path: Path, lm_rows: int
) -> None:
    old = tiny_blip2(tmp_path / "old", image_token=False, lm_rows=lm_rows)
    model, codec = built(old, samples)
    image_id = codec.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert image_id == len(codec) - 1 == VOCAB and image_id in codec.banned_ids
    assert model.hf.config.image_token_index == image_id
    embeddings = model.hf.language_model.get_input_embeddings().weight
    assert embeddings.shape[0] == max(lm_rows, len(codec))
    pretrained = tensors(old / "model.safetensors")["language_model.model.decoder.embed_tokens.weight"]
    assert torch.equal(embeddings[:lm_rows], pretrained)  # same ids: the pretrained rows are kept
    assert model.peft_config["default"].modules_to_save is None  # and stay frozen
    path = save_checkpoint(tmp_path / "ckpt", model=model, family="blip2-lora", codec=codec, meta={})
    loaded = load_checkpoint(path)
    assert loaded.model.hf.config.image_token_index == loaded.codec.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert torch.equal(loaded.model.hf.language_model.get_input_embeddings().weight, embeddings)


def test_a_non_blip2_base_model_is_one_line(samples: list[CaptionSample], tmp_path: Path) -> None:
    blip = tiny_blip(tmp_path / "blip")
    with pytest.raises(InputError) as info:
        train_pretrained(
            family="blip2-lora",
            options=TrainOptions(base_model=str(blip), epochs=1, tokenizer_vocab_size=300, progress_bar=False),
            train=samples[:4],
            val=samples[4:],
            out_dir=tmp_path / "out",
            cache_dir=tmp_path / "cache",
            dataset_key="colours",
        )
    message = str(info.value)
    assert "\n" not in message and "holds a 'blip' model, not BLIP-2" in message and "--base-model" in message
