"""``blip2-lora``: BLIP-2 (``Blip2ForConditionalGeneration``, decoder-only LM such as OPT) + a peft LoRA adapter.

As in the study: LoRA (r=16, alpha=32, dropout 0.05, bias none) on the language
model's ``q_proj``/``k_proj``; everything else pretrained and frozen. The vision
encoder is always frozen; ``train_qformer=True`` also trains the Q-Former and the
language projection (the learned query tokens stay pretrained). Every field of
:class:`Blip2LoraConfig` is a ``--set`` override.

Where the adapter attaches: ``target_modules`` is a regex anchored at
``language_model.``, so a target name the Q-Former or the ViT also uses (``query``,
``dense``) never puts LoRA on the image side; a target that matches nothing is
one line. (With the default names only OPT has such modules anyway.)

Features (what the trainer caches, ``backbone_frozen`` is always True):
- ``train_qformer=False``: the whole image side (ViT → Q-Former → projection) is
  frozen, so the feature is its output, the query tokens' LM input embeddings
  (B, num_query_tokens, D_lm): 32 × 2560 for blip2-opt-2.7b, 160 KiB per image in
  fp16 against 707 KiB for the ViT grid (257 × 1408), and no Q-Former work per step;
- ``train_qformer=True``: the ViT's last hidden state (B, 1 + N, D_v); forward runs
  the Q-Former and the projection on it.

The decoder input is the query embeddings followed by the caption's token
embeddings, through the language model with ``inputs_embeds`` (no cache); the
logits of the caption positions come back, cut to the codec's ids. That is what
``Blip2ForConditionalGeneration.forward`` computes for ``input_ids`` starting with
``num_query_tokens`` image placeholders (``tests/models/hf/test_blip2_lora.py``
checks the two agree), and the placeholder is still set up for users of the
saved folder with transformers alone: the tokenizer gets ``<image>`` when it lacks
it (``extra_special_tokens``, added by the trainer's ``make_codec``) and
``config.image_token_index`` is set to its id.

Tokenizer (pluggable, ``--tokenizer DIR|train``): by default the base folder's own
tokenizer (OPT's byte-level BPE keeps every diacritic of a normalized caption; the
trainer's ``check_keeps_text`` refuses one that does not), else a byte-level BPE
trained on the train captions. For Vietnamese a user needs a BLIP-2 whose LM knows
Vietnamese and its tokenizer, or accepts a new tokenizer: when the codec's ids are
the base tokenizer's (every base token at the same id) the pretrained embeddings
are kept (grown for added tokens); otherwise the embedding table (tied to the
output layer) is resized to the codec, drawn afresh and trained as peft
``modules_to_save`` (``ensure_weight_tying``), so it lives in the adapter too.

Checkpoint (``HFLayout``): ``adapter/`` = peft's ``adapter_config.json`` +
``adapter_model.safetensors`` (LoRA, plus any modules_to_save); ``hf/`` = the base
model as built, without LoRA keys: LoRA is never merged into it. Loading attaches
the adapter and merges it (:func:`load_adapter`, ``merge=False`` keeps it apart;
merged logits equal unmerged ones within 1e-5 in fp32). Sizes for blip2-opt-2.7b
(3.74 B parameters, 15 GB in fp32, counted on the meta device): the default
adapter is 5.2 M parameters (20 MiB); ``train_qformer`` adds the Q-Former and
projection (107 M, ~430 MB); fresh embeddings add the table (vocab × 2560) under
both tied names. Needs one local folder: ``--base-model DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn

from vicap_jobs.data.images import CLIP_MEAN, CLIP_STD, Preprocessing
from vicap_jobs.errors import InputError
from vicap_jobs.models.checkpoint import HFLayout
from vicap_jobs.models.decoding import DecoderState
from vicap_jobs.models.hf_codec import HFTokenizerCodec, load_tokenizer
from vicap_jobs.models.pretrained import PretrainedCaptioner, from_local, pretrained_dir, reset_embeddings
from vicap_jobs.models.registry import ModelFamily

MODEL_IDS = "Salesforce/blip2-opt-2.7b (or another Blip2ForConditionalGeneration with a decoder-only LM)"
IMAGE_TOKEN = "<image>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
LoraBias = Literal["none", "lora_only"]  # peft's "all" would also train every bias of the frozen ViT and Q-Former
LORA_BIASES: tuple[str, ...] = get_args(LoraBias)
LORA_KEY = re.compile(r"\.lora_[A-Za-z_]+\.")  # lora_A., lora_B., lora_embedding_A., lora_magnitude_vector.
PEFT_README = "README.md"  # the model card template peft writes beside every adapter


@dataclass
class Blip2LoraConfig:
    """LoRA fine-tuning settings; ``image_size`` and ``vocab_size`` are set from the base model and codec at build."""

    extra_special_tokens: ClassVar[tuple[str, ...]] = (IMAGE_TOKEN,)  # the trainer's make_codec adds these

    base_model: str = ""  # local Blip2ForConditionalGeneration folder (only read when training starts)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_bias: LoraBias = "none"
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj")  # module names inside the language model
    train_qformer: bool = False  # True: the Q-Former and the language projection are trained too
    image_size: int = 224
    vocab_size: int = 0  # the codec's ids (logits are cut to them); 0 until built

    def validate(self) -> None:
        self.lora_targets = _targets(self.lora_targets)
        for name in ("lora_r", "lora_alpha", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError(f"Blip2LoraConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or self.vocab_size < 0:
            raise InputError(f"Blip2LoraConfig.vocab_size must be a non-negative integer, got {self.vocab_size!r}")
        if not isinstance(self.lora_dropout, int | float) or not 0.0 <= self.lora_dropout < 1.0:
            raise InputError(f"Blip2LoraConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.lora_bias not in LORA_BIASES:
            raise InputError(
                f"Blip2LoraConfig.lora_bias must be one of {', '.join(LORA_BIASES)}, got {self.lora_bias!r} "
                "(peft's 'all' would train the frozen image encoder's biases too)"
            )
        if not isinstance(self.train_qformer, bool):
            raise InputError(f"Blip2LoraConfig.train_qformer must be true or false, got {self.train_qformer!r}")

    def default_tokenizer(self) -> str:
        """The base folder's own tokenizer when it has one (checked to keep Vietnamese text), else ``train``."""
        if self.base_model and _has_tokenizer(Path(self.base_model).expanduser()):
            return str(Path(self.base_model).expanduser())
        return "train"


