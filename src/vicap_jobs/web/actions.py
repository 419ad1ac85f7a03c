"""What the web view changes: submit a caption job for an allowed folder, cancel, retry.

Each is the CLI command's library calls (``services`` to change the store, ``worker.publish``
to put messages on the queue), so a job submitted here is the same job ``submit caption``
makes. Folders are checked against ``VICAP_WEB_ROOTS`` after every link is followed, and
files inside them that are links to elsewhere are left out (``create_caption_job(within=)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from vicap_jobs.db.session import session_scope
from vicap_jobs.errors import InputError
from vicap_jobs.jobs.lifecycle import cancel_job
from vicap_jobs.services.captioning import CaptionJobPlan, create_caption_job
from vicap_jobs.settings import get_settings
from vicap_jobs.worker.publish import publish_job, retry_and_publish, revoke


@dataclass(frozen=True)
class CaptionRequest:
    """A caption job as the API and the form ask for it."""

    folder: str
    model: str | None = None
    engine: str | None = None
    recursive: bool = False
    batch_size: int = 16
    gpu: int | None = None
    skip_known: bool = False


def allowed_folder(raw: str, roots: Sequence[Path]) -> Path:
    """The real folder ``raw`` names, when it lies inside one of ``roots``; InputError otherwise (one line)."""
    if not roots:
        raise InputError(
            "submitting folders from the web view is off: set VICAP_WEB_ROOTS to the folders it may caption"
        )
    text = raw.strip()
    if "\x00" in text:
        raise InputError("a folder path cannot contain a NUL character")
    if not text:
        raise InputError("give the folder as an absolute path")
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise InputError(f"give the folder as an absolute path under {_listing(roots)}; got {text!r}")
    try:
        real = path.resolve(strict=False)
    except (OSError, RuntimeError):
        raise InputError(f"cannot resolve {text!r} (a link loop?)") from None
    if not any(real == root or real.is_relative_to(root) for root in roots):
        raise InputError(f"{text!r} is outside the folders this server may caption ({_listing(roots)})")
    if not real.is_dir():
        raise InputError(f"no such folder: {text!r}")
    return real


def _listing(roots: Sequence[Path]) -> str:
    return ", ".join(str(root) for root in roots)


def submit_caption_job(
    *, db: Engine, request: CaptionRequest, roots: Sequence[Path], chunk_size: int | None = None
) -> CaptionJobPlan:
    """Check the folder, create the job (images under the roots only) and publish its chunks."""
    folder = allowed_folder(request.folder, roots)
    plan = create_caption_job(
        db=db,
        folder=folder,
        model=request.model or None,
        engine_name=request.engine or None,
        recursive=request.recursive,
        batch_size=request.batch_size,
        chunk_size=chunk_size or get_settings().chunk_size,
        gpu=request.gpu,
        within=roots,
        skip_known=request.skip_known,
    )
    publish_job(db=db, job_id=plan.job_id)
    return plan


def cancel(*, db: Engine, job_id: int) -> int:
    """Cancel the job and its children in the store, revoke its queued messages; returns how many were revoked."""
    with session_scope(db) as session:
        task_ids = cancel_job(session=session, job_id=job_id)
    revoke(task_ids)
    return len(task_ids)


def retry(*, db: Engine, job_id: int) -> int:
    """Queue the failed or missing images of a finished caption job again (a sweep: its failed runs); returns how many chunks or runs."""
    return len(retry_and_publish(db=db, job_id=job_id)[1])
