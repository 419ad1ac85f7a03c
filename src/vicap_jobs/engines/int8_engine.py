"""``int8``: the vision-language captioners with int8 linear layers, quantized when the model is loaded.

Paths (:data:`INT8_PATHS`; :class:`Int8Engine` takes one by name, ``None`` = the device's default):

- ``torchao-dynamic`` (CPU default): torchao ``quantize_`` with
  ``Int8DynamicActivationInt8WeightConfig``: weights int8 per output row, activations
  quantized per row at each call, int8 x int8 matmuls.
- ``torchao-weight-only``: torchao ``Int8WeightOnlyConfig``: int8 weights, fp32
  activations; saves memory, not time, on the CPU measured below.
- ``bnb-cpu``: bitsandbytes LLM.int8 on CPU, loaded in fp16 (with fp32 inputs it warns
  on every call that it casts them to fp16). For comparison only, never a default.
- ``bnb-cuda`` (CUDA default): bitsandbytes LLM.int8, loaded in fp16, weights placed
  on the GPU by ``from_pretrained`` (the captioner gets ``keeps_device`` so nothing
  moves them again).

Why torchao and not ``torch.ao.quantization.quantize_dynamic``: the latter is
deprecated in torch 2.14 (torchao is its named replacement) and swaps modules for
its own classes; ``quantize_`` keeps every ``nn.Linear`` and swaps only its weight
for an int8 tensor subclass, so the family's code runs unchanged. A torchao-quantized
model does not ``save_pretrained`` here, so checkpoints stay fp32 and quantization
happens at load time (0.1 s for the 26M-parameter BLIP measured below).

What is quantized: every ``nn.Linear`` with at least :data:`MIN_FEATURES` inputs and
outputs (torchao fails on a 1-input linear; layers that small do no work worth
saving). The output layers (the language-model heads, found through each Hugging
Face model's ``get_output_embeddings``) stay fp32: quantizing the head too measured
no faster (1.64x vs 1.68x fp32), and because the head is tied to the
input embedding, which stays fp32, it adds an int8 copy instead of saving memory;
fp32 also keeps the scores the search compares free of the head's rounding.
A model in which no layer qualifies is an error, never a silent fp32 engine.

Measured (``bench/vlp_int8.py``, results in ``bench/results/vlp_int8.md``; mid-sized
BLIP: ViT 384 x 6 layers at 224 px, BERT decoder 384 x 6 layers, briefly fit on drawn
shapes; 24 held-out images, batch 8, beam 3, max_len 20, 2 threads; AMD EPYC with
AVX512-VNNI, no AMX, shared; ratio: median of 4 rounds with all paths interleaved):

=========================  =================  =============  ================
path                       × fp32 (rounds)    weights MiB    same ids as fp32
=========================  =================  =============  ================
fp32 (torch engine)        1.00               99.2           -
torchao-dynamic            1.68 (1.62-1.93)   28.2           24/24 images
torchao-weight-only        0.90 (0.84-0.93)   28.2           24/24
bnb-cpu (fp16)             0.88 (0.86-0.90)   25.8           24/24
=========================  =================  =============  ================

Default on CPU: ``torchao-dynamic``, the only path faster than fp32 here (the one whose
matmuls are int8 x int8; weight-only and bitsandbytes on CPU are no faster than fp32,
at the same agreement). The weights shrink 3.5x; process RSS barely moves at this
size (~1.1 GiB for every path: the libraries dominate, and a torchao path holds the
fp32 weights while it quantizes). On the tiny test BLIP (hidden 32) the same path is ~0.3x fp32 (per-call
activation quantization dominates tiny matmuls), so whether ``int8`` is the default is
measured per machine and model (``engines/choice.py``), never assumed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from vicap_jobs.devices import DeviceKind, parse_device
from vicap_jobs.engines.base import DecodeOptions
from vicap_jobs.engines.torch_engine import TorchEngine
from vicap_jobs.errors import InputError, UnknownNameError
from vicap_jobs.models.checkpoint import LoadedCheckpoint, load_checkpoint
from vicap_jobs.models.manifest import ModelArtifacts

MIN_FEATURES = 16  # smaller linears stay fp32 (torchao fails on 1 input; nothing to gain below this)
QUANTIZE_OUTPUT_LAYERS = False  # measured: see the module docstring


@dataclass(frozen=True)
class Int8Path:
    """One way to run int8: its backend, the devices it runs on and a label for ``models show``."""

    name: str
    label: str
    backend: Literal["torchao", "bitsandbytes"]
    devices: tuple[DeviceKind, ...]


INT8_PATHS: dict[str, Int8Path] = {
    path.name: path
    for path in (
        Int8Path("torchao-dynamic", "torchao int8 dynamic activation + int8 weight", "torchao", ("cpu", "cuda")),
        Int8Path("torchao-weight-only", "torchao int8 weight-only", "torchao", ("cpu", "cuda")),
        Int8Path("bnb-cpu", "bitsandbytes LLM.int8, fp16 activations", "bitsandbytes", ("cpu",)),
        Int8Path("bnb-cuda", "bitsandbytes LLM.int8, fp16 activations", "bitsandbytes", ("cuda",)),
    )
}
DEFAULT_PATHS: dict[DeviceKind, str] = {"cpu": "torchao-dynamic", "cuda": "bnb-cuda"}


def resolve_path(name: str | None, device: str) -> Int8Path:
    """The int8 path ``name`` (None: the default for ``device``), checked to run on that device."""
    kind = parse_device(device).kind
    chosen = DEFAULT_PATHS[kind] if name is None else name
    if chosen not in INT8_PATHS:
        raise UnknownNameError("int8 path", chosen, list(INT8_PATHS))
    path = INT8_PATHS[chosen]
    if kind not in path.devices:
        raise InputError(f"int8 path {chosen!r} runs on {', '.join(path.devices)}, not on {device!r}")
    return path


def bnb_load_options(device: str) -> dict[str, Any]:
    """``from_pretrained`` keywords of the bitsandbytes paths: 8-bit linears, fp16 elsewhere, all on ``device``.

    transformers 5 takes 8-bit loading only as a ``quantization_config``; fp16 because
    bitsandbytes casts fp32 inputs to fp16 on every call (and warns each time).
    """
    from transformers import BitsAndBytesConfig  # transformers: only where a bitsandbytes model is loaded

    return {
        "quantization_config": BitsAndBytesConfig(load_in_8bit=True),
        "device_map": {"": str(parse_device(device))},
        "dtype": torch.float16,
    }


def is_int8_weight(weight: Any) -> bool:
    """Whether a linear's weight is stored as int8 (a torchao Int8Tensor's qdata, or bitsandbytes' Int8Params)."""
    if not isinstance(weight, torch.Tensor):
        return False
    qdata = getattr(weight, "qdata", None)
    if isinstance(qdata, torch.Tensor):
        return qdata.dtype == torch.int8
    return weight.dtype == torch.int8