def _targets(value: Any) -> tuple[str, ...]:
    """LoRA target names from a tuple, a list or a comma-separated string (``--set lora_targets=q_proj,v_proj``)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise InputError(f"Blip2LoraConfig.lora_targets must be module names like q_proj,k_proj, got {value!r}")
    names = tuple(item.strip() for item in items if item.strip())
    bad = [name for name in names if not re.fullmatch(r"[A-Za-z0-9_.]+", name)]
    if not names or bad:
        raise InputError(f"Blip2LoraConfig.lora_targets must be module names like q_proj,k_proj, got {value!r}")
    return names


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


class _ImageSide(nn.Module):
    """ViT → Q-Former → projection of a BLIP-2: pixels (B, 3, S, S) → LM input embeddings (B, Q, D_lm).

    A view over the BLIP-2's own modules (shared, not copied): the frozen extractor the
    feature cache hashes when the Q-Former is not trained.
    """

    def __init__(self, hf: Any) -> None:
        super().__init__()
        self.vision_model = hf.vision_model
        self.qformer = hf.qformer
        self.language_projection = hf.language_projection
        self.query_tokens = hf.query_tokens  # (1, Q, D_q)

    def queries(self, vision: torch.Tensor) -> torch.Tensor:
        """ViT states (B, 1 + N, D_v) → query outputs projected into the LM (B, Q, D_lm)."""
        query = self.query_tokens.expand(vision.shape[0], -1, -1)  # (B, Q, D_q)
        mask = torch.ones(vision.shape[:-1], dtype=torch.long, device=vision.device)  # (B, 1 + N)
        out = self.qformer(query_embeds=query, encoder_hidden_states=vision, encoder_attention_mask=mask)
        hidden = out.last_hidden_state  # (B, Q, D_q), fp32 (transformers keeps the Q-Former in fp32)
        return self.language_projection(hidden.to(self.language_projection.weight.dtype))  # (B, Q, D_lm)

    def vision(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → ViT last hidden state (B, 1 + N, D_v)."""
        dtype = self.vision_model.embeddings.patch_embedding.weight.dtype
        return self.vision_model(pixel_values=pixels.to(dtype)).last_hidden_state

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.queries(self.vision(pixels))


