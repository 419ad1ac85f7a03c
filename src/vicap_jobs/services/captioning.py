"""Planning a bulk caption job: walk a folder, register its images, split them into chunks.

One identity per image. A file that is an image of an imported data set (the same content at the
same path, or the same content and name in a copy of the data set's folder) is captioned as that
data set image row, so its captions carry the data set's COCO id (``captions export --format
coco-json`` goes straight into ``COCO.loadRes``); every other file gets an ad-hoc row
(dataset_id NULL) keyed by its path. See :func:`register_folder_images`.

Incremental captioning (``skip_known``, ``submit caption --skip-known``): a file whose content
(sha256) already has an ok caption from the same model, the same engine and the same decoding
options is not sent to a worker; that caption is copied into the new job as an ok row with
``reused_from_id`` (copied, not linked, so every job keeps exactly one row per image and its
exports, gallery and counters stay per job). See :func:`reusable_captions` for what "the same"
means.

Object storage (``folder`` a URL such as ``s3://bucket/photos/``): the prefix is listed once
(``storage.objects.list_image_objects``, the same suffixes and hidden-name rule as a local walk)
and each object gets an ad-hoc row keyed by its URL. Nothing is downloaded at submit: an object's
content hash and size are unknown until a worker reads it, so ``skip_known`` is refused for
URLs, and an object is linked to a data set image only when the data set was imported from the
same URLs (same path). Reading 100,000 objects here only to hash them would double the traffic
of the job itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Engine, case, or_, select
from sqlalchemy.orm import Session

from vicap_jobs.data.folders import WalkReport, is_image_name, iter_image_files
from vicap_jobs.data.images import image_size, sha256_file
from vicap_jobs.db.base import utcnow
from vicap_jobs.db.bulk import insert_rows
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.status import CaptionStatus
from vicap_jobs.db.tables import Caption, Image, Job
from vicap_jobs.errors import InputError
from vicap_jobs.jobs.chunks import create_chunks, finish_if_drained
from vicap_jobs.jobs.lifecycle import create_job, report_progress
from vicap_jobs.jobs.params import CaptionParams
from vicap_jobs.jobs.queues import device_label
from vicap_jobs.jobs.writer import ReusedCaption, copy_captions
from vicap_jobs.models.registry import ONNX_EXPORT_ENGINES
from vicap_jobs.services.models import ModelRef, engine_for_job, resolve_model
from vicap_jobs.storage.locations import as_location, is_url, name_of
from vicap_jobs.storage.objects import list_image_objects

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class CaptionJobPlan:
    """A caption job as created: its chunks (to publish) and what the folder held.

    ``n_images`` counts every image of the job; ``n_reused`` of them (``skip_known``) already have
    their copied caption row and are in no chunk; ``n_linked`` are images of an imported data set.
    A job whose every image was reused has no chunk and has already succeeded.
    """

    job_id: int
    chunk_ids: list[int]
    n_images: int
    skipped_dirs: int = 0
    skipped_outside: int = 0
    n_reused: int = 0
    n_linked: int = 0


#: Files per upsert statement (``vicap_jobs.db.bulk``: one array per column on PostgreSQL,
#: multi-row VALUES pages on SQLite).
PAGE = 5000


def register_folder_images(*, db: Engine, paths: list[Path]) -> list[int]:
    """Image ids for the files, in the order of ``paths``: a data set's image row where the file is one, else ad-hoc.

    A file is a data set's image when it has that image row's content (sha256) and either its path
    (the resolved path the import recorded) or, failing that, its file name with the row's file
    still at the row's path (a copy of the data set's folder elsewhere: the worker reads the
    data set's file, which has the same bytes). The row at the same path wins, then the smallest
    id (the first import); a data set row is given to one file of the folder only. The content
    must match: a file changed since the import is not the image its references describe.
    Files with an unreadable or missing content, or no such row, get ad-hoc rows (dataset_id NULL).

    An ad-hoc path seen before keeps its row; its hash and size are refreshed (the file may have
    changed). Unreadable files are registered anyway: their caption row will say why they failed.

    One ``INSERT ... ON CONFLICT (path) WHERE dataset_id IS NULL DO UPDATE ... RETURNING id`` per
    page of files: no lookup first (a 5,000-path ``IN`` list on a freshly filled, not yet analysed
    PostgreSQL table was planned as a filter and took ~17 s a page), and a submit racing with
    another over the same folder gets the same rows. Row by row (a flush and a query per file) took
    142 s for 100,000 small files on PostgreSQL; this takes 9-15 s on 2 busy cores (bench/scale.py),
    the largest part reading each file's image header (3.7 s on a quiet machine) and SHA-256 (1.5 s).
    Hashing is not what costs, so it stays here rather than moving to the workers. The data set
    lookup is one ``sha256 IN (...)`` query per 1,000 distinct contents, on ``ix_images_sha256``:
    1-2.5 s for 100,000 files on PostgreSQL, none when no data set is imported.
    """
    return _register(db, paths).ids


@dataclass(frozen=True)
class _Registered:
    ids: list[int]  # in the order of the paths
    sha256: dict[int, str | None]  # image id → the content its file has now
    n_linked: int  # distinct data set image rows among them


def _register(db: Engine, paths: Sequence[Path | str], within: Sequence[Path] | None = None) -> _Registered:
    """:func:`register_folder_images`, with the content of each image and how many are data set images.

    ``within``: a copy is linked only to a data set file inside these folders (the worker reads that file).
    ``paths`` may be object storage URLs: see the module docstring.
    """
    facts = {str(path): _object_facts(str(path)) if is_url(path) else _facts(Path(path)) for path in paths}
    ids: dict[str, int] = {}
    with session_scope(db) as session:
        linked = _dataset_images(session, facts, within)
        ids.update(linked)
        now = utcnow()
        rows = [{**row, "created_at": now} for path, row in facts.items() if path not in ids]
        for start in range(0, len(rows), PAGE):
            ids.update(_upsert_images(session, rows[start : start + PAGE]))
    return _Registered(
        ids=[ids[str(path)] for path in paths],
        sha256={ids[path]: row["sha256"] for path, row in facts.items()},
        n_linked=len(set(linked.values())),
    )


#: Distinct contents per ``sha256 IN (...)`` lookup of data set images and of reusable captions.
LOOKUP_PAGE = 1000


@dataclass(frozen=True)
class _DatasetRow:
    id: int
    path: str
    name: str  # the last part of its file_name


def _dataset_images(
    session: Session, facts: dict[str, dict[str, Any]], within: Sequence[Path] | None
) -> dict[str, int]:
    """path → id of the data set image row each file is (see :func:`register_folder_images`); others absent."""
    if session.scalar(select(Image.id).where(Image.dataset_id.is_not(None)).limit(1)) is None:
        return {}  # no data set imported: nothing to look up
    linked = _dataset_objects(session, [path for path in facts if is_url(path)])
    digests = list(dict.fromkeys(row["sha256"] for row in facts.values() if row["sha256"]))
    if not digests:
        return linked
    rows: dict[str, list[_DatasetRow]] = {}  # sha256 → data set rows with that content, smallest id first
    for start in range(0, len(digests), LOOKUP_PAGE):
        query = (
            select(Image.sha256, Image.id, Image.path, Image.file_name)
            .where(Image.sha256.in_(digests[start : start + LOOKUP_PAGE]), Image.dataset_id.is_not(None))
            .order_by(Image.id)
        )
        for digest, image_id, path, file_name in session.execute(query):
            rows.setdefault(str(digest), []).append(_DatasetRow(image_id, path, Path(file_name).name))
    if not rows:
        return linked
    taken: set[int] = set(linked.values())
    for path, fact in facts.items():  # the same path first: it is the data set's own file
        candidates = rows.get(fact["sha256"] or "", [])
        if candidates:
            resolved = {path, str(Path(path).resolve())}
            same = next((row.id for row in candidates if row.path in resolved), None)
            if same is not None and same not in taken:
                linked[path] = same
                taken.add(same)
    for path, fact in facts.items():  # then a copy: same content and name, the data set's file still there
        if path in linked:
            continue
        name = Path(path).name
        for row in rows.get(fact["sha256"] or "", []):
            readable = Path(row.path).is_file() and (within is None or is_within(Path(row.path), within))
            if row.id not in taken and row.name == name and readable:
                linked[path] = row.id
                taken.add(row.id)
                break
    return linked


def _dataset_objects(session: Session, urls: Sequence[str]) -> dict[str, int]:
    """URL → id of the data set image row imported from the same object URL (its content is not known at submit)."""
    linked: dict[str, int] = {}
    for start in range(0, len(urls), LOOKUP_PAGE):
        query = (
            select(Image.path, Image.id)
            .where(Image.path.in_(urls[start : start + LOOKUP_PAGE]), Image.dataset_id.is_not(None))
            .order_by(Image.id.desc())  # the first import wins: written last below
        )
        linked.update({str(path): image_id for path, image_id in session.execute(query)})
    return linked


def _object_facts(url: str) -> dict[str, Any]:
    """The ad-hoc image row of one object: its URL and name; hash and size stay unknown until a worker reads it."""
    return {"dataset_id": None, "path": url, "file_name": name_of(url), "sha256": None, "width": None, "height": None}


def _facts(path: Path) -> dict[str, Any]:
    """The ad-hoc image row of one file: its hash and displayed size, or None where it cannot be read."""
    size = _safe(image_size, path)
    width, height = size if size else (None, None)
    return {
        "dataset_id": None,
        "path": str(path),
        "file_name": path.name,
        "sha256": _safe(sha256_file, path),
        "width": width,
        "height": height,
    }


def _upsert_images(session: Session, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert ad-hoc image rows or refresh the existing ones' hash and size; path → id of every row.

    A file whose content changed (another sha256) is a new photo at an old path: its perceptual
    hash is cleared (the next worker to decode it hashes it) and its ``created_at`` moves to now,
    so the captions of its earlier content are never reused for it (``reusable_captions``).
    """
    insert, parameters = insert_rows(session, Image, rows)
    same_content = Image.sha256 == insert.excluded.sha256  # NULL (unreadable before or now) counts as a change
    statement = insert.on_conflict_do_update(
        index_elements=["path"],
        index_where=Image.dataset_id.is_(None),
        set_={
            "sha256": insert.excluded.sha256,
            "width": insert.excluded.width,
            "height": insert.excluded.height,
            "phash": case((same_content, Image.phash), else_=None),
            "created_at": case((same_content, Image.created_at), else_=insert.excluded.created_at),
        },
    ).returning(Image.id, Image.path)
    return {path: image_id for image_id, path in session.connection().execute(statement, parameters)}


