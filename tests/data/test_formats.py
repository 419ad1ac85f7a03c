"""Caption-file readers: the real UIT-ViIC JSON, Kaggle captions.txt, and malformed files named precisely."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from vicap_jobs.data.formats import FORMATS, ParsedSplit, read_captions_txt, read_coco_captions, read_split
from vicap_jobs.errors import DatasetFormatError, InputError, UnknownNameError

UITVIIC_COUNTS = {"train": (2695, 13481), "val": (924, 4620), "test": (231, 1155)}
# captions per image in the train split: almost all have 5
UITVIIC_TRAIN_PER_IMAGE = {5: 2687, 1: 3, 4: 1, 9: 1, 10: 3}
UITVIIC_TRAIN_ODD_IMAGES = {246976: 1, 300655: 4, 549915: 9, 487607: 10}

NFD_CAPTION = unicodedata.normalize("NFD", "Một cậu bé đang đá bóng trên sân cỏ.")


def write_coco(path: Path, images: list[dict[str, Any]] | Any, annotations: list[dict[str, Any]] | Any) -> Path:
    """A small COCO captions JSON (``images`` / ``annotations`` as given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations}, ensure_ascii=False), encoding="utf-8")
    return path


def small_coco(path: Path) -> Path:
    return write_coco(
        path,
        [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480}, {"id": 2, "file_name": "b.jpg"}],
        [
            {"id": 10, "image_id": 1, "caption": "Một cậu bé đang đá bóng."},
            {"id": 11, "image_id": 1, "caption": "  Cậu bé chơi bóng đá  "},
            {"id": 12, "image_id": 2, "caption": "Hai người chơi quần vợt"},
        ],
    )


# --------------------------------------------------------------------------- real UIT-ViIC


@pytest.fixture(scope="module")
def uitviic(uitviic_dir: Path) -> dict[str, ParsedSplit]:
    return {split: read_coco_captions(uitviic_dir / f"uitviic_captions_{split}2017.json") for split in UITVIIC_COUNTS}


@pytest.mark.parametrize("split", list(UITVIIC_COUNTS))
def test_uitviic_counts(uitviic: dict[str, ParsedSplit], split: str) -> None:
    parsed = uitviic[split]
    assert (len(parsed.images), parsed.n_captions) == UITVIIC_COUNTS[split]
    assert all(image.coco_id is not None and image.file_name.endswith(".jpg") for image in parsed.images)
    assert len({image.file_name for image in parsed.images}) == len(parsed.images)


def test_uitviic_captions_per_image(uitviic: dict[str, ParsedSplit]) -> None:
    train = uitviic["train"]
    assert Counter(len(image.captions) for image in train.images) == UITVIIC_TRAIN_PER_IMAGE
    per_id = {image.coco_id: len(image.captions) for image in train.images}
    assert {image_id: per_id[image_id] for image_id in UITVIIC_TRAIN_ODD_IMAGES} == UITVIIC_TRAIN_ODD_IMAGES
    for split in ("val", "test"):
        assert {len(image.captions) for image in uitviic[split].images} == {5}


def test_uitviic_keeps_the_file_order_sizes_and_annotation_ids(
    uitviic: dict[str, ParsedSplit], uitviic_dir: Path
) -> None:
    raw = json.loads((uitviic_dir / "uitviic_captions_test2017.json").read_text(encoding="utf-8"))
    parsed = uitviic["test"]
    assert [image.file_name for image in parsed.images] == [entry["file_name"] for entry in raw["images"]]
    first = raw["images"][0]
    assert (parsed.images[0].width, parsed.images[0].height) == (first["width"], first["height"])
    by_image = [a for a in raw["annotations"] if a["image_id"] == first["id"]]
    assert parsed.images[0].captions == [(a["caption"].strip(), a["id"]) for a in by_image]


# --------------------------------------------------------------------------- small files


def test_coco_reader_strips_captions_and_keeps_sizes(tmp_path: Path) -> None:
    parsed = read_coco_captions(small_coco(tmp_path / "captions.json"))
    assert parsed.source == tmp_path / "captions.json"
    assert [(i.file_name, i.coco_id, i.width, i.height) for i in parsed.images] == [
        ("a.jpg", 1, 640, 480),
        ("b.jpg", 2, None, None),
    ]
    assert parsed.images[0].captions == [("Một cậu bé đang đá bóng.", 10), ("Cậu bé chơi bóng đá", 11)]
    assert parsed.n_captions == 3


def test_an_image_without_captions_is_kept(tmp_path: Path) -> None:
    parsed = read_coco_captions(write_coco(tmp_path / "c.json", [{"id": 1, "file_name": "a.jpg"}], []))
    assert [(i.file_name, i.captions) for i in parsed.images] == [("a.jpg", [])]


