"""Objects on a real S3 server (SeaweedFS): listing a prefix's images, reading with a cap, retries, writing.

Every S3 test talks to ``weed server -s3`` through the standard AWS variables; nothing is mocked.
Tests that take the storage away start a server of their own (``make_seaweed``).
"""

from __future__ import annotations

import logging
import os
import time
import unicodedata
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import use_s3_env
from tests.seaweed import SeaweedS3
from vicap_jobs.data.folders import is_image_name
from vicap_jobs.errors import InputError
from vicap_jobs.storage.objects import (
    ObjectError,
    StorageUnavailable,
    download_file,
    exists,
    filesystem,
    list_image_objects,
    read_object,
    read_text,
    upload_file,
    write_bytes,
)

NFC = unicodedata.normalize("NFC", "ảnh.jpg")
NFD = unicodedata.normalize("NFD", "ảnh.jpg")


def _bucket_name(url: str) -> str:
    return url.removeprefix("s3://")


@pytest.fixture(scope="module")
def _module_bucket(seaweed: SeaweedS3) -> str:
    """One bucket for this module: SeaweedFS gives each bucket 7 volumes, and a server holds only 30."""
    return seaweed.new_bucket("objects")


@pytest.fixture()
def s3_root(seaweed: SeaweedS3, _module_bucket: str, monkeypatch: pytest.MonkeyPatch, vicap_env: Path) -> str:
    """``s3://BUCKET/PREFIX``, a prefix of this test's own, with the AWS variables pointing at ``seaweed``."""
    use_s3_env(monkeypatch, seaweed)
    return f"s3://{_module_bucket}/{uuid.uuid4().hex[:10]}"


def _put(seaweed: SeaweedS3, bucket: str, keys: dict[str, bytes]) -> None:
    """Objects put straight through a client of the server (folder markers like "p/sub/" included)."""
    fs = seaweed.filesystem()
    for key, data in keys.items():
        fs.pipe_file(f"{_bucket_name(bucket)}/{key}", data)


def _list(url: str, *, recursive: bool = True) -> list[str]:
    return list_image_objects(url, recursive=recursive, is_image_name=is_image_name)


# --------------------------------------------------------------------------- listing


@pytest.fixture()
def photo_prefix(seaweed: SeaweedS3, s3_root: str) -> str:
    """``s3://BUCKET/p`` holding images, hidden, non-image, folder-marker and sibling-prefix objects."""
    _put(
        seaweed,
        s3_root,
        {
            "p/b.jpg": b"b",
            "p/a.png": b"a",
            "p/UPPER.JPG": b"u",
            "p/mixed.JpEg": b"m",
            "p/empty.jpg": b"",  # kept: its caption row will say "empty file"
            "p/notes.txt": b"not an image",
            "p/noext": b"x",
            "p/.x.jpg": b"hidden",
            "p/.cache/y.jpg": b"hidden folder",
            "p/sub/.z.png": b"hidden, nested",
            "p/sub/c.webp": b"c",
            "p/sub/deeper/d.gif": b"d",
            "p/marker/": b"",  # a "folder" made by a console
            "p/sub/": b"",
            "p_extra/e.jpg": b"a sibling prefix, not under p/",
        },
    )
    return f"{s3_root}/p"


def test_recursive_listing_finds_images_only_sorted(photo_prefix: str) -> None:
    names = [url.removeprefix(photo_prefix + "/") for url in _list(photo_prefix)]
    assert names == sorted(names)
    assert names == ["UPPER.JPG", "a.png", "b.jpg", "empty.jpg", "mixed.JpEg", "sub/c.webp", "sub/deeper/d.gif"]


def test_non_recursive_listing_stays_at_the_top(photo_prefix: str) -> None:
    names = [url.removeprefix(photo_prefix + "/") for url in _list(photo_prefix, recursive=False)]
    assert names == ["UPPER.JPG", "a.png", "b.jpg", "empty.jpg", "mixed.JpEg"]


def test_a_trailing_slash_changes_nothing_and_the_order_is_stable(photo_prefix: str) -> None:
    first = _list(photo_prefix)
    assert _list(photo_prefix + "/") == first == _list(photo_prefix + "//")
    assert all(url.startswith("s3://") for url in first)


def test_listed_urls_read_back(photo_prefix: str) -> None:
    assert [read_object(url) for url in _list(photo_prefix, recursive=False)] == [b"u", b"a", b"b", b"", b"m"]


@pytest.mark.parametrize("where", ["nothing-here", "p/a.png/x"])
def test_an_empty_prefix_is_one_line_input_error(photo_prefix: str, where: str) -> None:
    bucket = photo_prefix.removesuffix("/p")
    with pytest.raises(InputError, match="nothing found at") as caught:
        _list(f"{bucket}/{where}")
    assert "\n" not in str(caught.value)


def test_a_missing_bucket_is_one_line_input_error(s3_root: str) -> None:
    with pytest.raises(InputError) as caught:
        _list(f"s3://vicap-does-not-exist-{uuid.uuid4().hex[:8]}/photos")
    assert "\n" not in str(caught.value) and "does-not-exist" in str(caught.value)


