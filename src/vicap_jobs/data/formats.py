"""Caption-file readers for the field's data sets, one registry of formats, and a content sniffer.

=============  ==============================================================================
coco           COCO captions JSON: ``images[]`` (id, file_name), ``annotations[]`` (image_id,
               caption). UIT-ViIC's format.
uit-openviic   The same layout in ``uit-openviic-{train,dev,test}.json``; the split comes from
               the file name (dev → val).
ktvic          ``train_data.json`` / ``test_data.json``: ``images[]`` (id, filename),
               ``annotations[]`` (id, image_id, caption, segment_caption). The word-segmented
               ``segment_caption`` ("khung_cảnh") is kept beside the caption.
viecap4h       VLSP 2021 VieCap4H ``train_captions.json``: ``[{"id": "<file name>", "captions":
               "<text>"}]``; an image may repeat, and a captions text may hold several captions,
               one per line. Its COCO-converted variant (``images`` / ``annotations``) is read as COCO.
captions-txt   ``image_path<TAB>caption`` lines (Flickr / Kaggle ``captions.txt``).
csv            A header with a ``caption`` column and a file column (``file``, ``file_name`` or
               ``image``), optionally ``split``.
jsonl          One ``{"file": ..., "caption": ...}`` object per line, optionally ``"split"``.
=============  ==============================================================================

Readers are pure: they parse and validate a file into :class:`ParsedSplit`
without touching the store, and raise DatasetFormatError naming the file, the
record (``annotations[3]``, ``line 7``) and what is wrong, so nothing is ever
half-imported. A file names its split by its name (``uit-openviic-dev.json``,
``test_data.json``) or by a split column (csv, jsonl), which may carry several
splits at once; otherwise the importer needs ``--split``. A file at an object storage URL
(``s3://bucket/captions.json``) is read whole through ``vicap_jobs.storage`` and parsed the same
way; its location stays a ``str`` (``Path`` would fold ``s3://`` into ``s3:/``).

The VieCap4H layout could not be checked against the organisers' release
(aihub.vn is out of reach here). It follows public solutions of the challenge:
ngthanhtin/VLSP_ImageCaptioning reads ``train_captions.json`` (and the
submission files) as a list of ``{"id", "captions"}`` entries, splitting
``captions`` on newlines, and its data exploration shows file names such as
``EA920B1A56.jpg`` repeated with one caption each (8,032 images);
caodoanh2001/uit-vlsp-viecap4h-solution converts the same annotations to COCO
(``viecap4h-public-train.json``) first. Both are accepted.
"""

from __future__ import annotations

import csv
import functools
import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vicap_jobs.errors import DatasetFormatError, InputError, UnknownNameError
from vicap_jobs.storage.locations import is_url, name_of
from vicap_jobs.storage.objects import read_text

#: A captions file: a local path, or an object storage URL (``s3://bucket/captions.json``) kept as text.
Location = Path | str

# The store's split names (vicap_jobs.db.tables.SPLITS), and the names data sets use for them.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}
FILE_COLUMNS = ("file", "file_name", "filename", "image", "image_path")
CAPTION_COLUMNS = ("caption", "text")
_SHOWN_FIELDS = 8


@dataclass
class ParsedImage:
    """One image entry and its captions, as given in the file."""

    file_name: str
    coco_id: int | None = None
    width: int | None = None
    height: int | None = None
    captions: list[tuple[str, int | None]] = field(default_factory=list)  # (text, annotation id)
    segmented: list[str | None] = field(default_factory=list)  # the data set's word segmentation, per caption

    def add(self, text: str, annotation_id: int | None = None, segmented: str | None = None) -> None:
        """Append one caption (and its segmented form, when the data set gives one)."""
        self.segmented.extend([None] * (len(self.captions) - len(self.segmented)))
        self.captions.append((text, annotation_id))
        self.segmented.append(segmented)

    def segmented_at(self, position: int) -> str | None:
        """The segmented form of caption ``position``, or None."""
        return self.segmented[position] if position < len(self.segmented) else None