def test_nfd_captions_become_nfc(tmp_path: Path) -> None:
    assert unicodedata.normalize("NFC", NFD_CAPTION) != NFD_CAPTION
    coco = read_coco_captions(
        write_coco(tmp_path / "c.json", [{"id": 1, "file_name": "a.jpg"}], [{"image_id": 1, "caption": NFD_CAPTION}])
    )
    txt_path = tmp_path / "captions.txt"
    txt_path.write_text(f"a.jpg\t{NFD_CAPTION}\n", encoding="utf-8")
    txt = read_captions_txt(txt_path)
    for parsed in (coco, txt):
        text = parsed.images[0].captions[0][0]
        assert text == "Một cậu bé đang đá bóng trên sân cỏ."
        assert unicodedata.is_normalized("NFC", text)


def test_captions_txt_kaggle_layout(tmp_path: Path) -> None:
    path = tmp_path / "train" / "captions.txt"
    path.parent.mkdir()
    path.write_text(
        "\ufeffimage_path\tcaption\n"
        "images/001.jpg\tMột cậu bé đang đá bóng.\n"
        "\n"
        "images/001.jpg\tCậu bé chơi bóng trên sân cỏ\n"
        "images/002.jpg\tHai người đang chơi quần vợt\n",
        encoding="utf-8",
    )
    parsed = read_split(path, "captions-txt")
    assert [(i.file_name, [c for c, _ in i.captions]) for i in parsed.images] == [
        ("images/001.jpg", ["Một cậu bé đang đá bóng.", "Cậu bé chơi bóng trên sân cỏ"]),
        ("images/002.jpg", ["Hai người đang chơi quần vợt"]),
    ]
    assert all(i.coco_id is None for i in parsed.images)


def test_unknown_format_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="coco, captions-txt|captions-txt, coco"):
        read_split(small_coco(tmp_path / "c.json"), "flickr")
    assert set(FORMATS) == {"coco", "uit-openviic", "ktvic", "viecap4h", "captions-txt", "csv", "jsonl"}


# --------------------------------------------------------------------------- malformed files


MALFORMED_COCO = [
    pytest.param("{ not json", "invalid JSON at line 1", id="bad-json"),
    pytest.param(json.dumps({"images": []}), "needs top-level 'images' and 'annotations'", id="no-annotations-key"),
    pytest.param(json.dumps([1, 2]), "not a COCO captions file", id="not-an-object"),
    pytest.param(
        json.dumps({"images": {}, "annotations": []}), "'images' must be a list of objects", id="images-not-list"
    ),
    pytest.param(
        json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2}], "annotations": []}),
        "images[1] is missing 'file_name'",
        id="image-missing-file-name",
    ),
    pytest.param(
        json.dumps({"images": [{"file_name": "a.jpg"}], "annotations": []}),
        "images[0] is missing 'id'",
        id="image-missing-id",
    ),
    pytest.param(
        json.dumps({"images": [{"id": "1", "file_name": "a.jpg"}], "annotations": []}),
        "images[0] needs an integer 'id'",
        id="image-id-not-int",
    ),
    pytest.param(
        json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}], "annotations": []}),
        "images[1] repeats image id 1",
        id="repeated-image-id",
    ),
    pytest.param(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"image_id": 1, "caption": "ok"}, {"image_id": 1}],
            }
        ),
        "annotations[1] is missing 'caption'",
        id="annotation-missing-caption",
    ),
    pytest.param(
        json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"caption": "ok"}]}),
        "annotations[0] is missing 'image_id'",
        id="annotation-missing-image-id",
    ),
    pytest.param(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 7, "caption": "y"}],
            }
        ),
        "annotations[1] has a caption for unknown image id 7",
        id="unknown-image-id",
    ),
    pytest.param(
        json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": " \t "}]}),
        "annotations[0] has an empty caption",
        id="blank-caption",
    ),
    pytest.param(
        json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": None}]}),
        "annotations[0] has an empty caption",
        id="null-caption",
    ),
]


@pytest.mark.parametrize(("content", "message"), MALFORMED_COCO)
def test_malformed_coco_names_file_and_entry(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad captions.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetFormatError) as caught:
        read_coco_captions(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert isinstance(caught.value, InputError)


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="file not found"):
        read_coco_captions(tmp_path / "nope.json")
    with pytest.raises(DatasetFormatError, match="file not found"):
        read_captions_txt(tmp_path / "nope.txt")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("a.jpg\tMột cậu bé".encode("utf-16"))
    with pytest.raises(DatasetFormatError, match="not UTF-8"):
        read_captions_txt(latin)
    with pytest.raises(DatasetFormatError, match="not UTF-8"):
        read_coco_captions(latin)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("a.jpg\tMột cậu bé\nb.jpg Hai người\n", "line 2 needs 'image_path<TAB>caption'", id="no-tab"),
        pytest.param("a.jpg\tMột cậu bé\n\tHai người\n", "line 2 has an empty image path", id="no-path"),
        pytest.param("a.jpg\tMột cậu bé\nb.jpg\t   \n", "line 2 has an empty caption", id="empty-caption"),
        pytest.param("image_path\tcaption\n\n", "no captions found", id="header-only"),
    ],
)
def test_malformed_captions_txt_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "val" / "captions.txt"
    path.parent.mkdir()
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetFormatError) as caught:
        read_captions_txt(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
