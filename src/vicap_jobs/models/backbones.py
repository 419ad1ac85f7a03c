"""Image backbones: name → CNN returning the spatial feature grid (B, C, h, w).

Every backbone keeps its convolutional trunk under the attribute ``features``
so a torchvision state dict (``features.*``, ``classifier.*``) loads into it
after dropping the classifier. Pretrained weights come from torchvision's
weights API but are never downloaded here: they must already sit in the
torch hub cache (``$TORCH_HOME/hub/checkpoints``) or be given as a local file.

Grid sizes: ``tiny`` divides the image side by 16 (8×8 at 128 px);
``densenet201``, ``vgg16`` and ``efficientnet_v2_s`` divide it by 32
(7×7 at 224 px).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
from torch import nn

from vicap_jobs.errors import InputError, UnknownNameError, WeightsMissingError

BackboneWeights = Literal["pretrained", "random"] | Path


class TinyCNN(nn.Module):
    """Four stride-2 conv blocks (3→16→32→64→128 channels): for tests and the demo."""

    channels = 128

    def __init__(self) -> None:
        super().__init__()
        widths = [3, 16, 32, 64, self.channels]
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*blocks)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 128, H/16, W/16)."""
        return self.features(pixels)


class TorchvisionTrunk(nn.Module):
    """The ``features`` trunk of a torchvision classifier, without pooling or head."""

    def __init__(self, features: nn.Module, *, final_relu: bool) -> None:
        super().__init__()
        self.features = features
        # DenseNet applies its last ReLU in forward(), outside ``features``.
        self.final_relu = final_relu

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, C, H/32, W/32)."""
        grid = self.features(pixels)
        return torch.relu(grid) if self.final_relu else grid


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where its pretrained weights come from."""

    name: str
    channels: int
    stride: int
    make: Callable[[], nn.Module]
    weights_enum: str | None = None  # torchvision weights class name, e.g. "VGG16_Weights"


def _torchvision(arch: str, *, final_relu: bool = False) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import torchvision.models as tvm  # ~1 s: only runs that build a torchvision backbone pay for it

        return TorchvisionTrunk(getattr(tvm, arch)(weights=None).features, final_relu=final_relu)

    return make


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("tiny", TinyCNN.channels, 16, TinyCNN),
        BackboneSpec("densenet201", 1920, 32, _torchvision("densenet201", final_relu=True), "DenseNet201_Weights"),
        BackboneSpec("vgg16", 512, 32, _torchvision("vgg16"), "VGG16_Weights"),
        BackboneSpec("efficientnet_v2_s", 1280, 32, _torchvision("efficientnet_v2_s"), "EfficientNet_V2_S_Weights"),
    )
}


def backbone_names() -> list[str]:
    """All backbone names accepted by :func:`build_backbone`."""
    return sorted(BACKBONES)


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of backbone ``name``; an unknown name lists the valid ones."""
    if name not in BACKBONES:
        raise UnknownNameError("backbone", name, backbone_names())
    return BACKBONES[name]


def grid_size(name: str, image_size: int) -> int:
    """Side of the feature grid for square ``image_size`` px inputs (7 for densenet201 at 224).

    Exact when ``image_size`` is a multiple of the backbone's stride (16 or 32).
    """
    return image_size // backbone_spec(name).stride


def pretrained_weights_path(name: str) -> Path:
    """Where torchvision's hub cache keeps ``name``'s ImageNet weights (may not exist)."""
    spec = backbone_spec(name)
    if spec.weights_enum is None:
        raise WeightsMissingError(
            f"backbone {name!r} has no pretrained weights; pass --random-init (usually with "
            f"--finetune-backbone) or --backbone-weights PATH"
        )
    import torchvision.models as tvm  # ~1 s: only for pretrained torchvision weights

    url = getattr(tvm, spec.weights_enum).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def build_backbone(name: str, *, weights: BackboneWeights) -> tuple[nn.Module, int]:
    """Build backbone ``name`` and return it with its channel count C.

    weights: "random" (fresh init), "pretrained" (ImageNet weights from the
    torch hub cache; never downloads) or a Path to a local state dict
    (``.safetensors``, or a torch file read with ``weights_only=True``).
    """
    spec = backbone_spec(name)
    if weights == "random":
        return spec.make(), spec.channels
    if weights == "pretrained":
        path = pretrained_weights_path(name)
        if not path.is_file():
            raise WeightsMissingError(
                f"pretrained weights for backbone {name!r} are not cached and this machine does not "
                f"download them; put the torchvision state dict at {path}, or pass "
                f"--backbone-weights PATH, or --random-init"
            )
    elif isinstance(weights, Path):
        path = weights
    else:
        raise InputError(f"backbone weights must be 'pretrained', 'random' or a Path, got {weights!r}")
    module = spec.make()
    load_backbone_weights(module, path)
    return module, spec.channels


# torchvision's DenseNet files predate a renaming: "norm.1.weight" is now "norm1.weight".
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\.(weight|bias|running_mean|running_var)$"
)


def load_backbone_weights(module: nn.Module, path: Path) -> None:
    """Load a local state dict into ``module``; a full torchvision classifier file is fine.

    Keys outside the trunk (``classifier.*``, ``fc.*``) are dropped; any other
    mismatch raises InputError naming the file.
    """
    if not path.is_file():
        raise WeightsMissingError(f"backbone weights file {path} does not exist")
    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # loaded only for .safetensors backbone files

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoder error means the file is not a usable state dict
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"cannot read backbone weights {path}: not a plain torch state dict (.pth) or .safetensors file ({first})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"backbone weights {path} hold a {type(state).__name__}, not a state dict")
    state = {_DENSENET_OLD_KEY.sub(r"\1\2.\3", key): value for key, value in state.items()}
    own = module.state_dict()
    state = {key: value for key, value in state.items() if key in own or not key.startswith(("classifier.", "fc."))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise InputError(
            f"backbone weights {path} do not fit this backbone: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # shape mismatches
        raise InputError(f"backbone weights {path} do not fit this backbone: {exc}") from exc
