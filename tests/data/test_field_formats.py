"""The field's caption layouts (UIT-OpenViIC, KTVIC, VieCap4H, CSV, JSON Lines): parsing, detection, one-line errors.

The writers here build each layout the way the data sets publish it; the store
tests (``tests/services/test_dataset_formats.py``) import the same files.
"""

from __future__ import annotations

import csv
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vicap_jobs.data import text as text_module
from vicap_jobs.data.formats import FORMATS, ParsedFile, detect_format, read_file, read_split
from vicap_jobs.data.text import SegmentedCaption, segmented_words, tokenize
from vicap_jobs.errors import DatasetFormatError, InputError, UnknownNameError
from vicap_jobs.metrics.scores import score_captions

# file name -> captions; the same three photos in every layout
CAPTIONS: dict[str, list[str]] = {
    "a.png": ["Khung cảnh một khu chợ đông người.", "Nhiều người đang mua bán ở chợ."],
    "b.png": ["Một cậu bé đang đá bóng trên sân cỏ.", "Cậu bé chơi bóng đá."],
    "c.png": ["Hai người đang chơi quần vợt.", "Hai người chơi quần vợt, trời nắng."],
}
# KTVIC's word-segmented form of each caption (as its segment_caption field gives it)
SEGMENTED: dict[str, str] = {
    "Khung cảnh một khu chợ đông người.": "khung_cảnh một khu chợ đông người .",
    "Nhiều người đang mua bán ở chợ.": "nhiều người đang mua_bán ở chợ .",
    "Một cậu bé đang đá bóng trên sân cỏ.": "một cậu_bé đang đá_bóng trên sân_cỏ .",
    "Cậu bé chơi bóng đá.": "cậu_bé chơi bóng_đá .",
    "Hai người đang chơi quần vợt.": "hai người đang chơi quần_vợt .",
    "Hai người chơi quần vợt, trời nắng.": "hai người chơi quần_vợt , trời nắng .",
}


# --------------------------------------------------------------------------- writers (also used by the store tests)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def coco_layout(captions: dict[str, list[str]], *, first_id: int = 1, file_key: str = "file_name") -> dict[str, Any]:
    """``images`` / ``annotations`` for ``captions`` (image ids from ``first_id``, annotation ids ×10)."""
    images, annotations = [], []
    for i, (name, texts) in enumerate(captions.items()):
        image_id = first_id + i
        images.append({"id": image_id, file_key: name, "width": 24, "height": 24})
        annotations += [{"id": 10 * image_id + k, "image_id": image_id, "caption": t} for k, t in enumerate(texts)]
    return {"images": images, "annotations": annotations}


def write_openviic(folder: Path, split: str = "dev", captions: dict[str, list[str]] = CAPTIONS) -> Path:
    """``uit-openviic-{split}.json``: COCO layout with licenses/info keys as COCO files carry."""
    data = {"info": {"description": "UIT-OpenViIC"}, "licenses": [], **coco_layout(captions, first_id=500)}
    return write_json(folder / f"uit-openviic-{split}.json", data)


def write_ktvic(folder: Path, split: str = "train", captions: dict[str, list[str]] = CAPTIONS) -> Path:
    """``{split}_data.json``: images (id, filename) and annotations with ``segment_caption``."""
    data = coco_layout(captions, first_id=0, file_key="filename")
    for annotation in data["annotations"]:
        annotation["segment_caption"] = SEGMENTED[annotation["caption"]]
    return write_json(folder / f"{split}_data.json", data)


def write_viecap4h(folder: Path, captions: dict[str, list[str]] = CAPTIONS) -> Path:
    """``train_captions.json``: one ``{"id": file, "captions": text}`` per caption; a file name repeats."""
    entries = [{"id": name, "captions": text} for name, texts in captions.items() for text in texts]
    return write_json(folder / "train_captions.json", entries)


