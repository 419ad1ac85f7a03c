"""``vit-seq2seq``: a ViT-style image encoder + a Vietnamese text decoder (``VisionEncoderDecoderModel``).

The study this tool comes from named "a Vietnamese language model as decoder" as
future work; this family is that. Two local folders: ``--vision-model DIR`` (any
image encoder ``AutoModel`` loads that takes ``pixel_values``: ViT, DeiT, BEiT...)
and ``--text-model DIR`` (a Vietnamese decoder: a GPT-2-style causal LM, or the
decoder half of a BART/mBART checkpoint such as BARTpho-syllable). Cross-attention
from the decoder to the encoder's patch grid is added where the decoder has none;
the model trains end to end, or with the encoder frozen (``freeze_vision=true``: its
outputs are cached once by the trainer).

How it is assembled (measured on transformers 5.24):

- ``VisionEncoderDecoderModel.from_encoder_decoder_pretrained`` crashes on a GPT-2
  decoder (``GPT2Config`` has no ``is_decoder`` any more), so the two halves are
  loaded here and joined with ``VisionEncoderDecoderModel(encoder=, decoder=)``; its
  ``save_pretrained`` / ``from_pretrained`` then round-trip exactly.
- An encoder-decoder text checkpoint (``config.is_encoder_decoder``: BARTpho is
  ``MBartForConditionalGeneration``) loaded with ``AutoModelForCausalLM`` silently
  re-initializes ``model.decoder.embed_tokens`` and ``lm_head`` (they are stored as
  the shared embedding). So the seq2seq model is loaded whole and its decoder
  weights are copied into the causal-LM class (``MBartForCausalLM``); every weight
  of that class must have its counterpart or the folder is refused. BART's decoder
  keeps its pretrained cross-attention. ``final_logits_bias`` has no place in the
  causal class and is dropped (zero in the BART checkpoints; a warning otherwise).
- T5 (ViT5) is refused: transformers has no decoder-only T5 class to load its
  decoder into, so a saved checkpoint could not be loaded back by
  ``VisionEncoderDecoderModel.from_pretrained``.
- A decoder that ignores ``encoder_hidden_states`` (Llama-style models have no
  cross-attention) is refused: :func:`_check_reads_image` feeds two different image
  grids and requires different logits.
- Weights load in fp32 for training (transformers 5 loads a checkpoint's own dtype
  by default; AdamW on bf16 weights loses updates); the trainer adds autocast on GPU.
- When the encoder's and decoder's widths differ, ``VisionEncoderDecoderModel`` adds
  ``enc_to_dec_proj``; the feature is the encoder's raw output (what the trainer
  caches for a frozen encoder) and ``forward`` applies the projection, so it trains.

Text side: the tokenizer in the text model's folder when it has one (its ids are
the decoder's: the pretrained embeddings are kept), else a byte-level BPE trained on
the train captions, for which the decoder's embedding table is resized and drawn
afresh (its layers keep their pretraining).

Preprocessing is the encoder's image processor, read from its folder's
``preprocessor_config.json`` (``image_mean``/``image_std``/``resample``), squashing to
the encoder config's ``image_size`` (its position embeddings fix it); without that
file, ``ViTImageProcessor``'s defaults: bilinear, mean = std = 0.5.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vicap_jobs.data.images import RESAMPLES, Preprocessing, Resample
from vicap_jobs.errors import InputError, NotFoundError, WeightsMissingError
from vicap_jobs.models.checkpoint import HFLayout
from vicap_jobs.models.hf_codec import HFTokenizerCodec, load_tokenizer
from vicap_jobs.models.pretrained import PretrainedCaptioner, from_local, pretrained_dir, reset_embeddings
from vicap_jobs.models.registry import ModelFamily

log = logging.getLogger(__name__)

VISION_IDS = "google/vit-base-patch16-224-in21k (or another ViT/DeiT/BEiT image encoder)"
TEXT_IDS = "vinai/bartpho-syllable or a Vietnamese GPT-2 (e.g. NlpHUST/gpt2-vietnamese)"
VIT_MEAN_STD = (0.5, 0.5, 0.5)  # ViTImageProcessor's default image_mean and image_std
PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # preprocessor_config.json's "resample" (a PIL code) → ours
# What a save_pretrained tokenizer leaves in a folder (any one of them means the folder has one).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)


@dataclass
class VitSeq2SeqConfig:
    """ViT + Vietnamese decoder settings; image size and statistics are read from the encoder folder at build."""

    vision_model: str = ""  # local image encoder folder (AutoModel with pixel_values input)
    text_model: str = ""  # local decoder folder: a causal LM, or a BART/mBART seq2seq checkpoint
    freeze_vision: bool = False  # True: the encoder is not trained and its outputs are cached once
    image_size: int = 224
    image_mean: tuple[float, float, float] = VIT_MEAN_STD
    image_std: tuple[float, float, float] = VIT_MEAN_STD
    resample: str = "bilinear"

    def validate(self) -> None:
        if self.image_size <= 0:
            raise InputError(f"VitSeq2SeqConfig.image_size must be positive, got {self.image_size}")
        if self.resample not in RESAMPLES:
            raise InputError(f"VitSeq2SeqConfig.resample must be one of {sorted(RESAMPLES)}, got {self.resample!r}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise InputError(f"VitSeq2SeqConfig image_mean/image_std need 3 channels, std positive: {self.image_std}")

    def default_tokenizer(self) -> str:
        """The text model folder's own tokenizer when it has one (its embeddings stay meaningful), else "train"."""
        folder = Path(self.text_model).expanduser() if self.text_model else None
        if folder is not None and has_tokenizer(folder):
            return str(folder.resolve())
        return "train"