def test_a_prefix_of_only_non_images_lists_nothing(seaweed: SeaweedS3, s3_root: str) -> None:
    _put(seaweed, s3_root, {"docs/readme.txt": b"x", "docs/.hidden.jpg": b"y", "docs/folder/": b""})
    assert _list(f"{s3_root}/docs") == []


def test_nfc_and_nfd_keys_are_distinct_objects_listed_in_a_stable_order(seaweed: SeaweedS3, s3_root: str) -> None:
    """A Vietnamese name uploaded from macOS (NFD) and from Windows (NFC): two keys, both listed, both readable."""
    _put(seaweed, s3_root, {f"u/{NFD}": b"nfd", f"u/{NFC}": b"nfc", "u/z.jpg": b"z"})
    urls = _list(f"{s3_root}/u")
    assert len(urls) == 3 and urls == _list(f"{s3_root}/u")
    names = [url.rsplit("/", 1)[-1] for url in urls]
    # sorted by the NFC form first, so the two spellings sit together; the raw key breaks the tie
    assert names == ["z.jpg", NFD, NFC]  # "ả" sorts after "z"; of the two, the raw NFD key ("a" + hook) first
    assert [read_object(url) for url in urls] == [b"z", b"nfd", b"nfc"]
    assert read_object(f"{s3_root}/u/{NFD}") == b"nfd"


def test_keys_with_url_characters_are_listed_and_read(seaweed: SeaweedS3, s3_root: str) -> None:
    keys = {"w/a b.jpg": b"space", "w/c#1.jpg": b"hash", "w/d+e.jpg": b"plus", "w/f%20g.jpg": b"percent"}
    _put(seaweed, s3_root, keys)
    urls = _list(f"{s3_root}/w")
    assert {read_object(url) for url in urls} == set(keys.values())


# --------------------------------------------------------------------------- reading


def test_read_object_returns_the_bytes(s3_root: str) -> None:
    data = bytes(range(256)) * 1000
    write_bytes(f"{s3_root}/r/blob.jpg", data)
    assert read_object(f"{s3_root}/r/blob.jpg") == data
    assert read_object(f"{s3_root}/r/blob.jpg", max_bytes=len(data)) == data  # exactly at the cap is fine


def test_a_missing_object_is_an_object_error(s3_root: str) -> None:
    with pytest.raises(ObjectError, match="^object not found$"):
        read_object(f"{s3_root}/r/missing.jpg")


def test_a_missing_bucket_reads_as_object_not_found(s3_root: str) -> None:
    with pytest.raises(ObjectError, match="object not found"):
        read_object(f"s3://vicap-nope-{uuid.uuid4().hex[:8]}/a.jpg")


def test_an_object_over_the_cap_is_refused(s3_root: str) -> None:
    write_bytes(f"{s3_root}/r/big.jpg", b"x" * 5000)
    with pytest.raises(ObjectError, match="over the .* limit"):
        read_object(f"{s3_root}/r/big.jpg", max_bytes=4999)


@pytest.mark.parametrize("key", ["f/sub", "f/sub/", "f/marker"])
def test_a_prefix_or_folder_marker_is_not_an_object(seaweed: SeaweedS3, s3_root: str, key: str) -> None:
    """SeaweedFS serves a "folder" as an empty object; it must not become an "empty file" photo."""
    _put(seaweed, s3_root, {"f/sub/a.jpg": b"a", "f/marker/": b""})
    with pytest.raises(ObjectError, match="not an object|object not found"):
        read_object(f"{s3_root}/{key}")


def test_exists_and_read_text(s3_root: str, tmp_path: Path) -> None:
    write_bytes(f"{s3_root}/t/notes.json", '{"chú thích": "bóng đá"}'.encode())
    assert exists(f"{s3_root}/t/notes.json") and not exists(f"{s3_root}/t/other.json")
    assert read_text(f"{s3_root}/t/notes.json") == '{"chú thích": "bóng đá"}'
    with pytest.raises(InputError, match="not found"):
        read_text(f"{s3_root}/t/other.json")
    (tmp_path / "local.txt").write_text("xin chào", encoding="utf-8")
    assert exists(str(tmp_path / "local.txt")) and read_text(tmp_path / "local.txt") == "xin chào"


