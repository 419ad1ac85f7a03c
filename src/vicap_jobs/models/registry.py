"""One registry: model family name → what the system needs to know, without importing torch.

Each family has one line in :data:`FAMILIES`: its module, its engines (name →
"module:Class", the first being the static default), the export formats it supports,
its trainer ("module:function") and the engines it prefers over the default where
they are measured at least as fast (``prefer``; see ``engines/choice.py``). Listing families, engines and exports reads
only these lines (transformers' ``*_MAPPING_NAMES`` work the same way): the CLI
builds its choices and the services validate jobs without loading torch.

The family module itself is imported on first use of its parts. It ends with
``FAMILY = ModelFamily(...)``: its config dataclass, how to build a model, its
checkpoint layout (``models.checkpoint``), its text codec kind (``models.codec``)
and its preprocessing (``data.images.Preprocessing``).

Adding a family is adding its module and one :class:`FamilySpec` line here; a plugin
(``VICAP_PLUGINS``) calls :func:`register_family` with its line instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vicap_jobs.errors import InputError, UnknownNameError
from vicap_jobs.plugins import load_plugins, resolve

if TYPE_CHECKING:
    from vicap_jobs.data.images import Preprocessing
    from vicap_jobs.models.checkpoint import CheckpointLayout

# Engines and trainers of the CNN+LSTM families, shared by both (resolved only when used).
STEP_ENGINES: dict[str, str] = {
    "onnx": "vicap_jobs.engines.onnx_engine:OnnxEngine",
    "torch": "vicap_jobs.engines.torch_engine:TorchEngine",
    "torch-bf16": "vicap_jobs.engines.torch_engine:TorchBF16Engine",
    "onnx-int8": "vicap_jobs.engines.onnx_engine:OnnxInt8Engine",
    "openvino": "vicap_jobs.engines.openvino_engine:OpenVinoEngine",
    "openvino-bf16": "vicap_jobs.engines.openvino_engine:OpenVinoBF16Engine",
    "openvino-int8": "vicap_jobs.engines.openvino_engine:OpenVinoInt8Engine",
}
ONNX_EXPORT_ENGINES = frozenset({"onnx", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8"})  # read it
INT8_EXPORT_ENGINES = frozenset({"onnx-int8", "openvino-int8"})  # read its int8 variant (export onnx --quantize int8)
# Measured against the default on each machine; the fastest with the default's captions wins (engines/choice.py).
STEP_PREFER = ("openvino-int8", "onnx-int8", "openvino-bf16", "torch-bf16", "openvino")
LSTM_TRAINER = "vicap_jobs.training.lstm:train_lstm"
# Engines and trainer of the vision-language families (local Hugging Face folders).
# "torch" stays first: the static default wherever int8 was not measured faster (engines/choice.py).
PRETRAINED_ENGINES: dict[str, str] = {
    "torch": "vicap_jobs.engines.torch_engine:TorchEngine",
    "int8": "vicap_jobs.engines.int8_engine:Int8Engine",
}
PRETRAINED_PREFER = ("int8",)  # the default when measured at least as fast as torch here, with the same tokens
PRETRAINED_TRAINER = "vicap_jobs.training.pretrained:train_pretrained"


class UnknownEngineError(UnknownNameError):
    """An engine name the model family does not list; the message lists the ones it does."""

    def __init__(self, name: str, family: str, valid: list[str] | tuple[str, ...]) -> None:
        super().__init__("engine", name, valid)
        self.args = (f"unknown engine {name!r} for model family {family!r}; choose one of: {', '.join(valid)}",)


@dataclass(frozen=True)
class ModelFamily:
    """What a family module declares (as ``FAMILY``): the parts that need its imports (torch, transformers).

    build(config, ...) -> model: a fresh model for training (family-specific keywords,
    e.g. ``backbone_weights`` for the CNN+LSTM families); preprocessing(config) -> the
    policy a new model of that config is trained and served with.
    """

    config_cls: type
    build: Callable[..., Any]
    layout: CheckpointLayout
    codec: str  # a kind in vicap_jobs.models.codec.CODECS
    preprocessing: Callable[[Any], Preprocessing]


@dataclass(frozen=True)
class FamilySpec:
    """One family's registry line: names and "module:attr" references only (no torch)."""

    name: str
    module: str  # holds FAMILY = ModelFamily(...)
    description: str
    engines: Mapping[str, str]  # engine name → "module:Class"; the first is the default
    exports: tuple[str, ...] = ()  # export formats (vicap_jobs.export.EXPORTERS) this family supports
    trainer: str | None = None  # "module:function" called as function(family=name, options=..., ...)
    # Local pretrained folders the family is built from: TrainOptions field ("vision_model",
    # "text_model", "base_model") → the Hugging Face model ids a user would download elsewhere.
    # Empty for families trained from scratch or from torchvision backbones.
    inputs: Mapping[str, str] = field(default_factory=dict)
    # Engines that replace the default when measured at least as fast on the machine and agreeing
    # with it (vicap_jobs.engines.choice); empty: the default is always the first engine.
    prefer: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.engines:
            raise InputError(f"model family {self.name!r} lists no engine")
        unknown = [name for name in self.prefer if name not in self.engines or name == self.default_engine]
        if unknown:
            raise InputError(f"model family {self.name!r} prefers {unknown}, which are not its other engines")

    @property
    def engine_names(self) -> tuple[str, ...]:
        """This family's engines, the default first."""
        return tuple(self.engines)

    @property
    def pretrained(self) -> bool:
        """True for families built from local pretrained folders (the vision-language ones)."""
        return bool(self.inputs)

    @property
    def default_engine(self) -> str:
        return self.engine_names[0]

    def check_engine(self, name: str) -> str:
        """``name`` when this family has that engine, else UnknownEngineError listing the ones it has."""
        if name not in self.engines:
            raise UnknownEngineError(name, self.name, self.engine_names)
        return name

    def engine_class(self, name: str) -> Any:
        """The engine class registered for this family as ``name`` (imports its module now)."""
        return resolve(self.engines[self.check_engine(name)])

    @property
    def model(self) -> ModelFamily:
        """The family module's declaration (imports the module, and so torch, on first use)."""
        family = getattr(importlib.import_module(self.module), "FAMILY", None)
        if not isinstance(family, ModelFamily):
            raise InputError(f"{self.module} does not define FAMILY = ModelFamily(...) for {self.name!r}")
        return family

    @property
    def config_cls(self) -> type:
        return self.model.config_cls

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """A fresh model: the family's ``build(config, ...)``."""
        return self.model.build(*args, **kwargs)

    def train(self, **kwargs: Any) -> Any:
        """Train a model of this family: ``trainer(family=name, options=..., train=..., val=..., out_dir=...,
        cache_dir=..., dataset_key=..., on_progress=...) -> TrainResult`` (see vicap_jobs.training.loop)."""
        if self.trainer is None:
            raise InputError(f"model family {self.name!r} cannot be trained here")
        return resolve(self.trainer)(family=self.name, **kwargs)


