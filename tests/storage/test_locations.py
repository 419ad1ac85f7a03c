"""Telling object storage URLs from local paths, joining and naming them: pure string rules, no storage."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from vicap_jobs.storage.locations import as_location, is_url, join, local_path, name_of, scheme

NFC = unicodedata.normalize("NFC", "ảnh bóng đá.jpg")
NFD = unicodedata.normalize("NFD", "ảnh bóng đá.jpg")


@pytest.mark.parametrize(
    ("location", "url", "its_scheme"),
    [
        ("s3://bucket/photos/a.jpg", True, "s3"),
        ("S3://Bucket/a.jpg", True, "s3"),  # schemes are case-insensitive
        ("s3a://bucket/a.jpg", True, "s3a"),
        ("gs://bucket", True, "gs"),
        ("az://container/x", True, "az"),
        ("memory://x/y.png", True, "memory"),
        ("simplecache+s3://b/k", True, "simplecache+s3"),
        ("C://photos/a.jpg", False, ""),  # one letter: a Windows drive, not a scheme
        ("c:\\photos\\a.jpg", False, ""),
        ("file:///tmp/a.jpg", False, ""),  # file:// is the local disk
        ("FILE:///tmp/a.jpg", False, ""),
        ("/tmp/a://b.jpg", False, ""),  # "://" not at the start
        ("s3:/bucket/a.jpg", False, ""),  # one slash: a relative local path
        ("photos/a.jpg", False, ""),
        ("", False, ""),
    ],
)
def test_urls_and_local_paths_are_told_apart(location: str, url: bool, its_scheme: str) -> None:
    assert is_url(location) is url
    assert scheme(location) == its_scheme


def test_a_path_object_is_never_a_url() -> None:
    assert not is_url(Path("s3:/bucket/a.jpg"))
    assert local_path(Path("/tmp/x.jpg")) == Path("/tmp/x.jpg")


@pytest.mark.parametrize(
    ("location", "path"),
    [
        ("file:///tmp/photos/a.jpg", Path("/tmp/photos/a.jpg")),
        ("FILE:///tmp/a.jpg", Path("/tmp/a.jpg")),
        ("/tmp/photos/", Path("/tmp/photos")),
        ("C://photos/a.jpg", Path("C://photos/a.jpg")),
    ],
)
def test_local_path_strips_file_scheme(location: str, path: Path) -> None:
    assert local_path(location) == path


@pytest.mark.parametrize("url", ["s3://bucket/a.jpg", "memory://x", "gs://b/"])
def test_local_path_refuses_an_object_storage_url(url: str) -> None:
    with pytest.raises(ValueError, match="not a local path"):
        local_path(url)


@pytest.mark.parametrize(
    ("base", "parts", "joined"),
    [
        ("s3://bucket/photos", ("a.jpg",), "s3://bucket/photos/a.jpg"),
        ("s3://bucket/photos/", ("/sub/", "a.jpg"), "s3://bucket/photos/sub/a.jpg"),
        ("s3://bucket", ("sub/", "/x/"), "s3://bucket/sub/x"),
        ("s3://bucket/photos/", (), "s3://bucket/photos"),
        ("s3://bucket/photos", ("",), "s3://bucket/photos"),
        ("memory://root", ("a", "b.png"), "memory://root/a/b.png"),
        ("/tmp/photos/", ("sub", "a.jpg"), "/tmp/photos/sub/a.jpg"),
        ("file:///tmp/photos", ("a.jpg",), "/tmp/photos/a.jpg"),  # a usable local path, not "file:/tmp/…"
    ],
)
def test_join_uses_slashes_and_keeps_the_scheme(base: str, parts: tuple[str, ...], joined: str) -> None:
    assert join(base, *parts) == joined


def test_join_and_name_of_keep_unicode_keys_as_given() -> None:
    """Object keys are bytes to the store: an NFD key must not be normalized on its way (it would not be found)."""
    assert join("s3://bucket/p", NFD) == f"s3://bucket/p/{NFD}"
    assert name_of(f"s3://bucket/p/{NFD}") == NFD != NFC
    assert name_of(f"/tmp/p/{NFC}") == NFC


@pytest.mark.parametrize(
    ("location", "name"),
    [
        ("s3://bucket/photos/a.jpg", "a.jpg"),
        ("s3://bucket/photos/", "photos"),
        ("s3://bucket//", "bucket"),
        ("s3://bucket", "bucket"),
        ("s3://", ""),
        ("memory://x/y.png", "y.png"),
        ("/tmp/photos/a.jpg", "a.jpg"),
        ("/tmp/photos/", "photos"),
        ("file:///tmp/a.jpg", "a.jpg"),
        ("C://photos/a.jpg", "a.jpg"),
    ],
)
def test_name_of(location: str, name: str) -> None:
    assert name_of(location) == name


@pytest.mark.parametrize(
    ("location", "recorded"),
    [
        ("s3://bucket/photos/", "s3://bucket/photos"),
        ("s3://bucket/photos//", "s3://bucket/photos"),
        ("s3://bucket/photos", "s3://bucket/photos"),
        ("s3://", "s3://"),  # never cut into the scheme: it would become a local path
        ("/tmp/photos/", "/tmp/photos/"),
        (Path("/tmp/photos"), "/tmp/photos"),
    ],
)
def test_as_location(location: str | Path, recorded: str) -> None:
    assert as_location(location) == recorded
    assert is_url(recorded) == is_url(location)