def write_captions_txt(folder: Path, captions: dict[str, list[str]] = CAPTIONS) -> Path:
    path = folder / "captions.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["image\tcaption", *(f"{name}\t{text}" for name, texts in captions.items() for text in texts)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_csv(
    folder: Path,
    captions: dict[str, list[str]] = CAPTIONS,
    *,
    splits: dict[str, str] | None = None,
    file_column: str = "file",
    name: str = "captions.csv",
) -> Path:
    """``file,caption[,split]`` rows (``splits`` maps a file name to its split)."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([file_column, "caption", *(["split"] if splits else [])])
        for file_name, texts in captions.items():
            for text in texts:
                writer.writerow([file_name, text, *([splits[file_name]] if splits else [])])
    return path


def write_jsonl(
    folder: Path,
    captions: dict[str, list[str]] = CAPTIONS,
    *,
    splits: dict[str, str] | None = None,
    name: str = "captions.jsonl",
) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"file": file_name, "caption": text, **({"split": splits[file_name]} if splits else {})}
        for file_name, texts in captions.items()
        for text in texts
    ]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


#: layout name -> (writer, the split its file name implies)
LAYOUTS: dict[str, tuple[Callable[[Path], Path], str | None]] = {
    "uit-openviic": (write_openviic, "val"),
    "ktvic": (write_ktvic, "train"),
    "viecap4h": (write_viecap4h, "train"),
    "captions-txt": (write_captions_txt, None),
    "csv": (write_csv, None),
    "jsonl": (write_jsonl, None),
}


def as_captions(parsed: ParsedFile) -> dict[str | None, dict[str, list[str]]]:
    """split -> file name -> caption texts, as parsed."""
    return {s.split: {i.file_name: [t for t, _ in i.captions] for i in s.images} for s in parsed.splits}


# --------------------------------------------------------------------------- every layout


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_is_detected_and_parsed_to_the_same_captions(tmp_path: Path, layout: str) -> None:
    """Without a format, the content names the layout, and every layout yields the same images and captions."""
    write, implied_split = LAYOUTS[layout]
    path = write(tmp_path)
    assert detect_format(path) == layout
    parsed = read_file(path)
    assert parsed.format == layout
    assert as_captions(parsed) == {implied_split: CAPTIONS}


def test_the_registry_lists_every_layout_once() -> None:
    """coco and captions-txt stay; the field's layouts are added beside them."""
    assert FORMATS == ("coco", "uit-openviic", "ktvic", "viecap4h", "captions-txt", "csv", "jsonl")


def test_a_coco_file_not_named_like_openviic_stays_coco(tmp_path: Path) -> None:
    """The same COCO layout under another name is plain coco, which names no split."""
    path = write_json(tmp_path / "captions_val2017.json", coco_layout(CAPTIONS))
    parsed = read_file(path)
    assert (parsed.format, parsed.splits[0].split, parsed.splits[0].images[0].coco_id) == ("coco", None, 1)


@pytest.mark.parametrize(
    ("file_name", "split"),
    [
        ("uit-openviic-train.json", "train"),
        ("uit-openviic-dev.json", "val"),
        ("uit-openviic-test.json", "test"),
        ("openviic_dev.json", "val"),
        ("uit-openviic-extra.json", None),
    ],
)
def test_openviic_split_comes_from_the_file_name(tmp_path: Path, file_name: str, split: str | None) -> None:
    """dev means val; a name without a split leaves it to --split."""
    path = write_json(tmp_path / file_name, coco_layout(CAPTIONS))
    parsed = read_file(path)
    assert (parsed.format, parsed.splits[0].split) == ("uit-openviic", split)


def test_openviic_keeps_coco_ids_and_annotation_ids(tmp_path: Path) -> None:
    """COCO ids and annotation ids survive, so coco-json exports can carry them."""
    image = read_split(write_openviic(tmp_path, "test"), "uit-openviic").images[0]
    assert (image.coco_id, image.captions[1][1], image.width) == (500, 5001, 24)


def test_ktvic_keeps_the_segmented_caption_beside_each_caption(tmp_path: Path) -> None:
    """segment_caption is kept per caption, in order; test_data.json names the test split."""
    parsed = read_split(write_ktvic(tmp_path, "test"), "ktvic")
    assert parsed.split == "test"
    first = parsed.images[0]
    assert (first.file_name, first.coco_id) == ("a.png", 0)
    assert [first.segmented_at(i) for i in range(2)] == [SEGMENTED[t] for t in CAPTIONS["a.png"]]


def test_ktvic_without_segment_caption_leaves_segmentation_to_pyvi(tmp_path: Path) -> None:
    """An annotation without segment_caption parses with no segmented form (None)."""
    data = coco_layout({"a.png": ["Khung cảnh chợ"]}, file_key="filename")
    image = read_split(write_json(tmp_path / "train_data.json", data), "ktvic").images[0]
    assert (image.captions[0][0], image.segmented_at(0)) == ("Khung cảnh chợ", None)


