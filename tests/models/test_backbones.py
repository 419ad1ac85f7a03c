"""Backbones: grid shapes, offline pretrained weights, local state dicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vicap_jobs.errors import InputError, UnknownNameError, WeightsMissingError
from vicap_jobs.models import backbones
from vicap_jobs.models.backbones import (
    TinyCNN,
    backbone_names,
    build_backbone,
    grid_size,
    load_backbone_weights,
    pretrained_weights_path,
)


def test_names_and_unknown_name_lists_valid_ones() -> None:
    assert backbone_names() == ["densenet201", "efficientnet_v2_s", "tiny", "vgg16"]
    with pytest.raises(UnknownNameError, match="densenet201, efficientnet_v2_s, tiny, vgg16"):
        build_backbone("resnet9000", weights="random")


@pytest.mark.parametrize(("name", "size", "channels", "side"), [("tiny", 96, 128, 6), ("tiny", 128, 128, 8)])
def test_tiny_grid(name: str, size: int, channels: int, side: int) -> None:
    module, c = build_backbone(name, weights="random")
    grid = module.eval()(torch.randn(2, 3, size, size))
    assert c == channels and grid.shape == (2, channels, side, side) and grid_size(name, size) == side


@pytest.mark.parametrize(("name", "channels"), [("densenet201", 1920), ("vgg16", 512), ("efficientnet_v2_s", 1280)])
def test_torchvision_backbones_return_the_grid_before_pooling(name: str, channels: int) -> None:
    module, c = build_backbone(name, weights="random")
    with torch.no_grad():
        grid = module.eval()(torch.randn(1, 3, 64, 64))
    assert c == channels
    assert grid.shape == (1, channels, 2, 2) and grid_size(name, 64) == 2
    assert grid_size(name, 224) == 7
    if name == "densenet201":  # the final ReLU that torchvision applies outside ``features``
        assert grid.min() >= 0


@pytest.mark.parametrize("name", ["densenet201", "vgg16", "efficientnet_v2_s"])
def test_pretrained_offline_says_how_to_provide_weights(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = pretrained_weights_path(name)
    assert expected.parent == tmp_path / "hub" / "checkpoints"
    with pytest.raises(WeightsMissingError) as err:
        build_backbone(name, weights="pretrained")
    message = str(err.value)
    assert str(expected) in message and "--backbone-weights PATH" in message and "--random-init" in message


def test_tiny_has_no_pretrained_weights() -> None:
    with pytest.raises(WeightsMissingError, match="--random-init"):
        build_backbone("tiny", weights="pretrained")


def test_pretrained_loads_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = TinyCNN()
    cached = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), cached)
    monkeypatch.setattr(backbones, "pretrained_weights_path", lambda name: cached)
    module, _ = build_backbone("tiny", weights="pretrained")
    assert torch.equal(module.state_dict()["features.0.weight"], source.state_dict()["features.0.weight"])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_state_dict_loads(suffix: str, tmp_path: Path) -> None:
    source = TinyCNN()
    state = {**source.state_dict(), "classifier.weight": torch.zeros(3, 128)}  # a full classifier file is fine
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save(state, path)
    module, _ = build_backbone("tiny", weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(module.state_dict()[key], value), key


def test_bad_local_weights_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissingError, match="does not exist"):
        build_backbone("tiny", weights=tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a state dict")
    with pytest.raises(InputError, match="garbage.pth"):
        build_backbone("tiny", weights=garbage)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(InputError, match="do not fit"):
        build_backbone("tiny", weights=wrong)
    with pytest.raises(InputError):
        build_backbone("tiny", weights="imagenet")  # type: ignore[arg-type]


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickle.pth"
    torch.save({"state_dict": TinyCNN()}, path)  # a whole module needs unpickling arbitrary classes
    with pytest.raises(InputError, match="pickle.pth"):
        load_backbone_weights(TinyCNN(), path)


def test_old_densenet_keys_are_renamed() -> None:
    key = "features.denseblock1.denselayer1.norm.1.weight"
    assert backbones._DENSENET_OLD_KEY.sub(r"\1\2.\3", key) == "features.denseblock1.denselayer1.norm1.weight"
    assert backbones._DENSENET_OLD_KEY.sub(r"\1\2.\3", "features.norm0.weight") == "features.norm0.weight"
