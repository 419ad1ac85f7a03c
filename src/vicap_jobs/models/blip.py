"""``blip``: BLIP (``BlipForConditionalGeneration``) fine-tuned for Vietnamese, with a text side that keeps diacritics.

The study this tool comes from fine-tuned BLIP with its stock ``bert-base-uncased``
tokenizer, which strips Vietnamese tone marks, so its captions had to be re-accented
by an external LLM. Here the text side is a tokenizer that keeps every diacritic
(``models/hf_codec.py``): by default a byte-level BPE learned on the train split's
captions. A new tokenizer's ids mean nothing to the pretrained word embeddings, so
the text decoder's embedding table (tied to its output layer) is resized to the
tokenizer and drawn afresh; its transformer layers and cross-attention keep their
pretraining. With ``--tokenizer DIR`` naming the base folder's own tokenizer (every
token at the same id) the pretrained rows are kept; any other vocabulary is drawn
afresh, even at the same size.

Model: the ViT image encoder's patch grid (B, 1 + N, D) is the feature; the BERT-style
text decoder cross-attends to it (``forward``). Preprocessing is BLIP's processor:
squash to the vision config's ``image_size`` (384 for the released checkpoints),
bicubic, CLIP mean/std. Needs one local folder: ``--base-model DIR``, a copy of
``Salesforce/blip-image-captioning-base`` (or ``-large``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vicap_jobs.data.images import CLIP_MEAN, CLIP_STD, Preprocessing
from vicap_jobs.errors import InputError, VicapError
from vicap_jobs.models.checkpoint import HFLayout
from vicap_jobs.models.hf_codec import HFTokenizerCodec, load_tokenizer
from vicap_jobs.models.pretrained import PretrainedCaptioner, from_local, pretrained_dir, reset_embeddings
from vicap_jobs.models.registry import ModelFamily, get_family


@dataclass
class BlipCaptionConfig:
    """BLIP fine-tuning settings; ``image_size`` is read from the base model when it is built."""

    base_model: str = ""  # local BlipForConditionalGeneration folder (only read when training starts)
    freeze_vision: bool = False  # True: the ViT is not trained and its features are cached once
    image_size: int = 384

    def validate(self) -> None:
        if self.image_size <= 0:
            raise InputError(f"BlipCaptionConfig.image_size must be positive, got {self.image_size}")

    def default_tokenizer(self) -> str:
        """Train a byte-level BPE on the train captions unless the user names a tokenizer folder."""
        return "train"


class BlipCaptioner(PretrainedCaptioner):
    """BLIP's vision model + text decoder behind the step-wise contract."""

    def __init__(self, config: BlipCaptionConfig, hf: Any) -> None:
        super().__init__()
        self.config = config
        self.hf = hf  # BlipForConditionalGeneration
        if config.freeze_vision:
            self.hf.vision_model.requires_grad_(False)

    @property
    def backbone_frozen(self) -> bool:
        return self.config.freeze_vision

    def train(self, mode: bool = True) -> BlipCaptioner:
        super().train(mode)
        if self.config.freeze_vision:
            self.hf.vision_model.eval()  # a frozen encoder gives the cached features, dropout off
        return self

    def feature_extractor(self) -> nn.Module:
        return self.hf.vision_model

    def extract_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → the ViT patch grid (B, 1 + N, D)."""
        dtype = self.hf.vision_model.embeddings.patch_embedding.weight.dtype
        return self.hf.vision_model(pixel_values=pixels.to(dtype)).last_hidden_state

    def forward(self, features: torch.Tensor, tokens_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: features (B, 1 + N, D), tokens_in (B, T) → logits (B, T, V)."""
        decoder = self.hf.text_decoder
        memory = features.to(decoder.get_input_embeddings().weight.dtype)
        return decoder(input_ids=tokens_in, encoder_hidden_states=memory, return_dict=True).logits

    def save_pretrained(self, folder: Path) -> None:
        self.hf.save_pretrained(str(folder))


