"""``clipcap``: ClipCap (Mokady et al. 2021): CLIP image embedding → mapping network → prefix → GPT-2.

The study this tool comes from used ``openai/clip-vit-base-patch32`` and a Vietnamese
GPT-2 (``NlpHUST/gpt2-vietnamese``, ``imthanhlv/gpt2news``). One CLIP embedding per
image is mapped to ``prefix_length`` vectors in GPT-2's embedding space; GPT-2 reads
them as if they were the embeddings of words before the caption, then the caption.

Model (two local folders: ``--vision-model DIR``, ``--text-model DIR``)::

    pixels (B, 3, S, S) ─CLIP─► image embedding (B, D_clip) ─mapper─► prefix (B, P, D_gpt2)
    cat(prefix, wte(tokens_in) (B, T, D_gpt2)) ─GPT-2─► logits of the last T positions (B, T, V)

- The image embedding is the vision tower's ``pooler_output`` (a ``CLIPVisionModel``
  folder, D_clip = its hidden size) or, from a full ``CLIPModel`` folder, CLIP's
  projected ``image_embeds`` (D_clip = ``projection_dim``, what the paper used). Only
  the vision tower and the projection are kept (as a ``CLIPVisionModelWithProjection``);
  the text tower is dropped after loading. Which one is ``image_embedding`` in the config.
- Both mappers of the paper: ``mlp`` (Linear → Tanh → Linear, to P·D_gpt2) and
  ``transformer`` (the embedding projected to ``clip_length`` tokens, concatenated with
  ``prefix_length`` learned constants, a pre-norm transformer encoder of
  ``mapper_layers`` layers; the outputs at the constants' positions are the prefix).
- CLIP is frozen by default (``freeze_vision``, as the paper): its embeddings are
  computed once per data set through the feature cache. GPT-2 is fine-tuned by default
  (``freeze_text=False``, the paper's MLP setting); ``freeze_text=True`` trains only the
  mapper (the paper's transformer setting), dropout off in the frozen GPT-2.
- Text side: by default the GPT-2 folder's own tokenizer (a Vietnamese GPT-2 ships a
  byte-level BPE that keeps every diacritic, checked on the train captions), so its
  pretrained embeddings keep their meaning. GPT-2 has no pad token and its BOS is its
  EOS (``<|endoftext|>``): the codec pads with EOS, and the trainer scores each caption's
  targets up to and including its own EOS, so stopping is still learned (test_clipcap).
  A tokenizer whose vocabulary is not the GPT-2's (``--tokenizer train``, or a folder
  with no tokenizer) resizes GPT-2's token embeddings (tied to its output layer) to the
  codec and draws them afresh (``new_embeddings`` in the config); with ``freeze_text``
  that embedding table then stays trainable, otherwise nothing could learn the new ids.
- GPT-2's ``n_positions`` must hold prefix + caption: a longer input is a one-line
  InputError (not an index error deep inside GPT-2).
- Preprocessing is CLIP's processor: shorter side to the vision config's ``image_size``
  (224 for ViT-B/32), centre crop, bicubic, CLIP mean/std.
- Checkpoint (``hf/``, not one Hugging Face model): ``config.json`` (``model_type``
  ``vicap-clipcap`` and the mapper's shape), ``clip/`` and ``gpt2/`` (``save_pretrained``),
  ``mapper.safetensors`` (fp32; a quantizing load passes its options to both
  ``from_pretrained`` calls and never to the mapper).

Measured (tiny models on viic-synth, 2 CPU cores; ``tests/models/hf/test_clipcap_synth.py``):
with a CLIP that has learned images (a tiny one trained contrastively on the train
split), frozen and cached as the paper does, ClipCap beats the blind baseline by
+17.8 to +19.6 BLEU-4 in 12 epochs and names the shirt colour for 93-100 % of test
images. A random CLIP trained end to end (``freeze_vision=False``) reached +4 to +15
depending on the seed (likely: the colour word is one target in twenty and the random
choice of caption template dominates the ViT's gradient); a frozen random CLIP +9 to +11
(its CLS embedding tells the sport, the colour only ~45 % of the time). So CLIP stays
frozen by default; whether fine-tuning a pretrained CLIP pays on UIT-ViIC is not measured.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vicap_jobs.data.images import CLIP_MEAN, CLIP_STD, Preprocessing
from vicap_jobs.errors import InputError, NotFoundError, UnknownNameError, VicapError
from vicap_jobs.models.checkpoint import HFLayout
from vicap_jobs.models.hf_codec import HFTokenizerCodec, load_tokenizer
from vicap_jobs.models.pretrained import PretrainedCaptioner, from_local, pretrained_dir, reset_embeddings
from vicap_jobs.models.registry import ModelFamily

VISION_IDS = "openai/clip-vit-base-patch32"
TEXT_IDS = "NlpHUST/gpt2-vietnamese or imthanhlv/gpt2news"
MAPPING_TYPES = ("mlp", "transformer")
IMAGE_EMBEDDINGS = ("pooled", "projected")  # CLIPVisionModel pooler_output | CLIPModel image_embeds
CLIP_TYPES = ("clip", "clip_vision_model")  # config.json model_type of the folders --vision-model takes
FP32 = "float32"  # training loads: fp32 whatever dtype a folder was saved in (transformers 5 keeps the saved one)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")  # any one: the folder has a tokenizer
MODEL_TYPE = "vicap-clipcap"  # hf/config.json of a checkpoint
MAPPER_FIELDS = ("mapping_type", "prefix_length", "clip_length", "mapper_layers", "mapper_heads", "image_embedding")
CLIP_DIR, GPT2_DIR, MAPPER_FILE = "clip", "gpt2", "mapper.safetensors"


@dataclass
class ClipCapConfig:
    """ClipCap settings; ``image_size``, ``image_embedding`` and ``new_embeddings`` are set when it is built."""

    vision_model: str = ""  # local CLIPVisionModel or CLIPModel folder (--vision-model)
    text_model: str = ""  # local GPT-2 (GPT2LMHeadModel) folder (--text-model)
    mapping_type: str = "mlp"  # "mlp" | "transformer" (the paper's two mappers)
    prefix_length: int = 10  # P: prefix vectors GPT-2 reads before the caption
    clip_length: int = 10  # transformer mapper: tokens the image embedding is projected to
    mapper_layers: int = 8  # transformer mapper: encoder layers (8 in the paper)
    mapper_heads: int = 8  # transformer mapper: attention heads (must divide GPT-2's width)
    freeze_vision: bool = True  # CLIP frozen (the paper): embeddings cached once per data set
    freeze_text: bool = False  # True: GPT-2 frozen, only the mapper (and new embeddings) train
    image_size: int = 224  # read from the CLIP vision config at build time
    image_embedding: str = "pooled"  # "pooled" (CLIPVisionModel) | "projected" (CLIPModel); read at build time
    new_embeddings: bool = False  # set at build time: GPT-2's embeddings were drawn afresh for a new tokenizer

    def validate(self) -> None:
        if self.mapping_type not in MAPPING_TYPES:
            raise UnknownNameError("ClipCap mapping type", self.mapping_type, MAPPING_TYPES)
        if self.image_embedding not in IMAGE_EMBEDDINGS:
            raise UnknownNameError("ClipCap image embedding", self.image_embedding, IMAGE_EMBEDDINGS)
        for name in ("prefix_length", "clip_length", "mapper_layers", "mapper_heads", "image_size"):
            if getattr(self, name) < 1:
                raise InputError(f"ClipCapConfig.{name} must be at least 1, got {getattr(self, name)}")

    def default_tokenizer(self) -> str:
        """The GPT-2 folder's own tokenizer when it ships one (its embeddings stay meaningful), else "train"."""
        if self.text_model:
            folder = Path(self.text_model).expanduser()
            if any((folder / name).is_file() for name in TOKENIZER_FILES):
                return str(folder.resolve())
        return "train"