class _CleanBase:
    """What ``HFLayout`` saves as ``hf/``: the BLIP-2 without the adapter (peft's own base holds LoRA layers)."""

    def __init__(self, hf: Any) -> None:
        self.hf = hf

    def save_pretrained(self, folder: Path) -> None:
        self.hf.save_pretrained(str(folder), state_dict=base_state_dict(self.hf))


def base_state_dict(hf: nn.Module) -> dict[str, torch.Tensor]:
    """``hf``'s weights as the base model had them: LoRA and modules_to_save copies dropped, wrapped names unwrapped."""
    clean: dict[str, torch.Tensor] = {}
    for key, tensor in hf.state_dict().items():
        if LORA_KEY.search(key) or ".modules_to_save." in key:
            continue
        clean[key.replace(".base_layer.", ".").replace(".original_module.", ".")] = tensor
    return clean


class Blip2LoraCaptioner(PretrainedCaptioner):
    """A BLIP-2 behind the step-wise contract; ``peft`` is the PeftModel wrapping ``hf`` while an adapter is apart."""

    peft: Any

    def __init__(self, config: Blip2LoraConfig, hf: Any, peft: Any = None) -> None:
        super().__init__()
        self.config = config
        self.hf = hf  # Blip2ForConditionalGeneration (LoRA layers injected in place while ``peft`` is set)
        self.attach_peft(peft)

    def attach_peft(self, peft: Any) -> None:
        """Not a submodule: the PeftModel wraps ``self.hf``, whose parameters are already registered here."""
        object.__setattr__(self, "peft", peft)

    @property
    def peft_config(self) -> Any:
        """peft's adapter configs while an unmerged adapter is attached (what ``HFLayout`` looks for), else None."""
        return None if self.peft is None else self.peft.peft_config

    @property
    def backbone_frozen(self) -> bool:
        return True  # the ViT always; with train_qformer=False the whole image side

    @property
    def num_query_tokens(self) -> int:
        return int(self.hf.config.num_query_tokens)

    def train(self, mode: bool = True) -> Blip2LoraCaptioner:
        super().train(mode)
        self.hf.vision_model.eval()  # frozen: the cached features, dropout off
        if not self.config.train_qformer:
            self.hf.qformer.eval()
            self.hf.language_projection.eval()
        return self

    def image_side(self) -> _ImageSide:
        return _ImageSide(self.hf)

    def feature_extractor(self) -> nn.Module:
        return self.hf.vision_model if self.config.train_qformer else self.image_side()

    def extract_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → query embeddings (B, Q, D_lm), or with train_qformer the ViT states (B, 1 + N, D_v)."""
        side = self.image_side()
        return side.vision(pixels) if self.config.train_qformer else side(pixels)

    def queries(self, features: torch.Tensor) -> torch.Tensor:
        """Features → the LM input embeddings of the query tokens (B, Q, D_lm)."""
        return self.image_side().queries(features) if self.config.train_qformer else features

    def decode(self, queries: torch.Tensor, tokens: torch.Tensor, keep: int = 0) -> torch.Tensor:
        """[queries (B, Q, D) ; embeddings of tokens (B, T)] through the LM → logits (B, keep or T, V)."""
        lm = self.hf.language_model
        text = lm.get_input_embeddings()(tokens)  # (B, T, D)
        embeds = torch.cat([queries.to(text.dtype), text], dim=1)  # (B, Q + T, D)
        logits = lm(inputs_embeds=embeds, use_cache=False, logits_to_keep=keep or tokens.shape[1]).logits
        return logits[..., : self.config.vocab_size]  # (B, keep or T, V): the LM may have padding rows

    def forward(self, features: torch.Tensor, tokens_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: features, tokens_in (B, T) → logits (B, T, V)."""
        return self.decode(self.queries(features), tokens_in)

    def start(self, features: torch.Tensor) -> DecoderState:
        """Features → (query embeddings (B, Q, D_lm), no ids yet): the Q-Former runs once per image."""
        return super().start(self.queries(features))

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Append ``tokens`` (B,) and return the next token's logits (B, V) in fp32 (only the last position)."""
        queries, ids = state
        ids = torch.cat([ids, tokens.to(ids.dtype).unsqueeze(1)], dim=1)  # (B, t+1)
        logits = self.decode(queries, ids, keep=1)[:, -1]  # (B, V)
        return logits.float(), (queries, ids)

    def save_pretrained(self, folder: Path) -> None:
        """The adapter alone while one is attached (``HFLayout`` saves ``get_base_model()`` beside it), else the model."""
        if self.peft is None:
            self.hf.save_pretrained(str(folder))
            return
        self.peft.save_pretrained(str(folder))
        (Path(folder) / PEFT_README).unlink(missing_ok=True)

    def get_base_model(self) -> _CleanBase:
        return _CleanBase(self.hf)


