"""Folder walking: exact file set, stable order, symlink loops, unreadable folders, NFD names."""

from __future__ import annotations

import logging
import os
import sys
import unicodedata
from pathlib import Path

import pytest

from tests.data import hostile
from tests.data.hostile import NFD_NAME, is_root, make_hostile_folder
from vicap_jobs.data.folders import IMAGE_SUFFIXES, WalkReport, is_image_name, iter_image_files
from vicap_jobs.errors import InputError


def _relative(root: Path, paths: list[Path]) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


@pytest.mark.timeout(30)
def test_recursive_walk_finds_exactly_the_image_files(tmp_path: Path) -> None:
    expected = make_hostile_folder(tmp_path)
    report = WalkReport()
    found = _relative(tmp_path, list(iter_image_files(tmp_path, recursive=True, report=report)))
    assert sorted(found) == sorted(expected)
    assert len(found) == len(set(found))
    assert tmp_path / "sub" / "loop" in report.repeated_dirs  # the loop was seen and not followed


def test_walk_order_is_sorted_and_repeatable(tmp_path: Path) -> None:
    make_hostile_folder(tmp_path)
    first = list(iter_image_files(tmp_path, recursive=True))
    assert first == list(iter_image_files(tmp_path, recursive=True))
    nfc_parts = [tuple(unicodedata.normalize("NFC", part) for part in p.relative_to(tmp_path).parts) for p in first]
    assert nfc_parts == sorted(nfc_parts)


def test_non_recursive_walk_stays_in_the_top_folder(tmp_path: Path) -> None:
    expected = make_hostile_folder(tmp_path)
    found = _relative(tmp_path, list(iter_image_files(tmp_path, recursive=False)))
    assert sorted(found) == sorted(name for name in expected if "/" not in name)


def test_nfd_name_is_returned_as_on_disk(tmp_path: Path) -> None:
    make_hostile_folder(tmp_path)
    nfc = unicodedata.normalize("NFC", NFD_NAME)
    (match,) = [p for p in iter_image_files(tmp_path, recursive=False) if unicodedata.normalize("NFC", p.name) == nfc]
    assert match.name == NFD_NAME
    assert match.name != nfc
    assert match.is_file()


@pytest.mark.parametrize("name", ["a.jpg", "b.JPG", "c.Jpeg", "d.PNG", "e.webp", "f.BMP", "g.gif"])
def test_suffixes_match_in_any_case(name: str) -> None:
    assert is_image_name(name)


@pytest.mark.parametrize("name", ["a.txt", "jpg", "a.jpg.txt", "a.tiff", "a"])
def test_other_names_are_not_images(name: str) -> None:
    assert not is_image_name(name)


def test_suffix_list_is_lower_case() -> None:
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)


def test_hidden_entries_and_special_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "thumb.jpg").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "real.png").write_bytes(b"x")
    assert _relative(tmp_path, list(iter_image_files(tmp_path, recursive=True))) == ["real.png"]


def test_folder_alias_is_walked_once(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    os.symlink("photos", tmp_path / "zz_alias")
    report = WalkReport()
    assert _relative(tmp_path, list(iter_image_files(tmp_path, recursive=True, report=report))) == ["photos/a.jpg"]
    assert report.repeated_dirs == [tmp_path / "zz_alias"] and report.skipped_dirs == 1


def test_symlinked_root_and_files_are_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.jpg").write_bytes(b"x")
    os.symlink("real", tmp_path / "link")
    assert list(iter_image_files(tmp_path / "link", recursive=True)) == [tmp_path / "link" / "a.jpg"]


def _frame_depth() -> int:
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth


@pytest.mark.timeout(60)
def test_deep_trees_do_not_hit_the_recursion_limit(tmp_path: Path) -> None:
    levels = [os.path.join(tmp_path, *["d"] * depth) for depth in range(1, 301)]
    for level in levels:
        os.mkdir(level)
    bottom = Path(levels[-1]) / "bottom.jpg"
    bottom.write_bytes(b"x")
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_frame_depth() + 100)  # a recursive walk of 300 levels would overflow this
    try:
        assert list(iter_image_files(tmp_path, recursive=True)) == [bottom]
    finally:
        sys.setrecursionlimit(old_limit)


def test_missing_root_fails_before_iteration(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="folder not found"):
        iter_image_files(tmp_path / "missing", recursive=True)  # no next(): raised eagerly


def test_file_as_root_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="not a folder"):
        iter_image_files(tmp_path / "a.jpg", recursive=False)


@pytest.mark.skipif(is_root(), reason="root can read every folder")
def test_unreadable_folder_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = make_hostile_folder(tmp_path)
    report = WalkReport()
    with caplog.at_level(logging.WARNING, logger="vicap_jobs.data.folders"):
        found = _relative(tmp_path, list(iter_image_files(tmp_path, recursive=True, report=report)))
    assert sorted(found) == sorted(expected)
    assert [path for path, _ in report.unreadable_dirs] == [tmp_path / "locked"]
    assert "skipping unreadable folder" in caplog.text


@pytest.mark.skipif(is_root(), reason="root can read every folder")
def test_unreadable_root_is_an_input_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        with pytest.raises(InputError, match="cannot read folder"):
            iter_image_files(locked, recursive=True)
    finally:
        locked.chmod(0o755)


def test_unreadable_folder_handling_without_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Simulates EACCES so the skip path runs even as root (which reads everything)."""
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "b.jpg").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path: os.PathLike[str] | str) -> object:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = WalkReport()
    with caplog.at_level(logging.WARNING, logger="vicap_jobs.data.folders"):
        found = _relative(tmp_path, list(iter_image_files(tmp_path, recursive=True, report=report)))
    assert found == ["a.jpg"]
    assert report.unreadable_dirs == [(tmp_path / "locked", "Permission denied")]
    assert "skipping unreadable folder" in caplog.text and "Permission denied" in caplog.text
    with pytest.raises(InputError, match="cannot read folder .*Permission denied"):
        iter_image_files(tmp_path / "locked", recursive=True)


def test_hostile_helper_non_root_branch_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unreadable entries are only made for non-root runs; make sure that branch works."""
    monkeypatch.setattr(hostile, "is_root", lambda: False)
    expected = hostile.make_hostile_folder(tmp_path)
    assert expected["unreadable.jpg"] == hostile.UNREADABLE
    assert (tmp_path / "unreadable.jpg").stat().st_mode & 0o777 == 0
    assert (tmp_path / "locked").stat().st_mode & 0o777 == 0
    (tmp_path / "locked").chmod(0o755)  # let pytest clean up