def quantized_linears(model: nn.Module) -> list[str]:
    """Names of the linear layers of ``model`` whose weights are int8."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and is_int8_weight(module.weight)
    ]


def output_layers(model: nn.Module) -> set[int]:
    """ids of the output layers (language-model heads) of every Hugging Face model inside ``model``."""
    found: set[int] = set()
    for module in model.modules():
        getter = getattr(module, "get_output_embeddings", None)
        if callable(getter):
            with contextlib.suppress(NotImplementedError, AttributeError):
                head = getter()
                if isinstance(head, nn.Module):
                    found.add(id(head))
    return found


def quantizable(module: nn.Module, skip: set[int]) -> bool:
    """A linear torchao can quantize and that is worth it: both dims >= MIN_FEATURES, not an output layer."""
    return (
        isinstance(module, nn.Linear)
        and id(module) not in skip
        and module.in_features >= MIN_FEATURES
        and module.out_features >= MIN_FEATURES
        and module.weight.dtype in (torch.float32, torch.bfloat16, torch.float16)
    )


def quantize_torchao(model: nn.Module, path: Int8Path) -> list[str]:
    """Quantize ``model``'s linears in place with torchao's config for ``path``; returns the quantized names."""
    from torchao.quantization import (  # torchao: only where a model is quantized
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    configs = {"torchao-dynamic": Int8DynamicActivationInt8WeightConfig, "torchao-weight-only": Int8WeightOnlyConfig}
    skip = set() if QUANTIZE_OUTPUT_LAYERS else output_layers(model)
    quantize_(model, configs[path.name](), filter_fn=lambda module, fqn: quantizable(module, skip))
    return quantized_linears(model)


class Int8Engine(TorchEngine):
    """int8 linears (torchao on CPU, bitsandbytes on CUDA), the rest as loaded; search as the torch engine's."""

    name = "int8"
    precision = "int8"
    path: ClassVar[str | None] = None  # the int8 path when none is given; None: the device's default

    def __init__(
        self,
        loaded: LoadedCheckpoint,
        *,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
        path: str | None = None,
    ) -> None:
        """Wrap a loaded checkpoint; torchao paths quantize it now, bitsandbytes paths need it loaded by ``load``."""
        self.int8_path = resolve_path(path or self.path, device)
        bnb = self.int8_path.backend == "bitsandbytes"
        if bnb and not getattr(loaded.model, "keeps_device", False):
            raise InputError(f"int8 path {self.int8_path.name!r} quantizes while loading: use Int8Engine.load")
        super().__init__(loaded, device=device, decode=decode, threads=threads)
        self.quantized = quantized_linears(self.model) if bnb else quantize_torchao(self.model, self.int8_path)
        if not self.quantized:
            raise InputError(
                f"engine 'int8' found no linear layer to quantize in model family {loaded.manifest['family']!r} "
                f"(each needs >= {MIN_FEATURES} inputs and outputs); use --engine torch"
            )

    @classmethod
    def load(
        cls,
        artifacts: ModelArtifacts,
        *,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
        path: str | None = None,
    ) -> Int8Engine:
        """Load the checkpoint of ``artifacts`` and quantize it by ``path`` (None: this device's default)."""
        chosen = resolve_path(path or cls.path, device)
        if chosen.backend == "bitsandbytes":
            loaded = load_checkpoint(
                artifacts.checkpoint_dir, map_location=device, load_options=bnb_load_options(device)
            )
            loaded.model.keeps_device = True  # bitsandbytes placed the weights; a .to() must not move them
        else:
            loaded = load_checkpoint(artifacts.checkpoint_dir)
        return cls(loaded, device=device, decode=decode, threads=threads, path=chosen.name)