def test_viecap4h_splits_multi_line_captions_and_reads_the_coco_variant(tmp_path: Path) -> None:
    """One entry may hold several captions, one per line; the COCO-converted file is read too."""
    listed = write_json(
        tmp_path / "train_captions.json",
        [{"id": "EA920B1A56.jpg", "captions": "Bác sĩ đang tiêm.\nNgười dân được tiêm.\n"}],
    )
    assert as_captions(read_file(listed)) == {
        "train": {"EA920B1A56.jpg": ["Bác sĩ đang tiêm.", "Người dân được tiêm."]}
    }
    converted = write_json(tmp_path / "viecap4h-public-train.json", coco_layout({"x.jpg": ["Bác sĩ khám bệnh."]}))
    parsed = read_file(converted, "viecap4h")
    assert (parsed.format, as_captions(parsed)) == ("viecap4h", {"train": {"x.jpg": ["Bác sĩ khám bệnh."]}})


def test_viecap4h_submission_without_train_in_its_name_needs_a_split(tmp_path: Path) -> None:
    """sample_submission.json has the same layout but names no split."""
    path = write_json(tmp_path / "sample_submission.json", [{"id": "a.jpg", "captions": "Bác sĩ"}])
    assert read_file(path).splits[0].split is None


@pytest.mark.parametrize("write", [write_csv, write_jsonl], ids=["csv", "jsonl"])
def test_a_split_column_makes_one_part_per_split(tmp_path: Path, write: Callable[..., Path]) -> None:
    """Rows group by their split (validation → val), images keep their first-seen order."""
    path = write(tmp_path, splits={"a.png": "train", "b.png": "validation", "c.png": "train"})
    parsed = read_file(path)
    assert parsed.split_column
    assert as_captions(parsed) == {
        "train": {"a.png": CAPTIONS["a.png"], "c.png": CAPTIONS["c.png"]},
        "val": {"b.png": CAPTIONS["b.png"]},
    }
    with pytest.raises(DatasetFormatError, match="holds several splits"):
        read_split(path, parsed.format)


@pytest.mark.parametrize("column", ["file", "image", "file_name"])
def test_csv_file_column_aliases_and_quoted_commas(tmp_path: Path, column: str) -> None:
    """file, image and file_name all name the photo; a quoted caption keeps its comma."""
    path = write_csv(tmp_path, {"d.png": ["Hai người chơi quần vợt, trời nắng."]}, file_column=column)
    assert as_captions(read_file(path)) == {None: {"d.png": ["Hai người chơi quần vợt, trời nắng."]}}


def test_jsonl_reads_a_hugging_face_export_back(tmp_path: Path) -> None:
    """{"image", "file_name", "text"} lines (the hf-jsonl export) import as jsonl, by file_name."""
    path = tmp_path / "hf.jsonl"
    path.write_text(json.dumps({"image": "/abs/a.png", "file_name": "a.png", "text": "Một con mèo"}) + "\n")
    assert as_captions(read_file(path)) == {None: {"a.png": ["Một con mèo"]}}


