"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 11:20:36.531216
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# A frozen copy: later changes to the view get their own migration.
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
       e.bleu_1, e.bleu_2, e.bleu_3, e.bleu_4, e.rouge_l,
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


revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("format", sa.String(length=40), nullable=False, comment="coco | captions-txt | synth"),
        sa.Column("source_path", sa.Text(), nullable=True),
        sa.Column(
            "nightly_splits",
            sa.JSON(),
            nullable=True,
            comment='splits re-evaluated every night, e.g. ["test"]; NULL = none',
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("name", name=op.f("uq_datasets_name")),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False, comment="celery node name, e.g. gpu0@host"),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("device", sa.String(length=40), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
        sa.UniqueConstraint("name", name=op.f("uq_workers_name")),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=True),
        sa.Column("path", sa.Text(), nullable=False, comment="absolute path on the machine that registered it"),
        sa.Column("file_name", sa.Text(), nullable=False),
        sa.Column("coco_id", sa.Integer(), nullable=True, comment="image id in the source COCO JSON, if any"),
        sa.Column("sha256", sa.String(length=64), nullable=True, comment="NULL when the file was missing at import"),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("split", sa.String(length=10), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("split IS NULL OR split IN ('train', 'val', 'test')", name=op.f("ck_images_split")),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_images_dataset_id_datasets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("dataset_id", "path", name=op.f("uq_images_dataset_id_path")),
    )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index("ix_images_dataset_id_split", ["dataset_id", "split"], unique=False)
        batch_op.create_index("ix_images_sha256", ["sha256"], unique=False)
        batch_op.create_index(
            "uq_images_adhoc_path",
            ["path"],
            unique=True,
            sqlite_where=sa.text("dataset_id IS NULL"),
            postgresql_where=sa.text("dataset_id IS NULL"),
        )

    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "family", sa.String(length=40), nullable=False, comment="registry name: cnn-lstm, cnn-lstm-attn, ..."
        ),
        sa.Column("backbone", sa.String(length=80), nullable=True, comment="vision backbone or base checkpoint"),
        sa.Column(
            "artifact_dir",
            sa.Text(),
            nullable=False,
            comment="checkpoint folder (config.json, model.safetensors, vocab.json)",
        ),
        sa.Column("onnx_path", sa.Text(), nullable=True, comment="folder with encoder_model.onnx + decoder_model.onnx"),
        sa.Column("onnx_quantized", sa.Boolean(), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("vocabulary", sa.Text(), nullable=True, comment="vocabulary file or tokenizer reference"),
        sa.Column("tokenization", sa.String(length=20), nullable=True),
        sa.Column("image_size", sa.Integer(), nullable=True),
        sa.Column("dataset_id", sa.Integer(), nullable=True, comment="trained on"),
        sa.Column("trained_by_job_id", sa.Integer(), nullable=True),
        sa.Column("exported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_models_dataset_id_datasets"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("dataset_id", sa.Integer(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False, comment="units of work: images, or epochs for train"),
        sa.Column("done", sa.Integer(), nullable=False, comment="units finished, ok or failed"),
        sa.Column("failed", sa.Integer(), nullable=False, comment="units that ended in error"),
        sa.Column("progress_message", sa.Text(), nullable=True, comment="e.g. 'epoch 3/10 loss 1.234'"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker_host", sa.String(length=255), nullable=True),
        sa.Column("device", sa.String(length=40), nullable=True),
        sa.Column("broker_task_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('train', 'export', 'caption', 'evaluate')", name=op.f("ck_jobs_kind")),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f("ck_jobs_status")
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_jobs_dataset_id_datasets"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_jobs_model_id_models"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_status_created_at", ["status", "created_at"], unique=False)
    # models and jobs point at each other: the models -> jobs key is added once both exist.
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_foreign_key(
            op.f("fk_models_trained_by_job_id_jobs"), "jobs", ["trained_by_job_id"], ["id"], ondelete="SET NULL"
        )

    op.create_table(
        "reference_captions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False, comment="order within the image, from 0"),
        sa.Column("text", sa.Text(), nullable=False, comment="as given in the source file"),
        sa.Column("normalized", sa.Text(), nullable=False, comment="NFC, lowercase, no punctuation, diacritics kept"),
        sa.Column("coco_annotation_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_reference_captions_image_id_images"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reference_captions")),
        sa.UniqueConstraint("image_id", "position", name=op.f("uq_reference_captions_image_id_position")),
    )
    op.create_table(
        "captions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True, comment="NULL when status = 'error'"),
        sa.Column("engine", sa.String(length=20), nullable=False, comment="onnx | torch | torch-bf16 | int8"),
        sa.Column("latency_ms", sa.Float(), nullable=True, comment="per-image share of its batch's engine time"),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("error", sa.Text(), nullable=True, comment="readable reason, e.g. 'truncated or corrupt image data'"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('ok', 'error')", name=op.f("ck_captions_status")),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_captions_image_id_images"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_captions_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_captions_model_id_models"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_captions")),
        sa.UniqueConstraint("job_id", "image_id", name=op.f("uq_captions_job_id_image_id")),
    )
    with op.batch_alter_table("captions", schema=None) as batch_op:
        batch_op.create_index("ix_captions_image_id", ["image_id"], unique=False)
        batch_op.create_index("ix_captions_model_id", ["model_id"], unique=False)

    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column(
            "model_id", sa.Integer(), nullable=True, comment="NULL for the blind baseline and for external predictions"
        ),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=10), nullable=False),
        sa.Column("tokenization", sa.String(length=20), nullable=False),
        sa.Column("bleu_1", sa.Float(), nullable=False),
        sa.Column("bleu_2", sa.Float(), nullable=False),
        sa.Column("bleu_3", sa.Float(), nullable=False),
        sa.Column("bleu_4", sa.Float(), nullable=False),
        sa.Column("rouge_l", sa.Float(), nullable=False),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("is_baseline", sa.Boolean(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True, comment="baseline caption, or the predictions file evaluated"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("split IN ('train', 'val', 'test')", name=op.f("ck_evaluations_split")),
        sa.CheckConstraint("tokenization IN ('syllable', 'word')", name=op.f("ck_evaluations_tokenization")),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_evaluations_dataset_id_datasets"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_evaluations_job_id_jobs"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_evaluations_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_evaluations_model_id_dataset_id_split", ["model_id", "dataset_id", "split"], unique=False
        )

    op.create_table(
        "job_chunks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False, comment="0-based chunk number within the job"),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("image_ids", sa.JSON(), nullable=False),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker_host", sa.String(length=255), nullable=True),
        sa.Column("broker_task_id", sa.String(length=255), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("read_s", sa.Float(), nullable=True, comment="seconds decoding images"),
        sa.Column("infer_s", sa.Float(), nullable=True, comment="seconds in the engine"),
        sa.Column("write_s", sa.Float(), nullable=True, comment="seconds writing rows"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'cancelled')", name=op.f("ck_job_chunks_status")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_chunks_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_chunks")),
        sa.UniqueConstraint("job_id", "seq", name=op.f("uq_job_chunks_job_id_seq")),
    )
    with op.batch_alter_table("job_chunks", schema=None) as batch_op:
        batch_op.create_index("ix_job_chunks_status_heartbeat_at", ["status", "heartbeat_at"], unique=False)

    op.execute(LATEST_SCORES_VIEW_SQL)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS latest_scores")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_models_trained_by_job_id_jobs"), type_="foreignkey")
    with op.batch_alter_table("job_chunks", schema=None) as batch_op:
        batch_op.drop_index("ix_job_chunks_status_heartbeat_at")

    op.drop_table("job_chunks")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index("ix_evaluations_model_id_dataset_id_split")

    op.drop_table("evaluations")
    with op.batch_alter_table("captions", schema=None) as batch_op:
        batch_op.drop_index("ix_captions_model_id")
        batch_op.drop_index("ix_captions_image_id")

    op.drop_table("captions")
    op.drop_table("reference_captions")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_created_at")

    op.drop_table("jobs")
    op.drop_table("models")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_images_adhoc_path",
            sqlite_where=sa.text("dataset_id IS NULL"),
            postgresql_where=sa.text("dataset_id IS NULL"),
        )
        batch_op.drop_index("ix_images_sha256")
        batch_op.drop_index("ix_images_dataset_id_split")

    op.drop_table("images")
    op.drop_table("workers")
    op.drop_table("datasets")