FAMILIES: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec(
            "cnn-lstm",
            "vicap_jobs.models.cnn_lstm",
            "Show-and-Tell: pooled CNN features as the first LSTM step (fast, small).",
            STEP_ENGINES,
            exports=("onnx",),
            trainer=LSTM_TRAINER,
            prefer=STEP_PREFER,
        ),
        FamilySpec(
            "cnn-lstm-attn",
            "vicap_jobs.models.cnn_lstm_attn",
            "Show-Attend-Tell: additive attention over the CNN grid at every LSTM step.",
            STEP_ENGINES,
            exports=("onnx",),
            trainer=LSTM_TRAINER,
            prefer=STEP_PREFER,
        ),
        FamilySpec(
            "blip",
            "vicap_jobs.models.blip",
            "BLIP fine-tuned with a tokenizer that keeps Vietnamese diacritics (--base-model DIR).",
            PRETRAINED_ENGINES,
            trainer=PRETRAINED_TRAINER,
            inputs={"base_model": "Salesforce/blip-image-captioning-base (or -large)"},
            prefer=PRETRAINED_PREFER,
        ),
        FamilySpec(
            "blip2-lora",
            "vicap_jobs.models.blip2_lora",
            "BLIP-2 (OPT) with a LoRA adapter on its language model, image side frozen (--base-model DIR).",
            PRETRAINED_ENGINES,
            trainer=PRETRAINED_TRAINER,
            inputs={"base_model": "Salesforce/blip2-opt-2.7b (or another BLIP-2 with a decoder-only LM)"},
            prefer=PRETRAINED_PREFER,
        ),
        FamilySpec(
            "vit-seq2seq",
            "vicap_jobs.models.vit_seq2seq",
            "A ViT image encoder + a Vietnamese decoder (BARTpho, GPT-2) joined by cross-attention "
            "(--vision-model DIR --text-model DIR).",
            PRETRAINED_ENGINES,
            trainer=PRETRAINED_TRAINER,
            inputs={
                "vision_model": "google/vit-base-patch16-224-in21k (or another ViT/DeiT/BEiT image encoder)",
                "text_model": "vinai/bartpho-syllable or a Vietnamese GPT-2 (e.g. NlpHUST/gpt2-vietnamese)",
            },
            prefer=PRETRAINED_PREFER,
        ),
        FamilySpec(
            "clipcap",
            "vicap_jobs.models.clipcap",
            "ClipCap: CLIP image embedding → mapping network → prefix for a Vietnamese GPT-2 "
            "(--vision-model DIR --text-model DIR).",
            PRETRAINED_ENGINES,
            trainer=PRETRAINED_TRAINER,
            inputs={
                "vision_model": "openai/clip-vit-base-patch32",
                "text_model": "a Vietnamese GPT-2 such as NlpHUST/gpt2-vietnamese or imthanhlv/gpt2news",
            },
            prefer=PRETRAINED_PREFER,
        ),
    )
}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add a family's line (a plugin's); a name taken by another family is an error."""
    existing = FAMILIES.get(spec.name)
    if existing is not None and existing != spec:
        raise InputError(f"model family {spec.name!r} is already registered")
    FAMILIES[spec.name] = spec
    return spec


def family_names() -> list[str]:
    """All family names (plugins' included)."""
    load_plugins()
    return sorted(FAMILIES)


def get_family(name: str) -> FamilySpec:
    """The spec of family ``name``; an unknown name lists the valid ones."""
    load_plugins()
    if name not in FAMILIES:
        raise UnknownNameError("model family", name, family_names())
    return FAMILIES[name]


def all_engine_names() -> list[str]:
    """Every engine name of every family (CLI choices; each family then accepts only its own)."""
    load_plugins()
    return sorted({name for spec in FAMILIES.values() for name in spec.engines})
