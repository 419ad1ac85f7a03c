"""Feature cache: hits skip the extractor, the key follows weights/preprocessing/data, any shape, fp16, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from vicap_jobs.data.images import CLIP_MEAN, CLIP_STD, Preprocessing, load_rgb
from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.errors import ImageError
from vicap_jobs.training import features as features_module
from vicap_jobs.training.features import FeatureKey, cached_features, module_digest


class CountingExtractor:
    """Stands in for a frozen backbone: mean colour per channel on a 2×2 grid; counts calls and images."""

    def __init__(self) -> None:
        self.calls = 0
        self.images = 0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += pixels.shape[0]
        return torch.nn.functional.adaptive_avg_pool2d(pixels, 2)  # (B, 3, 2, 2)


@pytest.fixture()
def samples(tmp_path: Path) -> list[CaptionSample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(5):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
        out.append(CaptionSample(image_id=100 + i, image_path=path, captions=("một con mèo",)))
    return out


def key(**changes: object) -> FeatureKey:
    fields: dict[str, object] = {
        "dataset_key": "synth",
        "split": "train",
        "weights_id": "abc",
        "preprocessing": Preprocessing(16),
        "label": "tiny",
    }
    fields.update(changes)
    return FeatureKey(**fields)  # type: ignore[arg-type]


def test_second_call_hits_cache_without_backbone(samples: list[CaptionSample], tmp_path: Path) -> None:
    extractor = CountingExtractor()
    first = cached_features(
        key=key(), samples=samples, extractor=extractor, cache_dir=tmp_path / "c", batch_size=2, progress=False
    )
    assert extractor.calls == 3  # batched: 5 images in batches of 2
    assert first.extracted == 5 and first.features.shape == (5, 3, 2, 2)

    again = CountingExtractor()
    second = cached_features(
        key=key(), samples=samples[::-1], extractor=again, cache_dir=tmp_path / "c", progress=False
    )
    assert again.calls == 0 and second.extracted == 0
    assert second.image_ids == [s.image_id for s in samples[::-1]]
    assert torch.equal(second.features, first.features.flip(0))  # rows follow the order asked for


def test_only_missing_images_are_extracted(samples: list[CaptionSample], tmp_path: Path) -> None:
    cached_features(key=key(), samples=samples[:3], extractor=CountingExtractor(), cache_dir=tmp_path, progress=False)
    extractor = CountingExtractor()
    table = cached_features(key=key(), samples=samples, extractor=extractor, cache_dir=tmp_path, progress=False)
    assert extractor.images == 2 and table.extracted == 2 and table.features.shape[0] == 5


@pytest.mark.parametrize(
    "change",
    [
        {"preprocessing": Preprocessing(32)},
        {"preprocessing": Preprocessing(16, resize="shorter-side-crop")},
        {"preprocessing": Preprocessing(16, mean=CLIP_MEAN, std=CLIP_STD)},
        {"weights_id": "other"},  # another backbone, or other weights of the same one
        {"split": "val"},
        {"dataset_key": "uit-viic"},
    ],
)
def test_key_change_means_new_file(samples: list[CaptionSample], tmp_path: Path, change: dict) -> None:
    base = key()
    changed = key(**change)
    assert base.path(tmp_path) != changed.path(tmp_path)
    cached_features(key=base, samples=samples, extractor=CountingExtractor(), cache_dir=tmp_path, progress=False)
    extractor = CountingExtractor()
    cached_features(key=changed, samples=samples, extractor=extractor, cache_dir=tmp_path, progress=False)
    assert extractor.images == 5


def test_the_name_only_labels_the_file(samples: list[CaptionSample], tmp_path: Path) -> None:
    assert key(label="densenet201").digest() == key().digest()
    assert "tiny" in key().path(tmp_path).name and "16px" in key().path(tmp_path).name


def test_the_preprocessing_policy_reaches_the_extractor(samples: list[CaptionSample], tmp_path: Path) -> None:
    seen: list[torch.Tensor] = []

    def extractor(pixels: torch.Tensor) -> torch.Tensor:
        seen.append(pixels)
        return pixels[:, :, :2, :2]

    policy = Preprocessing(24, resize="shorter-side-crop", mean=CLIP_MEAN, std=CLIP_STD)
    cached_features(
        key=key(preprocessing=policy), samples=samples, extractor=extractor, cache_dir=tmp_path, progress=False
    )
    assert seen and all(tuple(batch.shape[1:]) == (3, 24, 24) for batch in seen)
    expected = policy.apply([load_rgb(s.image_path) for s in samples])
    np.testing.assert_array_equal(torch.cat(seen).numpy(), expected)


@pytest.mark.parametrize("shape", [(7,), (5, 4), (3, 2, 2, 2)])
def test_any_feature_shape_is_cached(samples: list[CaptionSample], tmp_path: Path, shape: tuple[int, ...]) -> None:
    """Pooled vectors (CLIP), token sequences (ViT), grids (CNN): stored and read back as they are."""

    def extractor(pixels: torch.Tensor) -> torch.Tensor:
        return pixels.mean(dim=(1, 2, 3)).reshape(-1, *([1] * len(shape))).expand(-1, *shape).contiguous()

    first = cached_features(key=key(), samples=samples, extractor=extractor, cache_dir=tmp_path, progress=False)
    again = CountingExtractor()
    second = cached_features(key=key(), samples=samples, extractor=again, cache_dir=tmp_path, progress=False)
    assert first.features.shape == second.features.shape == (5, *shape) and again.calls == 0
    assert torch.equal(first.features, second.features)


def test_stored_as_fp16_with_key_metadata(samples: list[CaptionSample], tmp_path: Path) -> None:
    table = cached_features(
        key=key(), samples=samples, extractor=CountingExtractor(), cache_dir=tmp_path, progress=False
    )
    assert table.features.dtype == torch.float16
    with safe_open(str(table.path), framework="pt") as handle:
        assert handle.get_tensor("features").dtype == torch.float16
        assert handle.get_tensor("image_ids").tolist() == [s.image_id for s in samples]
        assert json.loads(handle.metadata()["preprocessing"])["size"] == 16
        assert handle.metadata()["weights_id"] == "abc" and handle.metadata()["format"] == "vicap-features-2"
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors"] == [table.path.name]


def test_crash_leaves_no_cache_file(samples: list[CaptionSample], tmp_path: Path) -> None:
    calls = 0

    def crashing(pixels: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("out of memory")
        return pixels[:, :, :2, :2]

    with pytest.raises(RuntimeError):
        cached_features(
            key=key(), samples=samples, extractor=crashing, cache_dir=tmp_path / "c", batch_size=2, progress=False
        )
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_crash_while_writing_leaves_no_half_file(
    samples: list[CaptionSample], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_write(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(features_module, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        cached_features(
            key=key(), samples=samples, extractor=CountingExtractor(), cache_dir=tmp_path / "c", progress=False
        )
    assert list((tmp_path / "c").iterdir()) == []


def test_garbled_cache_is_rebuilt(samples: list[CaptionSample], tmp_path: Path) -> None:
    path = key().path(tmp_path)
    path.write_bytes(b"not a safetensors file")
    extractor = CountingExtractor()
    table = cached_features(key=key(), samples=samples, extractor=extractor, cache_dir=tmp_path, progress=False)
    assert extractor.images == 5 and table.features.shape[0] == 5


def test_unreadable_image_names_the_file(samples: list[CaptionSample], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    bad = [*samples, CaptionSample(image_id=7, image_path=broken, captions=("x",))]
    with pytest.raises(ImageError, match="broken.png"):
        cached_features(key=key(), samples=bad, extractor=CountingExtractor(), cache_dir=tmp_path, progress=False)


def test_module_digest_follows_weights_and_code() -> None:
    torch.manual_seed(0)
    a = torch.nn.Conv2d(3, 4, 3)
    b = torch.nn.Conv2d(3, 4, 3)
    assert module_digest(a) == module_digest(a)
    assert module_digest(a) != module_digest(b)
    b.load_state_dict(a.state_dict())
    assert module_digest(a) == module_digest(b)

    class OtherConv(torch.nn.Conv2d):
        """Same weights, other forward: other features."""

    c = OtherConv(3, 4, 3)
    c.load_state_dict(a.state_dict())
    assert module_digest(c) != module_digest(a)
