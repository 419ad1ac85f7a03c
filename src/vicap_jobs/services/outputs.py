"""Writing an export (captions, sweep runs, scores) to a local file or an object storage URL.

One function for every command with ``--out``: a local path is written through a temporary file
renamed into place, a URL (``s3://bucket/key.json``, any fsspec URL) with one PUT, both by
``storage.objects.write_bytes``, so a reader never sees half a file. Every way a write can fail
(a local folder that does not exist, a bucket that does not, access denied, storage down) is a
one-line ``VicapError`` naming the location, inline credentials hidden.
"""

from __future__ import annotations

from pathlib import Path

from vicap_jobs.errors import InputError
from vicap_jobs.storage.locations import is_url, local_path
from vicap_jobs.storage.objects import StorageUnavailable, write_bytes
from vicap_jobs.storage.redact import redact


def write_output(location: str | Path, text: str) -> str:
    """Write ``text`` (UTF-8) to ``location``; returns the location as it may be shown (credentials hidden)."""
    shown = redact(location)
    if not is_url(location):
        target = local_path(location)
        if target.is_dir():
            raise InputError(f"--out {shown} is a folder; give a file name")
        if not target.parent.is_dir():
            raise InputError(f"--out {shown}: folder {target.parent} does not exist")
    try:
        write_bytes(location, text.encode("utf-8"))
    except StorageUnavailable as exc:
        raise StorageUnavailable(redact(str(exc))) from None
    except FileNotFoundError:
        raise InputError(f"cannot write {shown}: no such bucket or folder") from None
    except PermissionError:
        raise InputError(f"cannot write {shown}: access denied (check the AWS_* credentials or profile)") from None
    except OSError as exc:
        raise InputError(f"cannot write {shown}: {redact(exc.strerror or str(exc))}") from None
    return shown
