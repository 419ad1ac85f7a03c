"""The SQL store. Users query these tables with plain SQL, so names are chosen for them.

Every caption and score row points to the job that made it; every evaluation
row says its tokenization and whether it is the blind baseline.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from vicap_jobs.db.base import Base, utcnow
from vicap_jobs.db.status import CaptionStatus, ChunkStatus, JobStatus

JOB_STATUSES = tuple(JobStatus)
CHUNK_STATUSES = tuple(ChunkStatus)
CAPTION_STATUSES = tuple(CaptionStatus)
SPLITS = ("train", "val", "test")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


def _timestamp(nullable: bool = False) -> Mapped[Any]:
    if nullable:
        return mapped_column(DateTime(timezone=True), nullable=True)
    return mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class Dataset(Base):
    """A named collection of images with reference captions (UIT-ViIC, a synthetic set...)."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    format: Mapped[str] = mapped_column(String(40), comment="coco | captions-txt | synth")
    source_path: Mapped[str | None] = mapped_column(Text)
    nightly_splits: Mapped[list[str] | None] = mapped_column(
        JSON, comment='splits re-evaluated every night, e.g. ["test"]; NULL = none'
    )
    created_at: Mapped[datetime] = _timestamp()

    images: Mapped[list[Image]] = relationship(back_populates="dataset")


class Image(Base):
    """One image file; dataset_id is NULL for images of ad-hoc caption folders."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("dataset_id", "path"),
        Index("ix_images_sha256", "sha256"),
        Index("ix_images_phash", "phash"),
        Index("ix_images_dataset_id_split", "dataset_id", "split"),
        Index(
            "uq_images_adhoc_path",
            "path",
            unique=True,
            sqlite_where=text("dataset_id IS NULL"),
            postgresql_where=text("dataset_id IS NULL"),
        ),
        CheckConstraint("split IS NULL OR " + _one_of("split", SPLITS), name="split"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text, comment="absolute path on the machine that registered it")
    file_name: Mapped[str] = mapped_column(Text)
    coco_id: Mapped[int | None] = mapped_column(Integer, comment="image id in the source COCO JSON, if any")
    sha256: Mapped[str | None] = mapped_column(String(64), comment="NULL when the file was missing at import")
    phash: Mapped[str | None] = mapped_column(
        String(64),
        comment="256-bit perceptual hash (imagehash.phash, hash_size=16) as 64 hex digits (its 8x8 low-frequency "
        "corner: the 64-bit index key); NULL until computed or when unreadable",
    )
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    split: Mapped[str | None] = mapped_column(String(10))
    created_at: Mapped[datetime] = _timestamp()

    dataset: Mapped[Dataset | None] = relationship(back_populates="images")
    references: Mapped[list[ReferenceCaption]] = relationship(
        back_populates="image", order_by="ReferenceCaption.position"
    )


class ReferenceCaption(Base):
    """A human (or generator) reference caption: the text as given and its normalized form."""

    __tablename__ = "reference_captions"
    __table_args__ = (UniqueConstraint("image_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, comment="order within the image, from 0")
    text: Mapped[str] = mapped_column(Text, comment="as given in the source file")
    normalized: Mapped[str] = mapped_column(Text, comment="NFC, lowercase, no punctuation, diacritics kept")
    segmented: Mapped[str | None] = mapped_column(
        Text, comment="word-segmented form given by the data set (KTVIC: 'khung_cảnh'); NULL: pyvi segments it"
    )
    coco_annotation_id: Mapped[int | None] = mapped_column(Integer)

    image: Mapped[Image] = relationship(back_populates="references")


class Model(Base):
    """A trained captioning model and where its artifacts live."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    family: Mapped[str] = mapped_column(String(40), comment="registry name: cnn-lstm, cnn-lstm-attn, ...")
    backbone: Mapped[str | None] = mapped_column(String(80), comment="vision backbone or base checkpoint")
    artifact_dir: Mapped[str] = mapped_column(
        Text, comment="checkpoint folder (config.json, model.safetensors, vocab.json)"
    )
    onnx_path: Mapped[str | None] = mapped_column(Text, comment="folder with encoder_model.onnx + decoder_model.onnx")
    onnx_quantized: Mapped[bool] = mapped_column(Boolean, default=False)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    vocabulary: Mapped[str | None] = mapped_column(Text, comment="vocabulary file or tokenizer reference")
    artifacts_url: Mapped[str | None] = mapped_column(
        Text,
        comment="object storage folder of this version of the files (VICAP_ARTIFACTS_URL/<name>/<version>), "
        "MANIFEST.json written last; NULL: the files are only in artifact_dir on the host that wrote them",
    )
    artifact_digests: Mapped[dict[str, str] | None] = mapped_column(
        JSON,
        comment="{path relative to artifact_dir: sha256} of every published file; workers verify downloads "
        "against these; NULL when not published",
    )
    tokenization: Mapped[str | None] = mapped_column(String(20))
    image_size: Mapped[int | None] = mapped_column(Integer)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), comment="trained on")
    trained_by_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL", use_alter=True))
    exported_at: Mapped[datetime | None] = _timestamp(nullable=True)
    created_at: Mapped[datetime] = _timestamp()