def _safe(read: Callable[[Path], T], path: Path) -> T | None:
    """``read(path)``, or None when the file cannot be read (the runner records the real reason per image)."""
    try:
        return read(path)
    except Exception:  # noqa: BLE001 - the runner records the real reason per image
        return None


def create_caption_job(
    *,
    db: Engine,
    folder: Path | str,
    model: str | None,
    engine_name: str | None,
    recursive: bool,
    batch_size: int,
    chunk_size: int,
    gpu: int | None = None,
    within: Sequence[Path] | None = None,
    skip_known: bool = False,
) -> CaptionJobPlan:
    """A queued ``caption`` job over every image file in ``folder``, split into chunks.

    ``model`` None picks the newest registered model; ``gpu`` pins the job to that GPU's worker.
    ``within`` (resolved folders; the web view's ``VICAP_WEB_ROOTS``): files whose real path,
    links followed, lies outside all of them are left out and counted, so a link inside an
    allowed folder cannot reach a file elsewhere. ``skip_known``: images whose content already
    has an ok caption of this model, engine and decoding options get a copy of it (see
    :func:`reusable_captions`) and go in no chunk; the job's ``done`` counts them, its params
    record how many (``reused``) and its message says so. No Celery here: the caller publishes
    the job's chunks.
    """
    if batch_size <= 0:
        raise InputError("--batch-size must be positive")
    remote = is_url(folder)
    if remote and skip_known:
        raise InputError(
            "--skip-known needs each photo's content hash at submit, and photos in object storage are hashed "
            "by the workers that read them; submit without --skip-known"
        )
    if remote and within is not None:
        raise InputError("only local folders can be submitted here")
    model_row = resolve_model(db=db, name=model)
    engine = engine_for_job(model_row, engine_name)
    report = WalkReport()
    paths: list[Path | str]
    if remote:
        paths = list(list_image_objects(str(folder), recursive=recursive, is_image_name=is_image_name))
    else:
        paths = list(iter_image_files(Path(folder).expanduser().resolve(), recursive=recursive, report=report))
    found = len(paths)
    if within is not None:
        paths = [path for path in paths if is_within(Path(path), within)]
    if not paths and found:
        raise InputError(f"every image file in {folder} is a link to a file outside the allowed folders")
    if not paths:
        raise InputError(
            f"no image files (jpg, jpeg, png, webp, bmp, gif) in {folder}" + ("" if recursive else "; try --recursive")
        )
    registered = _register(db, paths, within)
    image_ids = list(dict.fromkeys(registered.ids))
    with session_scope(db) as session:
        reused = (
            reusable_captions(session=session, model=model_row, engine=engine, content=registered.sha256)
            if skip_known
            else []
        )
        reused_ids = {item.image_id for item in reused}
        params = CaptionParams(
            folder=as_location(folder),
            model=model_row.name,
            engine=engine,
            recursive=recursive,
            batch_size=batch_size,
            chunk_size=chunk_size,
            device=None if gpu is None else device_label(gpu),
            skipped_dirs=report.skipped_dirs,
            skip_known=skip_known,
            reused=len(reused),
        )
        job_id = create_job(
            session=session, kind="caption", params=params, model_id=model_row.id, total=len(image_ids), gpu=gpu
        )
        to_caption = [image_id for image_id in image_ids if image_id not in reused_ids]
        chunk_ids = create_chunks(session=session, job_id=job_id, image_ids=to_caption, chunk_size=chunk_size)
        copy_captions(session=session, job_id=job_id, model_id=model_row.id, captions=reused)
        if reused:
            message = f"reused {len(reused)} earlier caption(s) of the same content; {len(to_caption)} to caption"
            report_progress(session=session, job_id=job_id, message=message)
    if not chunk_ids:  # everything was known: nothing for a worker to do
        with session_scope(db) as session:
            finish_if_drained(session=session, job_id=job_id)
    log.info("job %d: %d images (%d reused) in %d chunks", job_id, len(image_ids), len(reused), len(chunk_ids))
    return CaptionJobPlan(
        job_id=job_id,
        chunk_ids=chunk_ids,
        n_images=len(image_ids),
        skipped_dirs=report.skipped_dirs,
        skipped_outside=found - len(paths),
        n_reused=len(reused),
        n_linked=registered.n_linked,
    )