def has_tokenizer(folder: Path) -> bool:
    """True when ``folder`` holds a saved tokenizer (any of TOKENIZER_FILES)."""
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


class VitSeq2SeqCaptioner(PretrainedCaptioner):
    """A ``VisionEncoderDecoderModel`` behind the step-wise contract."""

    def __init__(self, config: VitSeq2SeqConfig, hf: Any) -> None:
        super().__init__()
        self.config = config
        self.hf = hf  # VisionEncoderDecoderModel
        if config.freeze_vision:
            self.hf.encoder.requires_grad_(False)

    @property
    def backbone_frozen(self) -> bool:
        return self.config.freeze_vision

    def train(self, mode: bool = True) -> VitSeq2SeqCaptioner:
        super().train(mode)
        if self.config.freeze_vision:
            self.hf.encoder.eval()  # a frozen encoder gives the cached features, dropout off
        return self

    def feature_extractor(self) -> nn.Module:
        return self.hf.encoder

    def extract_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → the encoder's output grid (B, 1 + N, D_enc), before any projection."""
        return self.hf.encoder(pixel_values=pixels.to(self.hf.encoder.dtype)).last_hidden_state

    def memory(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder grid (B, L, D_enc) → what the decoder cross-attends to (B, L, D_dec): enc_to_dec_proj if any."""
        projection = getattr(self.hf, "enc_to_dec_proj", None)  # exists only when the widths differ
        if projection is None:
            return features.to(self.hf.decoder.dtype)
        return projection(features.to(projection.weight.dtype))  # (B, L, D_dec)

    def forward(self, features: torch.Tensor, tokens_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: features (B, L, D_enc), tokens_in (B, T) → logits (B, T, V)."""
        memory = self.memory(features)
        return self.hf.decoder(input_ids=tokens_in, encoder_hidden_states=memory, use_cache=False).logits

    def save_pretrained(self, folder: Path) -> None:
        self.hf.save_pretrained(str(folder))


# --------------------------------------------------------------------------- the two halves


def _load_encoder(folder: Path) -> Any:
    """The image encoder (``AutoModel``, fp32); a folder whose model does not take pixels is refused."""
    from transformers import AutoModel  # transformers: only where a model is built

    encoder = from_local(AutoModel.from_pretrained, folder, what="vision model", dtype=torch.float32)
    if encoder.main_input_name != "pixel_values" or encoder.get_output_embeddings() is not None:
        raise InputError(
            f"vision model folder {folder} holds a {encoder.config.model_type!r} model, not an image encoder; "
            f"give --vision-model a ViT-style encoder (e.g. {VISION_IDS})"
        )
    return encoder


def _load_decoder(folder: Path) -> Any:
    """The text decoder as a causal LM with cross-attention; a seq2seq checkpoint gives its decoder half."""
    from transformers import AutoConfig, AutoModelForCausalLM  # transformers: only where a model is built
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = from_local(AutoConfig.from_pretrained, folder, what="text model")
    model_type = str(config.model_type)
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        if seq2seq:
            raise InputError(
                f"text model folder {folder} holds a {model_type!r} encoder-decoder, and transformers has no "
                f"decoder-only {model_type!r} class to take its decoder into; use a BART/mBART (BARTpho) "
                "or a GPT-2-style decoder"
            )
        raise InputError(
            f"text model folder {folder} holds a {model_type!r} model, not a text decoder; give --text-model "
            f"a causal LM or a BART/mBART checkpoint (e.g. {TEXT_IDS})"
        )
    config.add_cross_attention = True
    if hasattr(config, "is_decoder"):
        config.is_decoder = True
    if seq2seq:
        return _decoder_of_seq2seq(folder, config)
    return from_local(
        AutoModelForCausalLM.from_pretrained, folder, what="text model", config=config, dtype=torch.float32
    )


def _decoder_of_seq2seq(folder: Path, config: Any) -> Any:
    """The decoder of an encoder-decoder checkpoint (BART/mBART) copied into its causal-LM class, shared
    embeddings and output layer included (``AutoModelForCausalLM.from_pretrained`` would redraw them)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM  # transformers: only at build

    source_model = from_local(AutoModelForSeq2SeqLM.from_pretrained, folder, what="text model", dtype=torch.float32)
    decoder_config = copy.deepcopy(config)
    decoder_config.is_encoder_decoder = False
    decoder = AutoModelForCausalLM.from_config(decoder_config, dtype=torch.float32)
    source, target = source_model.state_dict(), decoder.state_dict()
    unmatched = [key for key in target if key not in source or source[key].shape != target[key].shape]
    if unmatched:
        raise InputError(
            f"cannot take the decoder out of the {config.model_type!r} model in {folder}: {len(unmatched)} of its "
            f"weights (e.g. {unmatched[0]}) have no counterpart in {type(decoder).__name__}"
        )
    decoder.load_state_dict({key: source[key] for key in target})
    bias = getattr(source_model, "final_logits_bias", None)
    if isinstance(bias, torch.Tensor) and bool(bias.abs().max() > 0):
        log.warning("the text model's final_logits_bias is not zero; the causal decoder has none: dropped")
    return decoder


def _check_reads_image(model: VitSeq2SeqCaptioner, folder: Path, start_id: int) -> None:
    """Refuse a decoder whose logits do not depend on the image (no cross-attention in its architecture)."""
    was_training = model.training
    model.eval()
    width = int(model.hf.config.encoder.hidden_size)
    generator = torch.Generator().manual_seed(0)
    grids = torch.randn((2, 3, width), generator=generator)  # (2, L, D_enc): two different images
    tokens = torch.full((2, 1), start_id, dtype=torch.long)
    try:
        with torch.no_grad():
            logits = model(grids, tokens)  # (2, 1, V)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"the decoder in {folder} cannot cross-attend to an image: {exc}") from exc
    finally:
        model.train(was_training)
    if torch.allclose(logits[0], logits[1]):
        raise InputError(
            f"the {model.hf.config.decoder.model_type!r} decoder in {folder} has no cross-attention (it ignores "
            "the image); use a GPT-2-, BERT- or BART-style decoder"
        )


# --------------------------------------------------------------------------- building


def _own_vocabulary(folder: Path, codec: HFTokenizerCodec) -> bool:
    """True when the codec's token → id map is the text model's own tokenizer's (its embeddings then mean something)."""
    if not has_tokenizer(folder):
        return False
    try:
        own = load_tokenizer(folder)
    except (NotFoundError, WeightsMissingError):
        return False
    return bool(own.get_vocab() == codec.tokenizer.get_vocab())


def _use_codec(hf: Any, codec: HFTokenizerCodec, *, keep_embeddings: bool) -> None:
    """Size the decoder's vocabulary to the codec (fresh rows unless it is the decoder's own) and set its ids."""
    decoder = hf.decoder
    if decoder.get_input_embeddings().num_embeddings != len(codec):
        decoder.resize_token_embeddings(len(codec), mean_resizing=False)  # keeps the first rows
    if not keep_embeddings:
        reset_embeddings(decoder.get_input_embeddings())
        output = decoder.get_output_embeddings()
        if output is not None and output.weight is not decoder.get_input_embeddings().weight:
            reset_embeddings(output)  # an untied output layer
        if output is not None and getattr(output, "bias", None) is not None:
            nn.init.zeros_(output.bias)
    for config in (hf.config.decoder, hf.config, hf.generation_config):
        config.bos_token_id, config.eos_token_id, config.pad_token_id = codec.bos_id, codec.eos_id, codec.pad_id
        config.decoder_start_token_id = codec.bos_id
    hf.config.decoder.vocab_size = len(codec)


def _image_policy(folder: Path, encoder_config: Any) -> dict[str, Any]:
    """image_size from the encoder config; mean/std/resample from preprocessor_config.json (else ViT's defaults)."""
    size = encoder_config.image_size
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise InputError(f"vision model {folder} expects non-square {tuple(size)} images; only square is supported")
        size = size[0]
    policy: dict[str, Any] = {"image_size": int(size)}
    processor_file = folder / "preprocessor_config.json"
    if not processor_file.is_file():
        return policy
    try:
        processor = json.loads(processor_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {processor_file}: {exc}") from exc
    if processor.get("do_normalize", True):
        policy["image_mean"] = tuple(float(v) for v in processor.get("image_mean", VIT_MEAN_STD))
        policy["image_std"] = tuple(float(v) for v in processor.get("image_std", VIT_MEAN_STD))
    else:
        policy["image_mean"], policy["image_std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = processor.get("resample", 2)
    policy["resample"] = PIL_RESAMPLE.get(resample, "bilinear")
    if resample not in PIL_RESAMPLE:
        log.warning("vision model %s resamples with PIL code %r; using bilinear", folder, resample)
    return policy


def build(config: VitSeq2SeqConfig, *, codec: HFTokenizerCodec) -> VitSeq2SeqCaptioner:
    """Encoder and decoder from their local folders, joined by cross-attention, the text side sized to ``codec``."""
    from transformers import VisionEncoderDecoderModel  # transformers: only where a model is built

    vision = pretrained_dir(config.vision_model, what="vision model", option="--vision-model", model_ids=VISION_IDS)
    text = pretrained_dir(config.text_model, what="text model", option="--text-model", model_ids=TEXT_IDS)
    encoder = _load_encoder(vision)
    decoder = _load_decoder(text)
    hf = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    _use_codec(hf, codec, keep_embeddings=_own_vocabulary(text, codec))
    config = dataclasses.replace(
        config, vision_model=str(vision), text_model=str(text), **_image_policy(vision, hf.config.encoder)
    )
    config.validate()
    model = VitSeq2SeqCaptioner(config, hf)
    _check_reads_image(model, text, codec.bos_id)
    return model


def load_pretrained(hf_dir: Path, config: VitSeq2SeqConfig, **load_options: Any) -> VitSeq2SeqCaptioner:
    """A checkpoint's ``hf/`` folder back as a captioner (``load_options``: e.g. a quantization_config)."""
    from transformers import VisionEncoderDecoderModel  # transformers: only where a model is loaded

    hf = from_local(VisionEncoderDecoderModel.from_pretrained, hf_dir, what="ViT + decoder checkpoint", **load_options)
    return VitSeq2SeqCaptioner(config, hf)


def preprocessing(config: VitSeq2SeqConfig) -> Preprocessing:
    """The encoder's image processor: squash to image_size, its resampling and statistics."""
    mean = (float(config.image_mean[0]), float(config.image_mean[1]), float(config.image_mean[2]))
    std = (float(config.image_std[0]), float(config.image_std[1]), float(config.image_std[2]))
    resample: Resample = "bicubic" if config.resample == "bicubic" else "bilinear"  # validate() allows only these
    return Preprocessing(config.image_size, resize="squash", mean=mean, std=std, resample=resample)


FAMILY = ModelFamily(
    config_cls=VitSeq2SeqConfig,
    build=build,
    layout=HFLayout(load_pretrained),  # hf/ = VisionEncoderDecoderModel.save_pretrained
    codec="hf-tokenizer",
    preprocessing=preprocessing,
)