def test_a_forced_format_wins_over_detection(tmp_path: Path) -> None:
    """--format coco on an OpenViIC-named file reads it as coco (no split from the name)."""
    parsed = read_file(write_openviic(tmp_path, "dev"), "coco")
    assert (parsed.format, parsed.splits[0].split) == ("coco", None)
    with pytest.raises(UnknownNameError, match="unknown data set format 'flickr'; choose one of: .*ktvic"):
        read_file(write_openviic(tmp_path, "dev"), "flickr")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(json.dumps({"data": []}), id="json-object"),
        pytest.param(json.dumps([1, 2, 3]), id="json-list"),
        pytest.param("just some words\nand more\n", id="plain-text"),
    ],
)
def test_unknown_content_names_every_format_in_one_line(tmp_path: Path, content: str) -> None:
    """Content no layout claims is one line that lists the formats to choose from."""
    path = tmp_path / "mystery.dat"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetFormatError) as caught:
        detect_format(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: cannot tell its format")
    assert all(name in message for name in FORMATS)


# --------------------------------------------------------------------------- malformed files

KTVIC_IMAGES = [{"id": 0, "filename": "a.png"}, {"id": 1, "filename": "b.png"}]


def _ktvic(annotations: list[dict[str, Any]], images: list[dict[str, Any]] = KTVIC_IMAGES) -> str:
    return json.dumps({"images": images, "annotations": annotations}, ensure_ascii=False)


def _jsonl_with_bad_line(bad: str, at: int = 40) -> str:
    good = [json.dumps({"file": f"{i}.png", "caption": f"ảnh số {i}"}, ensure_ascii=False) for i in range(1, 60)]
    good[at - 1] = bad
    return "\n".join(good) + "\n"


MALFORMED = [
    pytest.param(
        "train_data.json",
        "ktvic",
        _ktvic([{"id": 0, "image_id": 0, "caption": "x", "segment_caption": "x"}, {"id": 1, "image_id": 1}]),
        "annotations[1] is missing 'caption'",
        id="ktvic-missing-caption",
    ),
    pytest.param(
        "train_data.json",
        "ktvic",
        _ktvic([{"id": 0, "image_id": 0, "caption": "x"}], images=[{"id": 0, "filename": "a.png"}, {"id": 1}]),
        "images[1] is missing 'filename'",
        id="ktvic-missing-filename",
    ),
    pytest.param(
        "train_data.json",
        "ktvic",
        _ktvic([{"id": 0, "image_id": 0, "caption": "x", "segment_caption": "  "}]),
        "annotations[0] has an empty 'segment_caption'",
        id="ktvic-empty-segmented",
    ),
    pytest.param(
        "train_data.json",
        "ktvic",
        _ktvic([{"id": 0, "image_id": 0, "caption": 7, "segment_caption": "x"}]),
        "annotations[0] has an empty caption",
        id="ktvic-caption-not-text",
    ),
    pytest.param(
        "train_data.json",
        "ktvic",
        _ktvic([{"id": 0, "image_id": 5, "caption": "x", "segment_caption": "x"}]),
        "annotations[0] has a caption for unknown image id 5",
        id="ktvic-unknown-image",
    ),
    pytest.param(
        "test_data.json", "ktvic", '{"images": [', "invalid JSON at line 1 column 13", id="ktvic-truncated-json"
    ),
    pytest.param(
        "uit-openviic-dev.json",
        "uit-openviic",
        json.dumps({"images": [{"id": [1], "file_name": "a.png"}], "annotations": []}),
        "images[0] needs an integer or text 'id' and a non-empty 'file_name'",
        id="openviic-id-wrong-type",
    ),
    pytest.param(
        "train_captions.json",
        "viecap4h",
        json.dumps([{"id": "a.jpg", "captions": "x"}, {"id": "b.jpg"}]),
        "entry 1 is missing 'captions'",
        id="viecap4h-missing-captions",
    ),
    pytest.param(
        "train_captions.json",
        "viecap4h",
        json.dumps([{"id": 3, "captions": "x"}]),
        "entry 0 needs a non-empty 'id' (the image file name)",
        id="viecap4h-id-not-a-name",
    ),
    pytest.param(
        "train_captions.json",
        "viecap4h",
        json.dumps([{"id": "a.jpg", "captions": "x"}, {"id": "b.jpg", "captions": " \n "}]),
        "entry 1 has an empty caption",
        id="viecap4h-empty-caption",
    ),
    pytest.param(
        "captions.csv", "csv", "name,text\na.png,x\n", "line 1: the header needs a 'caption' column", id="csv-header"
    ),
    pytest.param(
        "captions.csv",
        "csv",
        "file,caption\na.png,Một con mèo\nb.png,\n",
        "line 3 has an empty caption",
        id="csv-empty",
    ),
    pytest.param(
        "captions.csv",
        "csv",
        "file,caption,split\na.png,x,train\nb.png,y,holdout\n",
        "line 3 has split 'holdout'; use train, val or test",
        id="csv-unknown-split",
    ),
    pytest.param(
        "captions.csv", "csv", "file,caption\n,Một con mèo\n", "line 2 has an empty file name", id="csv-no-file"
    ),
    pytest.param(
        "captions.jsonl",
        "jsonl",
        _jsonl_with_bad_line('{"file": "40.png", "caption": "ảnh'),
        "line 40: invalid JSON at column",
        id="jsonl-bad-line-deep",
    ),
    pytest.param(
        "captions.jsonl", "jsonl", _jsonl_with_bad_line('["40.png", "ảnh"]'), "line 40 is not a JSON object", id="list"
    ),
    pytest.param(
        "captions.jsonl",
        "jsonl",
        _jsonl_with_bad_line('{"file": "40.png"}', at=33),
        "line 33 is missing 'caption'",
        id="jsonl-missing-caption",
    ),
    pytest.param(
        "captions.jsonl",
        "jsonl",
        _jsonl_with_bad_line('{"file": "40.png", "caption": "x", "split": "train"}', at=12),
        "line 12 has a 'split' while earlier lines have none",
        id="jsonl-split-on-some-lines",
    ),
]


@pytest.mark.parametrize(("file_name", "fmt", "content", "message"), MALFORMED)
@pytest.mark.parametrize("forced", [True, False], ids=["forced", "detected"])
def test_malformed_files_give_one_line_naming_file_and_record(
    tmp_path: Path, file_name: str, fmt: str, content: str, message: str, forced: bool
) -> None:
    """Forced or detected, a bad record is one DatasetFormatError line: the file, the record, what is wrong."""
    path = tmp_path / file_name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetFormatError) as caught:
        read_file(path, fmt if forced else None)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: ")
    assert message in text