@dataclass
class ParsedSplit:
    """The images of one split of a file; ``split`` is None when the file does not say which split."""

    source: Location
    images: list[ParsedImage]
    split: str | None = None

    @property
    def n_captions(self) -> int:
        return sum(len(image.captions) for image in self.images)


@dataclass
class ParsedFile:
    """A whole captions file: its format and one ParsedSplit per split it holds."""

    source: Location
    format: str
    splits: list[ParsedSplit]
    split_column: bool = False  # True when the splits come from a per-record split field


@dataclass(frozen=True)
class DatasetFormat:
    """A registered layout: ``read(source)`` parses a file already opened as a `_Source`."""

    name: str
    summary: str
    read: Callable[[_Source], ParsedFile]


class _Source:
    """A captions file read (and parsed as JSON) at most once, shared by the sniffer and the reader."""

    def __init__(self, path: Location) -> None:
        self.path: Location = path if is_url(path) else Path(path)

    @functools.cached_property
    def text(self) -> str:
        try:
            if isinstance(self.path, str):  # a URL: read whole through vicap_jobs.storage (retried, one GET)
                return read_text(self.path).removeprefix("\ufeff")
            return self.path.read_text(encoding="utf-8-sig")
        except (FileNotFoundError, InputError):
            raise DatasetFormatError(f"{self.path}: file not found") from None
        except IsADirectoryError:
            raise DatasetFormatError(f"{self.path}: is a folder, not a captions file") from None
        except PermissionError:
            raise DatasetFormatError(f"{self.path}: access denied") from None
        except UnicodeDecodeError as exc:
            raise DatasetFormatError(f"{self.path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None

    @functools.cached_property
    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(
                f"{self.path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None


# --------------------------------------------------------------------------- COCO-like JSON


def read_coco_captions(path: Location) -> ParsedSplit:
    """Parse a COCO captions JSON: ``images[]`` (id, file_name) and ``annotations[]`` (image_id, caption)."""
    return _read_coco(_Source(path)).splits[0]


def _read_coco(source: _Source) -> ParsedFile:
    return ParsedFile(source.path, "coco", [_coco_like(source, file_key="file_name", integer_ids=True)])


def _read_openviic(source: _Source) -> ParsedFile:
    parsed = _coco_like(source, file_key="file_name", integer_ids=False, split=_openviic_split(source.path))
    return ParsedFile(source.path, "uit-openviic", [parsed])


def _read_ktvic(source: _Source) -> ParsedFile:
    parsed = _coco_like(source, file_key="filename", integer_ids=False, segmented=True, split=_ktvic_split(source.path))
    return ParsedFile(source.path, "ktvic", [parsed])


def _coco_like(
    source: _Source,
    *,
    file_key: str,
    integer_ids: bool,
    segmented: bool = False,
    split: str | None = None,
) -> ParsedSplit:
    """``images`` + ``annotations`` as COCO lays them out; ``file_key`` names the file-name field."""
    path, data = source.path, source.json
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DatasetFormatError(f"{path}: not a COCO captions file (needs top-level 'images' and 'annotations' lists)")
    by_id: dict[int | str, ParsedImage] = {}
    id_rule = "an integer 'id'" if integer_ids else "an integer or text 'id'"
    for index, entry in enumerate(_as_list(data["images"], path, "images")):
        where = f"images[{index}]"
        image_id = _required(entry, "id", path, where)
        present = next((key for key in (file_key, "file_name") if key in entry), file_key)
        file_name = _required(entry, present, path, where)
        if not _valid_id(image_id, integer_ids) or not isinstance(file_name, str) or not file_name.strip():
            raise DatasetFormatError(f"{path}: {where} needs {id_rule} and a non-empty '{file_key}'")
        if image_id in by_id:
            raise DatasetFormatError(f"{path}: {where} repeats image id {image_id!r}")
        by_id[image_id] = ParsedImage(
            file_name=file_name.strip(),
            coco_id=image_id if isinstance(image_id, int) else None,
            width=_int_or_none(entry.get("width")),
            height=_int_or_none(entry.get("height")),
        )
    for index, entry in enumerate(_as_list(data["annotations"], path, "annotations")):
        where = f"annotations[{index}]"
        image_id = _required(entry, "image_id", path, where)
        caption = _required(entry, "caption", path, where)
        if not isinstance(image_id, int | str) or image_id not in by_id:
            raise DatasetFormatError(f"{path}: {where} has a caption for unknown image id {image_id!r}")
        text = _clean_caption(caption, path, where)
        words = _clean_segmented(entry.get("segment_caption"), path, where) if segmented else None
        by_id[image_id].add(text, _int_or_none(entry.get("id")), words)
    return ParsedSplit(source=path, images=list(by_id.values()), split=split)


def _valid_id(value: Any, integer_only: bool) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return not integer_only and isinstance(value, str) and bool(value.strip())


def _stem(path: Location) -> str:
    """The file name without its suffix, lower-cased, for a path or a URL alike."""
    return Path(name_of(path)).stem.lower()


def _openviic_split(path: Location) -> str | None:
    match = re.search(r"openviic[-_](train|dev|val|valid|test)\b", _stem(path))
    return SPLIT_NAMES[match.group(1)] if match else None


def _ktvic_split(path: Location) -> str | None:
    match = re.fullmatch(r"(train|test|val|dev)_data", _stem(path))
    return SPLIT_NAMES[match.group(1)] if match else None


# --------------------------------------------------------------------------- VieCap4H


def _read_viecap4h(source: _Source) -> ParsedFile:
    """``[{"id": "<file name>", "captions": "<text>"}]`` (or the COCO-converted variant)."""
    path, data = source.path, source.json
    split = "train" if "train" in _stem(path) else None
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        return ParsedFile(path, "viecap4h", [_coco_like(source, file_key="file_name", integer_ids=False, split=split)])
    if not isinstance(data, list):
        raise DatasetFormatError(f'{path}: not a VieCap4H captions file (needs a list of {{"id", "captions"}} objects)')
    by_name: dict[str, ParsedImage] = {}
    for index, entry in enumerate(data):
        where = f"entry {index}"
        if not isinstance(entry, dict):
            raise DatasetFormatError(f"{path}: {where} is not an object")
        name = _required(entry, "id", path, where)
        captions = _required(entry, "captions", path, where)
        if not isinstance(name, str) or not name.strip():
            raise DatasetFormatError(f"{path}: {where} needs a non-empty 'id' (the image file name)")
        texts = _caption_lines(captions, path, where)
        image = by_name.setdefault(name.strip(), ParsedImage(file_name=name.strip()))
        for text in texts:
            image.add(text)
    if not by_name:
        raise DatasetFormatError(f"{path}: no captions found")
    return ParsedFile(path, "viecap4h", [ParsedSplit(path, list(by_name.values()), split)])


def _caption_lines(value: Any, path: Location, where: str) -> list[str]:
    """A ``captions`` value: one text with one caption per line, or a list of texts."""
    if isinstance(value, str):
        texts: list[Any] = [line for line in value.splitlines() if line.strip()]
    elif isinstance(value, list):
        texts = value
    else:
        texts = []
    if not texts:
        raise DatasetFormatError(f"{path}: {where} has an empty caption")
    return [_clean_caption(text, path, where) for text in texts]


# --------------------------------------------------------------------------- captions.txt, CSV, JSON Lines


def read_captions_txt(path: Location) -> ParsedSplit:
    """Parse ``captions.txt``: one ``image_path<TAB>caption`` per line (a header line is allowed)."""
    return _read_captions_txt(_Source(path)).splits[0]


def _read_captions_txt(source: _Source) -> ParsedFile:
    path, text = source.path, source.text
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
        image.add(_clean_caption("\t".join(row[1:]), path, f"line {number}"))
    if not by_name:
        raise DatasetFormatError(f"{path}: no captions found")
    return ParsedFile(path, "captions-txt", [ParsedSplit(source=path, images=list(by_name.values()))])


def _read_csv(source: _Source) -> ParsedFile:
    """A header with a file column and ``caption``, optionally ``split``; one caption per row."""
    path = source.path
    reader = csv.reader(source.text.splitlines())
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DatasetFormatError(f"{path}: line 1: {exc}") from None
    columns = [name.strip().lower() for name in header or []]
    file_column = next((columns.index(c) for c in FILE_COLUMNS if c in columns), None)
    caption_column = next((columns.index(c) for c in CAPTION_COLUMNS if c in columns), None)
    if file_column is None or caption_column is None:
        shown = ", ".join(columns[:_SHOWN_FIELDS]) or "nothing"
        raise DatasetFormatError(
            f"{path}: line 1: the header needs a 'caption' column and a file column "
            f"({', '.join(FILE_COLUMNS[:3])}); got {shown}"
        )
    split_column = columns.index("split") if "split" in columns else None
    records: list[tuple[str, str, str | None, str]] = []
    number = 1
    try:
        for row in reader:
            number = reader.line_num
            if not row or not "".join(row).strip():
                continue
            where = f"line {number}"
            cells = row + [""] * (len(columns) - len(row))
            split = _split_value(cells[split_column], path, where) if split_column is not None else None
            records.append((cells[file_column], cells[caption_column], split, where))
    except csv.Error as exc:
        raise DatasetFormatError(f"{path}: line {reader.line_num}: {exc}") from None
    return _group(path, "csv", records, split_column is not None)


def _read_jsonl(source: _Source) -> ParsedFile:
    """One JSON object per line with a file field and ``caption`` (or ``text``), optionally ``split``."""
    path = source.path
    records: list[tuple[str, str, str | None, str]] = []
    has_split: bool | None = None
    for number, line in enumerate(source.text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(f"{path}: {where}: invalid JSON at column {exc.colno}: {exc.msg}") from None
        if not isinstance(entry, dict):
            raise DatasetFormatError(f"{path}: {where} is not a JSON object")
        file_key = next((k for k in FILE_COLUMNS if k in entry), None)
        caption_key = next((k for k in CAPTION_COLUMNS if k in entry), None)
        if file_key is None:
            raise DatasetFormatError(f"{path}: {where} is missing 'file' (or file_name, image)")
        if caption_key is None:
            raise DatasetFormatError(f"{path}: {where} is missing 'caption'")
        if has_split is None:
            has_split = "split" in entry
        elif has_split != ("split" in entry):
            other = "earlier lines have one" if has_split else "earlier lines have none"
            raise DatasetFormatError(f"{path}: {where} {'has no' if has_split else 'has a'} 'split' while {other}")
        split = _split_value(entry["split"], path, where) if has_split else None
        records.append((entry[file_key], entry[caption_key], split, where))
    return _group(path, "jsonl", records, bool(has_split))


def _group(
    path: Location, fmt: str, records: Iterable[tuple[Any, Any, str | None, str]], split_column: bool
) -> ParsedFile:
    """(file, caption, split, where) records → one ParsedSplit per split, images in first-seen order."""
    splits: dict[str | None, dict[str, ParsedImage]] = {}
    for name, caption, split, where in records:
        if not isinstance(name, str) or not name.strip():
            raise DatasetFormatError(f"{path}: {where} has an empty file name")
        images = splits.setdefault(split, {})
        image = images.setdefault(name.strip(), ParsedImage(file_name=name.strip()))
        image.add(_clean_caption(caption, path, where))
    if not splits:
        raise DatasetFormatError(f"{path}: no captions found")
    parsed = [ParsedSplit(path, list(images.values()), split) for split, images in splits.items()]
    return ParsedFile(path, fmt, parsed, split_column=split_column)


def _split_value(value: Any, path: Location, where: str) -> str:
    name = SPLIT_NAMES.get(value.strip().lower()) if isinstance(value, str) else None
    if name is None:
        raise DatasetFormatError(
            f"{path}: {where} has split {value!r}; use train, val or test (dev and validation mean val)"
        )
    return name


# --------------------------------------------------------------------------- registry and sniffer


REGISTRY: dict[str, DatasetFormat] = {
    f.name: f
    for f in (
        DatasetFormat("coco", "COCO captions JSON (UIT-ViIC)", _read_coco),
        DatasetFormat("uit-openviic", "UIT-OpenViIC uit-openviic-{train,dev,test}.json (COCO layout)", _read_openviic),
        DatasetFormat("ktvic", "KTVIC train_data.json / test_data.json (with segment_caption)", _read_ktvic),
        DatasetFormat("viecap4h", 'VLSP 2021 VieCap4H [{"id": file, "captions": text}]', _read_viecap4h),
        DatasetFormat("captions-txt", "image_path<TAB>caption lines", _read_captions_txt),
        DatasetFormat("csv", "CSV with file and caption columns (optional split)", _read_csv),
        DatasetFormat("jsonl", 'JSON Lines {"file", "caption"} (optional "split")', _read_jsonl),
    )
}
FORMATS = tuple(REGISTRY)


def get_format(name: str) -> DatasetFormat:
    """The registered format ``name``; UnknownNameError listing the valid ones otherwise."""
    if name not in REGISTRY:
        raise UnknownNameError("data set format", name, FORMATS)
    return REGISTRY[name]


def detect_format(path: Location) -> str:
    """The format of a captions file, told from its content (and, for COCO-style files, its name)."""
    return _detect(_Source(path))


def _detect(source: _Source) -> str:
    text = source.text
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        first_line = stripped.splitlines()[0]
        try:
            data = source.json
        except DatasetFormatError:
            if _is_json_object(first_line):
                return "jsonl"
            raise
        detected = _json_layout(source.path, data)
        if detected is not None:
            return detected
    else:
        first = next((line for line in text.splitlines() if line.strip()), "")
        if "\t" in first:
            return "captions-txt"
        if "," in first:
            return "csv"
    raise DatasetFormatError(
        f"{source.path}: cannot tell its format from the content; give --format, one of: {', '.join(FORMATS)}"
    )


def _json_layout(path: Location, data: Any) -> str | None:
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        images, annotations = data["images"], data["annotations"]
        first_image = images[0] if isinstance(images, list) and images and isinstance(images[0], dict) else {}
        if any(isinstance(a, dict) and "segment_caption" in a for a in _head(annotations)) or (
            "filename" in first_image and "file_name" not in first_image
        ):
            return "ktvic"
        if _openviic_split(path) is not None or "openviic" in _stem(path):
            return "uit-openviic"
        return "coco"
    if isinstance(data, dict) and any(k in data for k in FILE_COLUMNS) and any(k in data for k in CAPTION_COLUMNS):
        return "jsonl"  # a JSON Lines file of one line
    if isinstance(data, list) and data and isinstance(data[0], dict) and {"id", "captions"} <= set(data[0]):
        return "viecap4h"
    return None


def _head(value: Any, n: int = 20) -> list[Any]:
    return value[:n] if isinstance(value, list) else []


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def read_file(path: Location, fmt: str | None = None) -> ParsedFile:
    """Parse a captions file in ``fmt``, or in the format its content shows when ``fmt`` is None."""
    source = _Source(path)
    return get_format(fmt if fmt is not None else _detect(source)).read(source)


def read_split(path: Location, fmt: str) -> ParsedSplit:
    """Parse a file that holds one split (every format but a csv / jsonl with a split column)."""
    parsed = read_file(path, fmt)
    if len(parsed.splits) != 1:
        names = ", ".join(str(s.split) for s in parsed.splits)
        raise DatasetFormatError(f"{path}: holds several splits ({names}); import it as a whole file")
    return parsed.splits[0]


# --------------------------------------------------------------------------- field checks


def _as_list(value: Any, path: Location, key: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DatasetFormatError(f"{path}: '{key}' must be a list of objects")
    return value


def _required(entry: dict[str, Any], key: str, path: Location, where: str) -> Any:
    if key not in entry:
        raise DatasetFormatError(f"{path}: {where} is missing '{key}'")
    return entry[key]


def _clean_caption(caption: Any, path: Location, where: str) -> str:
    if not isinstance(caption, str) or not caption.strip():
        raise DatasetFormatError(f"{path}: {where} has an empty caption")
    return unicodedata.normalize("NFC", caption.strip())


def _clean_segmented(value: Any, path: Location, where: str) -> str | None:
    """KTVIC's ``segment_caption``: absent (pyvi will segment) or a non-empty text."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DatasetFormatError(f"{path}: {where} has an empty 'segment_caption'")
    return unicodedata.normalize("NFC", value.strip())


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