class MLPMapper(nn.Module):
    """The paper's MLP: image embedding (B, D_clip) → prefix (B, P, D_gpt2) through one Tanh hidden layer."""

    def __init__(self, clip_dim: int, text_dim: int, prefix_length: int) -> None:
        super().__init__()
        self.prefix_length, self.text_dim = prefix_length, text_dim
        hidden = text_dim * prefix_length // 2
        self.net = nn.Sequential(nn.Linear(clip_dim, hidden), nn.Tanh(), nn.Linear(hidden, text_dim * prefix_length))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        flat = self.net(embedding)  # (B, P * D_gpt2)
        return flat.view(embedding.shape[0], self.prefix_length, self.text_dim)  # (B, P, D_gpt2)


class TransformerMapper(nn.Module):
    """The paper's transformer mapper: embedding → ``clip_length`` tokens + ``prefix_length`` learned constants.

    A pre-norm encoder (ReLU MLP of twice the width, no dropout, as the paper's) mixes
    them; the outputs at the constants' positions are the prefix (B, P, D_gpt2).
    """

    def __init__(
        self, clip_dim: int, text_dim: int, prefix_length: int, *, clip_length: int, layers: int, heads: int
    ) -> None:
        super().__init__()
        self.clip_length, self.text_dim = clip_length, text_dim
        self.linear = nn.Linear(clip_dim, clip_length * text_dim)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, text_dim))  # (P, D_gpt2), N(0, 1) as the paper
        layer = nn.TransformerEncoderLayer(
            text_dim, heads, dim_feedforward=2 * text_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        batch = embedding.shape[0]
        image = self.linear(embedding).view(batch, self.clip_length, self.text_dim)  # (B, L_clip, D_gpt2)
        constants = self.prefix_const.unsqueeze(0).expand(batch, -1, -1)  # (B, P, D_gpt2)
        mixed = self.transformer(torch.cat([image, constants], dim=1))  # (B, L_clip + P, D_gpt2)
        return mixed[:, self.clip_length :]  # (B, P, D_gpt2)


def _mlp_mapper(config: ClipCapConfig, clip_dim: int, text_dim: int) -> nn.Module:
    return MLPMapper(clip_dim, text_dim, config.prefix_length)


def _transformer_mapper(config: ClipCapConfig, clip_dim: int, text_dim: int) -> nn.Module:
    if text_dim % config.mapper_heads:
        raise InputError(f"mapper_heads {config.mapper_heads} must divide the text model's width {text_dim}")
    return TransformerMapper(
        clip_dim,
        text_dim,
        config.prefix_length,
        clip_length=config.clip_length,
        layers=config.mapper_layers,
        heads=config.mapper_heads,
    )


MAPPERS: dict[str, Callable[[ClipCapConfig, int, int], nn.Module]] = {
    "mlp": _mlp_mapper,
    "transformer": _transformer_mapper,
}


class ClipCapCaptioner(PretrainedCaptioner):
    """CLIP vision tower + mapper + GPT-2 behind the step-wise contract (features: the CLIP embedding)."""

    def __init__(self, config: ClipCapConfig, clip: Any, gpt2: Any) -> None:
        super().__init__()
        self.config = config
        self.clip = clip  # CLIPVisionModel (pooled) or CLIPVisionModelWithProjection (projected)
        self.gpt2 = gpt2  # GPT2LMHeadModel, lm_head tied to transformer.wte
        self.clip_dim = _clip_dim(clip, config.image_embedding)
        self.text_dim = int(gpt2.config.n_embd)
        self.n_positions = int(gpt2.config.n_positions)
        if config.prefix_length + 2 > self.n_positions:
            raise InputError(
                f"prefix_length {config.prefix_length} leaves no room for a caption in the text model's "
                f"{self.n_positions} positions"
            )
        self.mapper = MAPPERS[config.mapping_type](config, self.clip_dim, self.text_dim)
        if config.freeze_vision:
            self.clip.requires_grad_(False)
        if config.freeze_text:
            self.gpt2.requires_grad_(False)
            if config.new_embeddings:  # fresh ids must be learned; tied, so the output layer learns too
                self.gpt2.get_input_embeddings().requires_grad_(True)

    @property
    def backbone_frozen(self) -> bool:
        return self.config.freeze_vision

    def train(self, mode: bool = True) -> ClipCapCaptioner:
        super().train(mode)
        if self.config.freeze_vision:
            self.clip.eval()  # a frozen encoder gives the cached embeddings
        if self.config.freeze_text:
            self.gpt2.eval()  # no dropout in a frozen GPT-2 (as the paper's frozen-GPT-2 setting)
        return self

    def feature_extractor(self) -> nn.Module:
        return self.clip

    def extract_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → the CLIP image embedding (B, D_clip)."""
        dtype = self.clip.get_input_embeddings().weight.dtype  # the patch embedding (Conv2d)
        out = self.clip(pixel_values=pixels.to(dtype), return_dict=True)
        return out.image_embeds if self.config.image_embedding == "projected" else out.pooler_output

    def prefix(self, features: torch.Tensor) -> torch.Tensor:
        """CLIP embedding (B, D_clip) → prefix embeddings (B, P, D_gpt2), computed in the mapper's dtype (fp32)."""
        dtype = next(self.mapper.parameters()).dtype
        return self.mapper(features.to(dtype))

    def forward(self, features: torch.Tensor, tokens_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: features (B, D_clip), tokens_in (B, T) → logits (B, T, V) of the caption positions."""
        length = tokens_in.shape[1]
        if self.config.prefix_length + length > self.n_positions:
            raise InputError(
                f"a prefix of {self.config.prefix_length} plus {length} caption tokens exceeds the text model's "
                f"{self.n_positions} positions; lower prefix_length or the caption length (max_len)"
            )
        tokens = self.gpt2.get_input_embeddings()(tokens_in)  # (B, T, D_gpt2)
        prefix = self.prefix(features).to(tokens.dtype)  # (B, P, D_gpt2)
        inputs = torch.cat([prefix, tokens], dim=1)  # (B, P + T, D_gpt2)
        # Right padding under a causal mask needs no attention mask; logits only where a caption token predicts.
        return self.gpt2(inputs_embeds=inputs, logits_to_keep=length, return_dict=True).logits  # (B, T, V)

    def save_pretrained(self, folder: Path) -> None:
        """``config.json`` (mapper shape), ``clip/`` and ``gpt2/`` (save_pretrained), ``mapper.safetensors``."""
        from safetensors.torch import save_model  # safetensors.torch imports torch: only where it saves

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.clip.save_pretrained(str(folder / CLIP_DIR))
        self.gpt2.save_pretrained(str(folder / GPT2_DIR))
        save_model(self.mapper, str(folder / MAPPER_FILE))
        description = {
            "model_type": MODEL_TYPE,
            "clip_dim": self.clip_dim,
            "text_dim": self.text_dim,
            **{name: getattr(self.config, name) for name in MAPPER_FIELDS},
        }
        (folder / "config.json").write_text(json.dumps(description, indent=1), encoding="utf-8")


def _clip_dim(clip: Any, image_embedding: str) -> int:
    """D_clip: the projection's width for CLIP's image_embeds, else the vision tower's hidden size."""
    return int(clip.config.projection_dim if image_embedding == "projected" else clip.config.hidden_size)


def _model_type(folder: Path) -> tuple[str, list[str]]:
    """(model_type, architectures) from a save_pretrained folder's config.json."""
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {folder / 'config.json'}: {exc}") from exc
    return str(raw.get("model_type", "")), [str(name) for name in raw.get("architectures") or []]


def _load_clip(folder: Path) -> tuple[Any, str]:
    """The CLIP vision side of a CLIPVisionModel / CLIPVisionModelWithProjection / CLIPModel folder.

    Returns (module, image_embedding): a full CLIPModel gives its vision tower and
    visual projection as a CLIPVisionModelWithProjection (the text tower is dropped).
    """
    from transformers import CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection  # only where CLIP loads

    model_type, architectures = _model_type(folder)
    if model_type not in CLIP_TYPES:
        raise InputError(f"{folder} is not a CLIP model (model_type {model_type!r}); give a copy of {VISION_IDS}")
    if model_type == "clip_vision_model" and "CLIPVisionModelWithProjection" not in architectures:
        return from_local(CLIPVisionModel.from_pretrained, folder, what="CLIP vision model", dtype=FP32), "pooled"
    if model_type == "clip_vision_model":
        loaded = from_local(CLIPVisionModelWithProjection.from_pretrained, folder, what="CLIP vision model", dtype=FP32)
        return loaded, "projected"
    full: Any = from_local(CLIPModel.from_pretrained, folder, what="CLIP model", dtype=FP32)
    vision_config = full.config.vision_config  # a CLIPVisionConfig
    vision_config.projection_dim = full.config.projection_dim  # lives on the CLIPConfig, not its vision part
    vision = CLIPVisionModelWithProjection(vision_config)
    vision.vision_model, vision.visual_projection = full.vision_model, full.visual_projection
    return vision, "projected"


def _load_gpt2(folder: Path, *, what: str, **load_options: Any) -> Any:
    """A GPT2LMHeadModel from a local folder (another model type is one line)."""
    from transformers import GPT2LMHeadModel  # transformers: only where GPT-2 loads

    model_type, _ = _model_type(folder)
    if model_type != "gpt2":
        raise InputError(f"{folder} is not a GPT-2 model (model_type {model_type!r}); give a copy of {TEXT_IDS}")
    return from_local(GPT2LMHeadModel.from_pretrained, folder, what=what, **load_options)


def _speaks_model_vocab(codec: HFTokenizerCodec, text_folder: Path) -> bool:
    """True when every token of the GPT-2 folder's own tokenizer has the same id in the codec."""
    if not any((text_folder / name).is_file() for name in TOKENIZER_FILES):
        return False
    try:
        own = load_tokenizer(text_folder).get_vocab()
    except VicapError:
        return False
    mine = codec.tokenizer.get_vocab()
    return all(mine.get(token) == index for token, index in own.items())


def _use_codec(gpt2: Any, codec: HFTokenizerCodec, *, same_vocab: bool) -> bool:
    """Size GPT-2's (tied) embeddings to the codec and set its special ids; True when drawn afresh.

    The GPT-2's own vocabulary keeps its pretrained rows (a resize keeps the first
    rows: tokens added to the tokenizer get new ones, padding rows no id reaches are
    dropped); any other vocabulary's ids mean nothing to them, so all rows are redrawn.
    """
    fresh = not same_vocab
    if gpt2.get_input_embeddings().num_embeddings != len(codec):
        gpt2.resize_token_embeddings(len(codec), mean_resizing=False)
    if fresh:
        reset_embeddings(gpt2.get_input_embeddings())  # tied to lm_head in GPT-2 checkpoints
        head = gpt2.get_output_embeddings()
        if head is not None and head.weight is not gpt2.get_input_embeddings().weight:
            reset_embeddings(head)  # an untied head's rows would keep the old ids' meanings
    gpt2.config.vocab_size = gpt2.get_input_embeddings().num_embeddings
    gpt2.config.bos_token_id, gpt2.config.eos_token_id = codec.bos_id, codec.eos_id
    gpt2.config.pad_token_id = codec.pad_id
    return fresh


def build(config: ClipCapConfig, *, codec: HFTokenizerCodec) -> ClipCapCaptioner:
    """ClipCap from the local CLIP and GPT-2 folders, GPT-2's vocabulary sized to ``codec``, a fresh mapper."""
    vision_folder = pretrained_dir(
        config.vision_model, what="CLIP model", option="--vision-model", model_ids=VISION_IDS
    )
    text_folder = pretrained_dir(config.text_model, what="GPT-2 model", option="--text-model", model_ids=TEXT_IDS)
    clip, image_embedding = _load_clip(vision_folder)
    gpt2 = _load_gpt2(text_folder, what="GPT-2 model", dtype=FP32)
    fresh = _use_codec(gpt2, codec, same_vocab=_speaks_model_vocab(codec, text_folder))
    config = dataclasses.replace(
        config,
        vision_model=str(vision_folder),
        text_model=str(text_folder),
        image_size=int(clip.config.image_size),
        image_embedding=image_embedding,
        new_embeddings=fresh,
    )
    config.validate()
    return ClipCapCaptioner(config, clip, gpt2)


def load_pretrained(hf_dir: Path, config: ClipCapConfig, **load_options: Any) -> ClipCapCaptioner:
    """A checkpoint's ``hf/`` folder back as a captioner; ``load_options`` go to both ``from_pretrained`` calls."""
    from safetensors import SafetensorError  # safetensors.torch imports torch: only where it loads
    from safetensors.torch import load_model
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection  # only where a checkpoint loads

    hf_dir = Path(hf_dir)
    model_type, _ = _model_type(hf_dir)
    if model_type != MODEL_TYPE:
        raise InputError(f"{hf_dir} is not a ClipCap checkpoint folder (model_type {model_type!r})")
    clip_class = CLIPVisionModelWithProjection if config.image_embedding == "projected" else CLIPVisionModel
    clip = from_local(clip_class.from_pretrained, hf_dir / CLIP_DIR, what="ClipCap CLIP", **load_options)
    gpt2 = _load_gpt2(hf_dir / GPT2_DIR, what="ClipCap GPT-2", **load_options)
    model = ClipCapCaptioner(config, clip, gpt2)
    mapper_file = hf_dir / MAPPER_FILE
    if not mapper_file.is_file():
        raise NotFoundError(f"ClipCap checkpoint {hf_dir} has no {MAPPER_FILE}; save the checkpoint again")
    try:
        load_model(model.mapper, str(mapper_file), strict=True, device="cpu")
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot load the ClipCap mapper {mapper_file}: {first}") from exc
    return model


def preprocessing(config: ClipCapConfig) -> Preprocessing:
    """CLIP's processor: shorter side to image_size, centre crop, bicubic, CLIP statistics."""
    return Preprocessing(
        config.image_size, resize="shorter-side-crop", mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic"
    )


FAMILY = ModelFamily(
    config_cls=ClipCapConfig,
    build=build,
    layout=HFLayout(load_pretrained),  # hf/ = config.json + clip/ + gpt2/ + mapper.safetensors
    codec="hf-tokenizer",
    preprocessing=preprocessing,
)
