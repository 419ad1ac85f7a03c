"""``bench/object_store.py`` in miniature: variant names, the photos it makes, a tiny run on the session's SeaweedFS."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from tests.conftest import use_s3_env
from tests.seaweed import SeaweedS3

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


object_store = _load("object_store")
report = _load("report")


def test_variant_names_parse_and_the_baseline_is_always_measured() -> None:
    variant = object_store.Variant.parse("s3-ra2-c8")
    assert (variant.source, variant.read_ahead, variant.concurrency) == ("s3", 2, 8)
    assert object_store.Variant.parse("local-ra0").concurrency is None
    for bad in ("s3-ra1", "local-ra1-c8", "gcs-ra1-c8", "s3-rax-c8", "local"):
        with pytest.raises(SystemExit, match="bad variant"):
            object_store.Variant.parse(bad)
    args = object_store.parse_args(["--variants", "s3-ra0-c1"])
    assert [v.name for v in args.variant_list] == ["local-ra1", "s3-ra0-c1"]


def test_photos_have_the_asked_size_and_differ(tmp_path: Path) -> None:
    paths = object_store.make_photos(tmp_path, 3, 64, 48)
    assert [p.name for p in paths] == ["photo_00000.jpg", "photo_00001.jpg", "photo_00002.jpg"]
    for path in paths:
        with Image.open(path) as im:
            assert (im.format, im.size) == ("JPEG", (64, 48))
    assert len({p.read_bytes() for p in paths}) == 3


def test_a_tiny_run_captions_the_same_photos_from_s3_and_disk(
    seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch, vicap_env: Path, tmp_path: Path
) -> None:
    """A few seconds: every variant captions every photo, S3 gives the local captions, the report renders."""
    use_s3_env(monkeypatch, seaweed)  # the bench sets these itself; monkeypatch puts them back afterwards
    # The bench sets these in os.environ itself; set them here first so monkeypatch removes them afterwards
    # (a delenv of an unset variable records nothing, and READ_AHEAD=0 then leaked into later tests).
    for name in ("VICAP_READ_AHEAD", "VICAP_STORAGE_CONCURRENCY"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("VICAP_HOME", str(vicap_env))
    args = object_store.parse_args(
        ["--n-images", "10", "--width", "64", "--height", "48", "--image-size", "32", "--batch-size", "4"]
        + ["--chunk-size", "6", "--repeats", "1", "--variants", "local-ra0,s3-ra1-c8,s3-ra0-c1"]
        + ["--work-dir", str(tmp_path / "work")]
    )
    payload = object_store.run(args, server=seaweed)
    variants = payload["variants"]
    assert list(variants) == ["local-ra1", "local-ra0", "s3-ra1-c8", "s3-ra0-c1"]
    assert variants["local-ra1"]["ratio_to_baseline"] == 1.0
    for v in variants.values():
        assert v["images_per_s"] > 0 and v["captions_equal_to_local"] == 1.0
    assert variants["s3-ra0-c1"]["storage_concurrency"] == 1 and variants["local-ra0"]["read_ahead"] == 0
    assert payload["photos"] == {"n": 10, "width": 64, "height": 48, "mean_kib": payload["photos"]["mean_kib"]}
    lines = report.summarize("object_store", {"when": "now", "machine": {"cpu": "x", "cores": 2}, **payload})
    assert any("s3-ra1-c8" in line for line in lines) and not any("no summary" in line for line in lines)