def _check_blip2(folder: Path) -> None:
    """A folder whose config.json is not a BLIP-2 (or whose LM is not decoder-only) is one line."""
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {folder / 'config.json'}: {exc}") from exc
    kind = raw.get("model_type") if isinstance(raw, dict) else None
    if kind != "blip-2":
        raise InputError(
            f"{folder} holds a {kind!r} model, not BLIP-2 (Blip2ForConditionalGeneration); "
            f"give --base-model a local copy of {MODEL_IDS}"
        )


def _base_vocab(folder: Path) -> dict[str, int] | None:
    """The base folder's tokenizer vocabulary (token → id), or None when it holds no tokenizer."""
    return dict(load_tokenizer(folder).get_vocab()) if _has_tokenizer(folder) else None


def _tied_weights(hf: Any) -> dict[str, str]:
    """The LM's tied weights (``lm_head.weight`` → its input embedding) named from the BLIP-2 top level."""
    lm = hf.language_model
    tied = getattr(lm, "_tied_weights_keys", None)
    if not isinstance(tied, dict) or getattr(lm.config, "tie_word_embeddings", True) is False:
        return {}
    return {f"language_model.{target}": f"language_model.{source}" for target, source in tied.items()}


def _expose_tied_weights(hf: Any) -> bool:
    """Tell peft about the LM's tying, which BLIP-2's top level does not declare; True when the LM ties.

    Without it ``ensure_weight_tying`` finds nothing and a trained embedding would leave
    the output layer behind (measured: peft warns "no tied modules were found").
    """
    tied = _tied_weights(hf)
    if tied:
        hf._tied_weights_keys = tied
    return bool(tied)


def _use_codec(hf: Any, codec: HFTokenizerCodec, base_vocab: dict[str, int] | None) -> bool:
    """Size the LM's vocabulary for ``codec``, set its special and image ids; True when the embeddings are fresh."""
    vocab = codec.tokenizer.get_vocab()
    if IMAGE_TOKEN not in vocab:
        raise InputError(f"the tokenizer has no {IMAGE_TOKEN} token; BLIP-2 needs it as the image placeholder")
    lm = hf.language_model
    same_ids = base_vocab is not None and all(vocab.get(token) == i for token, i in base_vocab.items())
    if not same_ids:
        lm.resize_token_embeddings(len(codec), mean_resizing=False)
        reset_embeddings(lm.get_input_embeddings())
        output = lm.get_output_embeddings()
        if output is not None and output.weight is not lm.get_input_embeddings().weight:
            reset_embeddings(output)
    elif lm.get_input_embeddings().num_embeddings < len(codec):
        lm.resize_token_embeddings(len(codec))  # rows for added tokens: transformers' mean of the pretrained ones
    text = hf.config.text_config
    text.vocab_size = lm.get_input_embeddings().num_embeddings
    text.bos_token_id, text.eos_token_id, text.pad_token_id = codec.bos_id, codec.eos_id, codec.pad_id
    hf.config.image_token_index = int(vocab[IMAGE_TOKEN])
    return not same_ids


