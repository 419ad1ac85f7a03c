"""On-disk cache of frozen-extractor features, so the image encoder runs once per data set, not once per epoch.

With a frozen feature extractor (a CNN backbone, a CLIP/ViT encoder) the features
an image yields never change, and computing them is most of a training epoch's
cost. They are extracted once per key, in batches, and stored as fp16 in one
safetensors file per split (``features`` (N, ...) of any shape and ``image_ids``
(N,)). The key is what produced them: a digest of the extractor (its class and
every weight), the preprocessing policy, the data set and the split; every family
whose extractor and preprocessing are the same shares the file. It is written to
a temporary name and renamed, so a crash never leaves half a cache, and the full
key is stored in its metadata and checked on read. Images go through the
preprocessing policy exactly as the engines apply it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from vicap_jobs.data.images import Preprocessing, load_rgb
from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.errors import ImageError

log = logging.getLogger(__name__)

CACHE_FORMAT = "vicap-features-2"  # 2: keyed on extractor digest + preprocessing, any feature shape

Extractor = Callable[[Tensor], Tensor]  # pixels (B, 3, S, S) float32 -> features (B, ...)


@dataclass(frozen=True)
class FeatureKey:
    """What the cached features depend on; a change in any field means another file.

    ``label`` (e.g. the backbone name) only makes the file name readable: the digest
    that identifies the features covers the other fields.
    """

    dataset_key: str
    split: str
    weights_id: str  # `module_digest` of the extractor: pretrained, random-seeded or loaded weights alike
    preprocessing: Preprocessing
    label: str = ""

    def fields(self) -> dict[str, str]:
        """The key as strings (the preprocessing as canonical JSON)."""
        values = asdict(self)
        values["preprocessing"] = json.dumps(self.preprocessing.to_json(), sort_keys=True)
        return {name: str(value) for name, value in values.items()}

    def digest(self) -> str:
        """Short stable hash of every field but the label (the file name's unique part)."""
        text = "\x1f".join(value for name, value in self.fields().items() if name != "label")
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def path(self, cache_dir: Path) -> Path:
        """Cache file for this key: readable prefix + digest of the full key."""
        size = self.preprocessing.size
        name = f"{_slug(self.dataset_key)}__{_slug(self.split)}__{_slug(self.label)}__{size}px"
        return Path(cache_dir) / f"{name}__{self.digest()}.safetensors"

    def metadata(self) -> dict[str, str]:
        """The key as safetensors string metadata."""
        return {"format": CACHE_FORMAT, **self.fields()}


@dataclass(frozen=True)
class FeatureTable:
    """Features of one split in the order of the samples asked for."""

    features: Tensor  # (N, ...) float16
    image_ids: list[int]
    path: Path
    extracted: int  # images whose features were computed by this call (0 on a full cache hit)


def _slug(text: str) -> str:
    """File-name-safe version of `text` (the digest keeps distinct keys apart)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "x"


def module_digest(module: nn.Module) -> str:
    """Hash of a module's class and its parameters and buffers (names, dtypes, shapes, values).

    Hashing the actual tensors keys the cache on what the extractor computes,
    whichever way its weights came (torchvision, a local file, a seeded random init).
    """
    hasher = hashlib.sha256()
    hasher.update(f"{type(module).__module__}.{type(module).__qualname__}|".encode())
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        hasher.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        hasher.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()[:16]


def _read_cache(path: Path, key: FeatureKey) -> tuple[Tensor, list[int]] | None:
    """Features and ids stored at `path`, or None when absent, unreadable or written for another key."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if handle.metadata() != key.metadata():
                log.warning("feature cache %s was written for another key; extracting again", path)
                return None
            features = handle.get_tensor("features")
            image_ids = handle.get_tensor("image_ids").tolist()
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        log.warning("feature cache %s is unreadable (%s); extracting again", path, exc)
        return None
    if features.dtype != torch.float16 or features.ndim < 1 or features.shape[0] != len(image_ids):
        log.warning("feature cache %s has unexpected contents; extracting again", path)
        return None
    return features, image_ids


def _write_cache(path: Path, key: FeatureKey, features: Tensor, image_ids: list[int]) -> None:
    """Write atomically: a temporary file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(
            {"features": features.contiguous(), "image_ids": torch.tensor(image_ids, dtype=torch.long)},
            str(temporary),
            metadata=key.metadata(),
        )
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_pixels(samples: Sequence[CaptionSample], preprocessing: Preprocessing) -> Tensor:
    """Decode and preprocess the images of `samples` as one batch: (B, 3, S, S) float32."""
    images = []
    for sample in samples:
        try:
            images.append(load_rgb(sample.image_path))
        except ImageError as exc:  # load_rgb gives the reason; training needs the file too
            raise ImageError(f"image {sample.image_id} ({sample.image_path}): {exc}") from exc
    return torch.from_numpy(preprocessing.apply(images))


@torch.inference_mode()
def extract_features(
    extractor: Extractor,
    samples: Sequence[CaptionSample],
    *,
    preprocessing: Preprocessing,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    desc: str = "features",
    progress: bool = True,
) -> Tensor:
    """Run `extractor` over the images of `samples` in batches; return (N, ...) float16 on CPU."""
    chunks: list[Tensor] = []
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            pixels = load_pixels(batch, preprocessing).to(device)  # (B, 3, S, S)
            chunks.append(extractor(pixels).to("cpu", torch.float16))  # (B, ...)
            bar.update(len(batch))
    return torch.cat(chunks)


def cached_features(
    *,
    key: FeatureKey,
    samples: Sequence[CaptionSample],
    extractor: Extractor,
    cache_dir: Path,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> FeatureTable:
    """Features of `samples` (in their order) from the cache, extracting only the images it lacks.

    The extractor must be frozen and in eval mode; it is never called when every
    image is already cached.
    """
    path = key.path(cache_dir)
    cached = _read_cache(path, key)
    stored_features, stored_ids = cached if cached is not None else (None, [])
    row_of = {image_id: row for row, image_id in enumerate(stored_ids)}
    missing: dict[int, CaptionSample] = {}
    for sample in samples:
        if sample.image_id not in row_of:
            missing.setdefault(sample.image_id, sample)

    extracted = 0
    if missing:
        log.info(
            "extracting %s features of %d images (%s, %d px) into %s",
            key.split,
            len(missing),
            key.label,
            key.preprocessing.size,
            path,
        )
        new = extract_features(
            extractor,
            list(missing.values()),
            preprocessing=key.preprocessing,
            batch_size=batch_size,
            device=device,
            desc=f"features {key.split}",
            progress=progress,
        )
        if stored_features is not None and stored_features.shape[1:] != new.shape[1:]:
            log.warning("feature cache %s holds features of another shape; extracting all again", path)
            path.unlink(missing_ok=True)
            return cached_features(
                key=key,
                samples=samples,
                extractor=extractor,
                cache_dir=cache_dir,
                batch_size=batch_size,
                device=device,
                progress=progress,
            )
        stored_features = new if stored_features is None else torch.cat([stored_features, new])
        for image_id in missing:
            row_of[image_id] = len(stored_ids)
            stored_ids.append(image_id)
        _write_cache(path, key, stored_features, stored_ids)
        extracted = len(missing)

    if stored_features is None:  # no samples at all
        return FeatureTable(torch.empty(0, dtype=torch.float16), [], path, 0)
    rows = torch.tensor([row_of[sample.image_id] for sample in samples], dtype=torch.long)
    return FeatureTable(
        features=stored_features.index_select(0, rows),  # (N, ...)
        image_ids=[sample.image_id for sample in samples],
        path=path,
        extracted=extracted,
    )
