"""Reading an uploaded file without holding more than the byte limit (plus one block) in memory."""

from __future__ import annotations

from pathlib import PurePath

from fastapi import UploadFile

from vicap_jobs.errors import ImageError, UploadTooLargeError
from vicap_jobs.services.uploads import too_large_message

BLOCK = 1 << 16


async def read_upload(file: UploadFile, max_bytes: int) -> tuple[bytes, str]:
    """The upload's bytes and its name's suffix (e.g. ".jpg"); UploadTooLargeError past ``max_bytes``."""
    if file is None or not file.filename:
        raise ImageError("choose a photo to upload")
    parts: list[bytes] = []
    size = 0
    while block := await file.read(BLOCK):
        size += len(block)
        if size > max_bytes:
            raise UploadTooLargeError(too_large_message(size, max_bytes))
        parts.append(block)
    return b"".join(parts), PurePath(file.filename).suffix.lower()