def test_a_missing_file_is_a_format_error(tmp_path: Path) -> None:
    """A path that is not there names itself, detected or forced."""
    with pytest.raises(DatasetFormatError, match="nowhere.json: file not found"):
        read_file(tmp_path / "nowhere.json")
    assert issubclass(DatasetFormatError, InputError)


# --------------------------------------------------------------------------- segmented captions and tokenization


@pytest.fixture()
def pyvi_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace pyvi with a spy that records its inputs and leaves syllables unjoined."""
    calls: list[str] = []

    def spy(text: str) -> str:
        calls.append(text)
        return text

    monkeypatch.setattr(text_module, "_pyvi_tokenize", lambda: spy)
    return calls


def test_segmented_words_keep_underscores_and_normalize_each_syllable() -> None:
    """Punctuation tokens vanish, case folds, and a split syllable stays inside its word."""
    assert segmented_words("Khung_Cảnh một khu_chợ , xe-máy_cũ .") == ["khung_cảnh", "một", "khu_chợ", "xe_máy_cũ"]
    assert segmented_words(" . , ") == []


def test_a_segmented_caption_tokenizes_words_without_pyvi(pyvi_calls: list[str]) -> None:
    """word tokens come from the data set's segmentation; syllable tokens from the text, as for any caption."""
    caption = SegmentedCaption("Cậu bé chơi bóng đá.", "cậu_bé chơi bóng_đá .")
    assert tokenize(caption, "word") == ["cậu_bé", "chơi", "bóng_đá"]
    assert tokenize(caption, "syllable") == ["cậu", "bé", "chơi", "bóng", "đá"]
    assert pyvi_calls == []
    assert tokenize("Cậu bé chơi bóng đá.", "word") == ["cậu", "bé", "chơi", "bóng", "đá"]
    assert pyvi_calls == ["cậu bé chơi bóng đá"]


def test_a_segmented_caption_is_still_its_text() -> None:
    """It equals, prints and pickles as the caption given, keeping its segmentation through pickle."""
    caption = SegmentedCaption("Cậu bé.", "cậu_bé .")
    assert caption == "Cậu bé." and str(caption) == "Cậu bé." and json.dumps([caption]) == json.dumps(["Cậu bé."])
    restored = pickle.loads(pickle.dumps(caption))
    assert (restored, restored.segmented) == ("Cậu bé.", "cậu_bé .")


def test_scoring_keeps_a_segmented_reference_apart_from_equal_plain_text(pyvi_calls: list[str]) -> None:
    """A prediction equal to a segmented reference goes through pyvi; the reference keeps its own words."""
    reference = SegmentedCaption("Khung cảnh chợ", "khung_cảnh chợ")
    scores = score_captions({1: "Khung cảnh chợ"}, {1: [reference]}, tokenization="word")
    assert pyvi_calls == ["khung cảnh chợ"]  # the prediction only
    # candidate [khung, cảnh, chợ] against reference [khung_cảnh, chợ]: one unigram of three matches
    assert scores.bleu_1 == pytest.approx(1 / 3)