def reusable_captions(
    *, session: Session, model: ModelRef, engine: str | None, content: Mapping[int, str | None]
) -> list[ReusedCaption]:
    """For each image whose content (sha256) has an ok caption of ``model`` made the same way, the newest such caption.

    "The same way":

    - the same model row, with the weights and export it has now: captions made before its
      training job ended (a model re-trained under the same name) or, for the engines that run
      the ONNX export, before its last export are never reused;
    - the same engine: a named engine reuses captions whose ``captions.engine`` (what actually
      ran) is that name, whichever job asked for it; ``None`` (the model's default, measured by
      the worker that runs the job) reuses only captions of jobs that also asked for the measured
      default, whichever engine their worker measured (it picks an engine only when its captions
      agree with the static default's, ``engines/choice.py``), since no one can tell at submit
      time which engine a worker will measure;
    - the same decoding options: every caption and evaluate job decodes with the engines'
      defaults (``EngineCache`` loads them with ``DecodeOptions()``: beam 3, 20 tokens), so they
      all match; a job parameter that changed decoding would have to be compared here.

    A caption counts for the content its image row has now: a row whose file changed since
    (``_upsert_images`` moves its ``created_at``) does not lend the captions of its old content.
    ``content``: image id → sha256 of its file (None: unreadable at submit, never reused), in job
    order. Caption and evaluate jobs count alike (an evaluated data set's photos are reused for a
    folder holding the same files). The copy points at the caption the engine wrote (an earlier
    copy's own source).

    Two indexed lookups per 1,000 contents, image rows by sha256 and then their captions by
    image id: 3.6-5.5 s for 100,000 contents on PostgreSQL (2 busy cores), the tables analysed
    or not. One query joining both was planned from the captions' model index on tables not
    analysed yet (a folder just registered) and took 380 s.
    """
    digests = list(dict.fromkeys(d for d in content.values() if d))
    if not digests:
        return []
    newest: dict[str, tuple[int, int, str, str]] = {}  # sha256 → (caption id, source caption id, text, engine)
    conditions = _made_the_same_way(session, model, engine)
    measured: set[int] | None = None  # engine None: the jobs that asked for the measured default too
    if engine is None:  # a set here, not a subquery: that one was planned badly on fresh tables (100 s)
        jobs = select(Job.id).where(Job.model_id == model.id, Job.params["engine"].as_string().is_(None))
        measured = set(session.scalars(jobs))
    for start in range(0, len(digests), LOOKUP_PAGE):
        images = {  # every image row with one of these contents, and since when it has it
            image_id: (str(digest), since)
            for image_id, digest, since in session.execute(
                select(Image.id, Image.sha256, Image.created_at).where(
                    Image.sha256.in_(digests[start : start + LOOKUP_PAGE])
                )
            )
        }
        image_ids = list(images)
        for first in range(0, len(image_ids), LOOKUP_PAGE):
            query = select(
                Caption.image_id,
                Caption.id,
                Caption.reused_from_id,
                Caption.text,
                Caption.engine,
                Caption.created_at,
                Caption.job_id,
            ).where(
                Caption.image_id.in_(image_ids[first : first + LOOKUP_PAGE]),
                Caption.model_id == model.id,
                Caption.status == CaptionStatus.OK,
                Caption.text.is_not(None),
                *conditions,
            )
            for image_id, caption_id, source_id, text, caption_engine, made, job_id in session.execute(query):
                digest, since = images[image_id]
                if made < since or (measured is not None and job_id not in measured):
                    continue  # made of the content its row had before, or by another engine choice
                if digest not in newest or caption_id > newest[digest][0]:
                    newest[digest] = (caption_id, source_id or caption_id, str(text), caption_engine)
    return [
        ReusedCaption(image_id, *newest[digest][1:])
        for image_id, digest in content.items()
        if digest is not None and digest in newest
    ]


def _made_the_same_way(session: Session, model: ModelRef, engine: str | None) -> list[ColumnElement[bool]]:
    """Conditions on ``captions`` for the model's current weights and export and the engine (see reusable_captions)."""
    conditions: list[ColumnElement[bool]] = []
    if engine is not None:
        conditions.append(Caption.engine == engine)
    if model.trained_by_job_id is not None:
        trained = session.execute(select(Job.finished_at).where(Job.id == model.trained_by_job_id)).first()
        if trained is not None:
            since: datetime = trained.finished_at or utcnow()  # still running: its new weights may land any time
            conditions.append(Caption.created_at >= since)
    if model.exported_at is not None:
        conditions.append(
            or_(Caption.engine.not_in(sorted(ONNX_EXPORT_ENGINES)), Caption.created_at >= model.exported_at)
        )
    return conditions


def is_within(path: Path, roots: Sequence[Path]) -> bool:
    """True when ``path``'s real location (every link followed) lies inside one of the resolved ``roots``."""
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a link loop, unreadable
        return False
    return any(real == root or real.is_relative_to(root) for root in roots)