def _lora_config(hf: Any, config: Blip2LoraConfig, *, train_embeddings: bool) -> Any:
    """peft's LoraConfig: LoRA on the LM's ``lora_targets``; Q-Former/projection and fresh embeddings saved whole."""
    from peft import LoraConfig  # peft: only where an adapter is made

    modules_to_save = ["qformer", "language_projection"] if config.train_qformer else []
    tied = _expose_tied_weights(hf)
    if train_embeddings:
        names = {module: name for name, module in hf.named_modules()}
        modules_to_save.append(names[hf.language_model.get_input_embeddings()])
        if not tied:
            modules_to_save.append(names[hf.language_model.get_output_embeddings()])
    targets = "|".join(re.escape(name) for name in config.lora_targets)
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias=config.lora_bias,
        target_modules=rf"language_model\..*\.(?:{targets})",  # peft fullmatches a str: never the image side
        modules_to_save=modules_to_save or None,
        ensure_weight_tying=tied and train_embeddings,
    )


def _peft_quietly(make: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a peft constructor without transformers' deprecation note about gradient checkpointing it triggers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return make(*args, **kwargs)


def add_adapter(model: Blip2LoraCaptioner, *, train_embeddings: bool) -> Blip2LoraCaptioner:
    """Inject a fresh LoRA adapter into ``model.hf``; only it (and any modules_to_save) is trainable after."""
    from peft import get_peft_model  # peft: only where an adapter is made

    lora = _lora_config(model.hf, model.config, train_embeddings=train_embeddings)
    try:
        peft = _peft_quietly(get_peft_model, model.hf, lora)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0]
        targets = ",".join(model.config.lora_targets)
        raise InputError(f"LoRA targets {targets} do not fit the language model: {first}") from exc
    model.attach_peft(peft)
    return model


def build(config: Blip2LoraConfig, *, codec: HFTokenizerCodec) -> Blip2LoraCaptioner:
    """BLIP-2 from the local base model folder, its LM sized to ``codec``, with a fresh LoRA adapter."""
    from transformers import Blip2ForConditionalGeneration  # transformers: only where a BLIP-2 is built

    folder = pretrained_dir(config.base_model, what="BLIP-2 base model", option="--base-model", model_ids=MODEL_IDS)
    _check_blip2(folder)
    hf: Any = from_local(Blip2ForConditionalGeneration.from_pretrained, folder, what="BLIP-2 base model")
    if not hf.config.use_decoder_only_language_model:
        raise InputError(f"{folder} is a BLIP-2 with an encoder-decoder LM (e.g. Flan-T5); blip2-lora takes OPT-style")
    fresh = _use_codec(hf, codec, _base_vocab(folder))
    image_size = int(hf.config.vision_config.image_size)
    config = dataclasses.replace(config, base_model=str(folder), image_size=image_size, vocab_size=len(codec))
    config.validate()
    return add_adapter(Blip2LoraCaptioner(config, hf), train_embeddings=fresh)


def load_pretrained(hf_dir: Path, config: Blip2LoraConfig, **load_options: Any) -> Blip2LoraCaptioner:
    """A checkpoint's ``hf/`` folder (the base model) back as a captioner without its adapter."""
    from transformers import Blip2ForConditionalGeneration  # transformers: only where a BLIP-2 is loaded

    hf = from_local(Blip2ForConditionalGeneration.from_pretrained, hf_dir, what="BLIP-2 checkpoint", **load_options)
    return Blip2LoraCaptioner(config, hf)


def load_adapter(model: Blip2LoraCaptioner, adapter_dir: Path, *, merge: bool = True) -> Blip2LoraCaptioner:
    """Attach the adapter in ``adapter_dir``; merged into the weights for inference unless ``merge=False``."""
    from peft import PeftModel  # peft: only where an adapter is loaded

    _expose_tied_weights(model.hf)
    peft = _peft_quietly(PeftModel.from_pretrained, model.hf, str(adapter_dir), is_trainable=False)
    if merge:
        model.hf = peft.merge_and_unload()
        model.attach_peft(None)
    else:
        model.attach_peft(peft)
    return model


def preprocessing(config: Blip2LoraConfig) -> Preprocessing:
    """BLIP-2's processor (BlipImageProcessor): squash to image_size, bicubic, CLIP statistics."""
    return Preprocessing(config.image_size, resize="squash", mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")


FAMILY = ModelFamily(
    config_cls=Blip2LoraConfig,
    build=build,
    layout=HFLayout(load_pretrained, load_adapter),  # hf/ = the base BLIP-2, adapter/ = the LoRA adapter
    codec="hf-tokenizer",
    preprocessing=preprocessing,
)