def _speaks_base_vocab(codec: HFTokenizerCodec, folder: Path) -> bool:
    """True when the base folder has a tokenizer and every one of its tokens has the same id in the codec."""
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        return False
    try:
        own = load_tokenizer(folder).get_vocab()
    except VicapError:
        return False
    mine = codec.tokenizer.get_vocab()
    return all(mine.get(token) == index for token, index in own.items())


def _use_codec(hf: Any, codec: HFTokenizerCodec, *, same_vocab: bool) -> None:
    """Size the text decoder's vocabulary to the codec and set its special ids.

    The base tokenizer's own ids keep their pretrained rows; any other vocabulary's ids
    mean nothing to them (even at the same size), so every row is drawn afresh.
    """
    decoder = hf.text_decoder
    if decoder.get_input_embeddings().num_embeddings != len(codec):
        decoder.resize_token_embeddings(len(codec), mean_resizing=False)
    if not same_vocab:
        reset_embeddings(decoder.get_input_embeddings())  # tied to the output layer in BLIP checkpoints
        head = decoder.get_output_embeddings()
        if head is not None and head.weight is not decoder.get_input_embeddings().weight:
            reset_embeddings(head)
        bias = getattr(decoder.cls.predictions, "bias", None)
        if bias is not None:
            nn.init.zeros_(bias)
    text = hf.config.text_config
    text.vocab_size = len(codec)
    text.bos_token_id, text.sep_token_id, text.pad_token_id = codec.bos_id, codec.eos_id, codec.pad_id
    text.eos_token_id = codec.eos_id
    hf.decoder_input_ids, hf.decoder_pad_token_id = codec.bos_id, codec.pad_id


def build(config: BlipCaptionConfig, *, codec: HFTokenizerCodec) -> BlipCaptioner:
    """BLIP from the local base model folder, its text side sized to ``codec``."""
    from transformers import BlipForConditionalGeneration  # transformers: only where a BLIP is built

    model_ids = get_family("blip").inputs["base_model"]
    folder = pretrained_dir(config.base_model, what="BLIP base model", option="--base-model", model_ids=model_ids)
    # fp32 for training whatever dtype the folder was saved in (transformers 5 keeps the saved one).
    hf = from_local(BlipForConditionalGeneration.from_pretrained, folder, what="BLIP base model", dtype=torch.float32)
    if not hasattr(hf, "text_decoder"):
        raise InputError(f"{folder} is not a BLIP captioning model (BlipForConditionalGeneration)")
    _use_codec(hf, codec, same_vocab=_speaks_base_vocab(codec, folder))
    image_size = int(hf.config.to_dict()["vision_config"]["image_size"])
    config = dataclasses.replace(config, base_model=str(folder), image_size=image_size)
    config.validate()
    return BlipCaptioner(config, hf)


def load_pretrained(hf_dir: Path, config: BlipCaptionConfig, **load_options: Any) -> BlipCaptioner:
    """A checkpoint's ``hf/`` folder back as a captioner (``load_options``: e.g. a quantization_config)."""
    from transformers import BlipForConditionalGeneration  # transformers: only where a BLIP is loaded

    hf = from_local(BlipForConditionalGeneration.from_pretrained, hf_dir, what="BLIP checkpoint", **load_options)
    return BlipCaptioner(config, hf)


def preprocessing(config: BlipCaptionConfig) -> Preprocessing:
    """BLIP's processor: squash to image_size, bicubic, CLIP statistics."""
    return Preprocessing(config.image_size, resize="squash", mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")


FAMILY = ModelFamily(
    config_cls=BlipCaptionConfig,
    build=build,
    layout=HFLayout(load_pretrained),  # hf/ = BlipForConditionalGeneration.save_pretrained
    codec="hf-tokenizer",
    preprocessing=preprocessing,
)
