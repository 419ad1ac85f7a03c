"""``load_rgb`` of an ``s3://`` object gives exactly what it gives for the same bytes on the local disk.

The hostile files of ``tests/data/hostile.py`` (empty, truncated, text named .jpg, a decompression
bomb's header, 16-bit, CMYK, animated, EXIF-rotated, NFD names...) are uploaded to a real S3 server
(SeaweedFS); each is decoded from its local path and from its URL, and the two outcomes — the
pixels, or the ImageError's reason — must be the same.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from tests.conftest import use_s3_env
from tests.data.hostile import EXIF_ROTATED, NFD_NAME, OK, TOO_LARGE, make_hostile_folder, png_header_only
from tests.seaweed import SeaweedS3
from vicap_jobs.data.images import load_rgb
from vicap_jobs.errors import ImageError
from vicap_jobs.storage.objects import ObjectError

#: The hostile folder's regular files (its links and the unreadable file have no S3 counterpart).
CASES = (
    "good.jpg",
    "good.png",
    "UPPER_CASE.JPEG",
    "sub/nested.webp",
    "empty.jpg",
    "truncated.jpg",
    "text.jpg",
    "bomb.png",
    "cmyk.jpg",
    "gray16.png",
    "animated.gif",
    NFD_NAME,
    EXIF_ROTATED,
    "rgba.png",
    "palette.png",
    "bomb72.png",  # over our 64 MP limit, under Pillow's own bomb limit: our check must refuse it
)
NO_S3_COUNTERPART = {"link_to_good.jpg", "unreadable.jpg"}


class Hostile:
    """The hostile folder on disk and the same files under ``s3://BUCKET/PREFIX``."""

    def __init__(self, root: Path, url: str, expected: dict[str, str]) -> None:
        self.root, self.url, self.expected = root, url, expected


@pytest.fixture(scope="module")
def hostile(seaweed: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    root = tmp_path_factory.mktemp("hostile")
    expected = make_hostile_folder(root)
    (root / "bomb72.png").write_bytes(png_header_only(9000, 8000))
    expected["bomb72.png"] = TOO_LARGE
    assert set(expected) - NO_S3_COUNTERPART == set(CASES), "hostile.py changed: update CASES"
    bucket = seaweed.new_bucket("hostile")
    prefix = uuid.uuid4().hex[:8]
    fs = seaweed.filesystem()
    for name in CASES:
        fs.pipe_file(f"{bucket}/{prefix}/{name}", (root / name).read_bytes())
    return Hostile(root, f"s3://{bucket}/{prefix}", expected)


def _outcome(location: str | Path) -> tuple[str, ...]:
    """("ok", size, mode, pixel digest) or ("error", reason)."""
    try:
        image = load_rgb(location)
    except ImageError as exc:
        return ("error", str(exc))
    return ("ok", str(image.size), image.mode, hashlib.sha256(image.tobytes()).hexdigest())


@pytest.mark.parametrize("name", CASES)
def test_s3_and_local_decode_the_same(
    name: str, hostile: Hostile, seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch, vicap_env: Path
) -> None:
    use_s3_env(monkeypatch, seaweed)
    local = _outcome(hostile.root / name)
    remote = _outcome(f"{hostile.url}/{name}")
    assert remote == local
    want = hostile.expected[name]
    if want == OK:
        assert local[0] == "ok" and local[2] == "RGB"
    else:
        assert local[0] == "error" and want in local[1]


def test_a_missing_object_is_an_image_error_with_a_reason(
    hostile: Hostile, seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch, vicap_env: Path
) -> None:
    """The local path says "file not found", the object "object not found": both an ImageError for the row."""
    use_s3_env(monkeypatch, seaweed)
    with pytest.raises(ObjectError, match="object not found"):
        load_rgb(f"{hostile.url}/gone.jpg")
    with pytest.raises(ImageError, match="file not found"):
        load_rgb(hostile.root / "gone.jpg")


def test_a_folder_url_is_an_image_error_not_an_empty_photo(
    hostile: Hostile, seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch, vicap_env: Path
) -> None:
    """SeaweedFS serves "sub/" as an empty object; the photo's row must not say "empty file"."""
    use_s3_env(monkeypatch, seaweed)
    for folder in ("sub", "sub/"):
        with pytest.raises(ObjectError, match="not an object|object not found"):
            load_rgb(f"{hostile.url}/{folder}")
