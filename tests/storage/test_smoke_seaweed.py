"""The SeaweedFS fixture itself: a bucket can be written, listed and read through vicap-jobs' storage API."""

from __future__ import annotations

from vicap_jobs.data.folders import is_image_name
from vicap_jobs.storage.objects import list_image_objects, read_object, write_bytes


def test_put_list_get(s3_bucket: str, vicap_env: object) -> None:
    write_bytes(f"{s3_bucket}/photos/a.jpg", b"one")
    write_bytes(f"{s3_bucket}/photos/sub/b.png", b"two")
    write_bytes(f"{s3_bucket}/photos/notes.txt", b"three")
    assert list_image_objects(f"{s3_bucket}/photos", recursive=True, is_image_name=is_image_name) == [
        f"{s3_bucket}/photos/a.jpg",
        f"{s3_bucket}/photos/sub/b.png",
    ]
    assert list_image_objects(f"{s3_bucket}/photos/", recursive=False, is_image_name=is_image_name) == [
        f"{s3_bucket}/photos/a.jpg"
    ]
    assert read_object(f"{s3_bucket}/photos/sub/b.png") == b"two"
