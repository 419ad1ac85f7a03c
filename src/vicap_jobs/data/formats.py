"""Caption-file readers: COCO captions JSON (UIT-ViIC's format) and Kaggle-style captions.txt.

Readers are pure: they parse and validate a file into :class:`ParsedSplit`
without touching the store, and raise DatasetFormatError naming the file and
the entry for anything malformed, so nothing is ever half-imported.
"""

from __future__ import annotations

import csv
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vicap_jobs.errors import DatasetFormatError, UnknownNameError

FORMATS = ("coco", "captions-txt")


@dataclass
class ParsedImage:
    """One image entry and its captions, as given in the file."""

    file_name: str
    coco_id: int | None = None
    width: int | None = None
    height: int | None = None
    captions: list[tuple[str, int | None]] = field(default_factory=list)  # (text, annotation id)


@dataclass
class ParsedSplit:
    source: Path
    images: list[ParsedImage]

    @property
    def n_captions(self) -> int:
        return sum(len(image.captions) for image in self.images)


def read_coco_captions(path: Path) -> ParsedSplit:
    """Parse a COCO captions JSON: ``images[]`` (id, file_name) and ``annotations[]`` (image_id, caption)."""
    data = _load_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DatasetFormatError(f"{path}: not a COCO captions file (needs top-level 'images' and 'annotations' lists)")
    by_id: dict[int, ParsedImage] = {}
    for index, entry in enumerate(_as_list(data["images"], path, "images")):
        image_id = _required(entry, "id", path, f"images[{index}]")
        file_name = _required(entry, "file_name", path, f"images[{index}]")
        if not isinstance(image_id, int) or not isinstance(file_name, str) or not file_name.strip():
            raise DatasetFormatError(f"{path}: images[{index}] needs an integer 'id' and a non-empty 'file_name'")
        if image_id in by_id:
            raise DatasetFormatError(f"{path}: images[{index}] repeats image id {image_id}")
        by_id[image_id] = ParsedImage(
            file_name=file_name,
            coco_id=image_id,
            width=_int_or_none(entry.get("width")),
            height=_int_or_none(entry.get("height")),
        )
    for index, entry in enumerate(_as_list(data["annotations"], path, "annotations")):
        where = f"annotations[{index}]"
        image_id = _required(entry, "image_id", path, where)
        caption = _required(entry, "caption", path, where)
        if image_id not in by_id:
            raise DatasetFormatError(f"{path}: {where} has a caption for unknown image id {image_id!r}")
        by_id[image_id].captions.append((_clean_caption(caption, path, where), _int_or_none(entry.get("id"))))
    return ParsedSplit(source=path, images=list(by_id.values()))


def read_captions_txt(path: Path) -> ParsedSplit:
    """Parse ``captions.txt``: one ``image_path<TAB>caption`` per line (a header line is allowed)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    by_name: dict[str, ParsedImage] = {}
    try:
        rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    except csv.Error as exc:
        hint = " (it looks like JSON: use --format coco)" if text.lstrip().startswith(("{", "[")) else ""
        raise DatasetFormatError(f"{path}: not a TAB-separated captions file: {exc}{hint}") from None
    for number, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if number == 1 and [c.strip().lower() for c in row[:2]] in (["image", "caption"], ["image_path", "caption"]):
            continue
        if len(row) < 2:
            raise DatasetFormatError(f"{path}: line {number} needs 'image_path<TAB>caption', got {row[0][:60]!r}")
        name = row[0].strip()
        if not name:
            raise DatasetFormatError(f"{path}: line {number} has an empty image path")
        image = by_name.setdefault(name, ParsedImage(file_name=name))
        image.captions.append((_clean_caption("\t".join(row[1:]), path, f"line {number}"), None))
    if not by_name:
        raise DatasetFormatError(f"{path}: no captions found")
    return ParsedSplit(source=path, images=list(by_name.values()))


def read_split(path: Path, fmt: str) -> ParsedSplit:
    if fmt == "coco":
        return read_coco_captions(path)
    if fmt == "captions-txt":
        return read_captions_txt(path)

    raise UnknownNameError("data set format", fmt, FORMATS)


def _load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _as_list(value: Any, path: Path, key: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DatasetFormatError(f"{path}: '{key}' must be a list of objects")
    return value


def _required(entry: dict[str, Any], key: str, path: Path, where: str) -> Any:
    if key not in entry:
        raise DatasetFormatError(f"{path}: {where} is missing '{key}'")
    return entry[key]


def _clean_caption(caption: Any, path: Path, where: str) -> str:
    if not isinstance(caption, str) or not caption.strip():
        raise DatasetFormatError(f"{path}: {where} has an empty caption")
    return unicodedata.normalize("NFC", caption.strip())


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