class Job(Base):
    """A unit of user-visible work (train, export, caption, evaluate, ...) and its progress.

    ``kind`` names an entry of the job-kind table (``vicap_jobs.jobs.kinds``); it has no CHECK
    constraint since migration 0003, so a new kind (or a plugin's) needs no migration.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_one_of("status", JOB_STATUSES), name="status"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_parent_id", "parent_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), comment="job-kind table name: train, export, caption, evaluate, ...")
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), comment="the job this one belongs to (a sweep, a nightly run)"
    )
    queue: Mapped[str | None] = mapped_column(
        String(100), comment="broker queue its messages go to: vicap (shared) or gpu.N; NULL = vicap"
    )
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    total: Mapped[int] = mapped_column(Integer, default=0, comment="units of work: images, or epochs for train")
    done: Mapped[int] = mapped_column(Integer, default=0, comment="units finished, ok or failed")
    failed: Mapped[int] = mapped_column(Integer, default=0, comment="units that ended in error")
    progress_message: Mapped[str | None] = mapped_column(Text, comment="e.g. 'epoch 3/10 loss 1.234'")
    error: Mapped[str | None] = mapped_column(Text)
    worker_host: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(40))
    broker_task_id: Mapped[str | None] = mapped_column(String(255))
    enqueued_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="when its message was last published (NULL: never, or chunks carry them)"
    )
    heartbeat_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="last sign of life of the worker running a train/export/evaluate job"
    )
    attempts: Mapped[int] = mapped_column(
        Integer, default=0, server_default="0", comment="times a worker died running it"
    )
    created_at: Mapped[datetime] = _timestamp()
    started_at: Mapped[datetime | None] = _timestamp(nullable=True)
    finished_at: Mapped[datetime | None] = _timestamp(nullable=True)


class JobChunk(Base):
    """A partition of a caption job: one Celery task; done chunks are skipped on redelivery."""

    __tablename__ = "job_chunks"
    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        CheckConstraint(_one_of("status", CHUNK_STATUSES), name="status"),
        Index("ix_job_chunks_status_heartbeat_at", "status", "heartbeat_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer, comment="0-based chunk number within the job")
    status: Mapped[str] = mapped_column(String(20), default=ChunkStatus.QUEUED)
    image_ids: Mapped[list[int]] = mapped_column(JSON)
    n_images: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0, comment="times a worker claimed it")
    worker_host: Mapped[str | None] = mapped_column(String(255))
    broker_task_id: Mapped[str | None] = mapped_column(String(255))
    enqueued_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="when its message was last published"
    )
    heartbeat_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), comment="last sign of life of the worker that claimed it (running chunks only)"
    )
    started_at: Mapped[datetime | None] = _timestamp(nullable=True)
    finished_at: Mapped[datetime | None] = _timestamp(nullable=True)
    read_s: Mapped[float | None] = mapped_column(Float, comment="seconds decoding images")
    infer_s: Mapped[float | None] = mapped_column(Float, comment="seconds in the engine")
    write_s: Mapped[float | None] = mapped_column(Float, comment="seconds writing rows")
    error: Mapped[str | None] = mapped_column(Text)


class Caption(Base):
    """One generated caption (or the reason there is none) per image per job."""

    __tablename__ = "captions"
    __table_args__ = (
        UniqueConstraint("job_id", "image_id"),
        CheckConstraint(_one_of("status", CAPTION_STATUSES), name="status"),
        Index("ix_captions_image_id", "image_id"),
        Index("ix_captions_model_id", "model_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    text: Mapped[str | None] = mapped_column(Text, comment="NULL when status = 'error'")
    engine: Mapped[str] = mapped_column(String(20), comment="onnx | torch | torch-bf16 | int8")
    latency_ms: Mapped[float | None] = mapped_column(Float, comment="per-image share of its batch's engine time")
    status: Mapped[str] = mapped_column(String(10))
    error: Mapped[str | None] = mapped_column(Text, comment="readable reason, e.g. 'truncated or corrupt image data'")
    reused_from_id: Mapped[int | None] = mapped_column(
        ForeignKey("captions.id", ondelete="SET NULL"),
        comment="the earlier caption of the same content this row copies (submit caption --skip-known)",
    )
    created_at: Mapped[datetime] = _timestamp()


class ImageOverlap(Base):
    """Two images that are the same photo: equal sha256 (exact) or perceptual hashes within a threshold (near)."""

    __tablename__ = "image_overlaps"
    __table_args__ = (
        UniqueConstraint("image_a_id", "image_b_id"),
        Index("ix_image_overlaps_image_b_id", "image_b_id"),
        CheckConstraint("kind IN ('exact', 'near')", name="kind"),
        CheckConstraint("image_a_id < image_b_id", name="ordered"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_a_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), comment="the smaller id")
    image_b_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10), comment="exact (same sha256) | near (phash within the threshold)")
    distance: Mapped[int] = mapped_column(Integer, comment="Hamming distance of the 256-bit perceptual hashes (0..256)")
    created_at: Mapped[datetime] = _timestamp()


class Evaluation(Base):
    """Corpus BLEU-1..4 / ROUGE-L of one model (or the blind baseline) on one data set split."""

    __tablename__ = "evaluations"
    __table_args__ = (
        Index("ix_evaluations_model_id_dataset_id_split", "model_id", "dataset_id", "split"),
        CheckConstraint(_one_of("split", SPLITS), name="split"),
        CheckConstraint("tokenization IN ('syllable', 'word')", name="tokenization"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    model_id: Mapped[int | None] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), comment="NULL for the blind baseline and for external predictions"
    )
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(10))
    tokenization: Mapped[str] = mapped_column(String(20))
    bleu_1: Mapped[float] = mapped_column(Float)
    bleu_2: Mapped[float] = mapped_column(Float)
    bleu_3: Mapped[float] = mapped_column(Float)
    bleu_4: Mapped[float] = mapped_column(Float)
    rouge_l: Mapped[float] = mapped_column(Float)
    cider_d: Mapped[float | None] = mapped_column(
        Float, comment="CIDEr-D (COCO definition, ×10 scale as pycocoevalcap); NULL for rows before 0005"
    )
    n_images: Mapped[int] = mapped_column(Integer)
    is_baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str | None] = mapped_column(Text, comment="baseline caption, or the predictions file evaluated")
    training_overlap: Mapped[int | None] = mapped_column(
        Integer,
        comment="evaluated images that are exact or near duplicates of the model's training images; NULL: not checked",
    )
    created_at: Mapped[datetime] = _timestamp()


class Worker(Base):
    """A live (or recently live) worker process; last_seen_at is its heartbeat."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True, comment="celery node name, e.g. gpu0@host")
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    device: Mapped[str | None] = mapped_column(String(40))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = _timestamp()
    last_seen_at: Mapped[datetime] = _timestamp()


LATEST_SCORES_VIEW_SQL = """
CREATE VIEW latest_scores AS
SELECT e.id AS evaluation_id,
       e.model_id,
       m.name AS model_name,
       m.family AS model_family,
       e.dataset_id,
       d.name AS dataset_name,
       e.split,
       e.tokenization,
       e.is_baseline,
       e.bleu_1, e.bleu_2, e.bleu_3, e.bleu_4, e.rouge_l, e.cider_d,
       e.n_images,
       e.job_id,
       e.created_at
FROM (
    SELECT evaluations.*,
           ROW_NUMBER() OVER (
               PARTITION BY COALESCE(model_id, 0), is_baseline, dataset_id, split, tokenization
               ORDER BY created_at DESC, id DESC
           ) AS newest_first
    FROM evaluations
    WHERE model_id IS NOT NULL OR is_baseline
) AS e
JOIN datasets AS d ON d.id = e.dataset_id
LEFT JOIN models AS m ON m.id = e.model_id
WHERE e.newest_first = 1
"""