def test_upload_and_download_round_trip(s3_root: str, tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(300_000))
    upload_file(source, f"{s3_root}/artifacts/model.bin")
    download_file(f"{s3_root}/artifacts/model.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    with pytest.raises(ObjectError, match="object not found"):
        download_file(f"{s3_root}/artifacts/none.bin", tmp_path / "none.bin")
    assert sorted(p.name for p in tmp_path.glob("*.*")) == ["copy.bin", "model.bin"]  # no partial or .part file


def test_a_download_cut_off_leaves_no_partial_file(own_s3: SeaweedS3, tmp_path: Path) -> None:
    bucket = f"s3://{own_s3.new_bucket()}"
    write_bytes(f"{bucket}/model.bin", b"weights")
    (tmp_path / "cache").mkdir()
    own_s3.stop()
    with pytest.raises(StorageUnavailable):
        download_file(f"{bucket}/model.bin", tmp_path / "cache" / "model.bin")
    assert list((tmp_path / "cache").iterdir()) == []


# --------------------------------------------------------------------------- writing


def test_write_bytes_local_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_bytes(target, b"first")
    write_bytes(str(target), b"second")
    write_bytes(f"file://{target}", b"third")
    assert target.read_bytes() == b"third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_write_bytes_local_into_a_missing_folder_fails_without_leftovers(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_bytes(tmp_path / "missing" / "out.json", b"data")
    assert list(tmp_path.iterdir()) == []


def test_write_bytes_local_onto_a_folder_fails_without_leftovers(tmp_path: Path) -> None:
    """The temporary file is written, then cannot replace a folder: it must not stay behind."""
    (tmp_path / "out.json").mkdir()
    with pytest.raises(OSError):
        write_bytes(tmp_path / "out.json", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"] and (tmp_path / "out.json").is_dir()


def test_write_bytes_local_keeps_the_old_content_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after part of the data is written (a full disk) leaves the old file whole and no part file."""
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old and complete")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_bytes(target, b"new but never synced")
    assert target.read_bytes() == b"old and complete"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_write_bytes_remote_is_one_whole_object(s3_root: str) -> None:
    url = f"{s3_root}/exports/captions.csv"
    write_bytes(url, b"a" * 100_000)
    write_bytes(url, "ảnh,chú thích\n".encode())
    assert read_object(url) == "ảnh,chú thích\n".encode()
    assert _list(f"{s3_root}/exports", recursive=True) == []  # a csv is no image; nothing else was left


# --------------------------------------------------------------------------- the storage going away


def test_a_stopped_server_is_storage_unavailable_then_reads_work_after_restart(
    own_s3: SeaweedS3, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = f"s3://{own_s3.new_bucket()}"
    write_bytes(f"{bucket}/p/a.jpg", b"photo a")
    write_bytes(f"{bucket}/p/b.jpg", b"photo b")
    own_s3.stop()

    started = time.monotonic()
    unavailable = r"unreachable while reading .*\(after 2 attempts\)"
    with (
        caplog.at_level(logging.WARNING, logger="vicap_jobs.storage.objects"),
        pytest.raises(StorageUnavailable, match=unavailable) as caught,
    ):
        read_object(f"{bucket}/p/a.jpg")
    elapsed = time.monotonic() - started
    assert "\n" not in str(caught.value)
    assert elapsed < 10, f"two attempts took {elapsed:.1f}s"
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 1  # 2 attempts: one pause
    with pytest.raises(StorageUnavailable):
        list_image_objects(f"{bucket}/p", recursive=True, is_image_name=is_image_name)
    with pytest.raises(StorageUnavailable):
        write_bytes(f"{bucket}/p/c.jpg", b"photo c")

    own_s3.restart()
    assert _list(f"{bucket}/p") == [f"{bucket}/p/a.jpg", f"{bucket}/p/b.jpg"]
    assert read_object(f"{bucket}/p/a.jpg") == b"photo a" and read_object(f"{bucket}/p/b.jpg") == b"photo b"
    assert not exists(f"{bucket}/p/c.jpg")


def test_a_missing_object_is_not_retried(own_s3: SeaweedS3, caplog: pytest.LogCaptureFixture) -> None:
    """An object's own problem is the photo's, at once: no backoff, no StorageUnavailable."""
    bucket = f"s3://{own_s3.new_bucket()}"
    with caplog.at_level(logging.WARNING, logger="vicap_jobs.storage.objects"), pytest.raises(ObjectError):
        read_object(f"{bucket}/none.jpg")
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_the_storage_api_follows_the_environment_to_another_server(
    seaweed: SeaweedS3,
    s3_root: str,
    make_seaweed: Callable[[Path], SeaweedS3],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Regression: fsspec's instance cache kept the first endpoint, so writes meant for B went to A.

    (SeaweedFS creates a missing bucket on a PUT, so the mistake was silent.)
    """
    other = make_seaweed(tmp_path / "other")
    first = s3_root.removeprefix("s3://")
    write_bytes(f"s3://{first}/x.jpg", b"on the session server")
    use_s3_env(monkeypatch, other)
    second = other.new_bucket()
    write_bytes(f"s3://{second}/x.jpg", b"on the other server")
    assert other.filesystem().cat_file(f"{second}/x.jpg") == b"on the other server"
    assert not seaweed.filesystem().exists(second)  # no bucket auto-created on the session server
    assert filesystem(f"s3://{second}/x.jpg")[1] == f"{second}/x.jpg"
    use_s3_env(monkeypatch, seaweed)
    assert read_object(f"s3://{first}/x.jpg") == b"on the session server"
