"""Image identity: perceptual hashes, overlaps between images, segmented references, reused captions

- ``images.phash`` (indexed): the 256-bit perceptual hash (``imagehash.phash``, ``hash_size=16``) as
  64 hex digits, computed once per content (rows with the same sha256 share it); its 8×8
  low-frequency corner is the 64-bit key the near-duplicate search indexes.
- ``image_overlaps``: pairs of images that are the same photo, exact (sha256) or near (phash within
  a Hamming threshold), found by ``vicap-jobs dataset overlap``; ``image_a_id < image_b_id``.
- ``reference_captions.segmented``: the word-segmented caption a data set ships (KTVIC's
  ``segment_caption``), used by the ``word`` tokenization instead of pyvi.
- ``captions.reused_from_id``: a caption copied from an earlier job's caption of the same content
  (``submit caption --skip-known``), so every job still has one row per image.
- ``evaluations.training_overlap``: how many evaluated images duplicate the model's training images.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# A frozen copy of the view (unchanged since 0001): SQLite rebuilds a table it alters, which a view
# over that table does not survive, so the view is dropped and made again around ``evaluations``.
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


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "phash",
                sa.String(length=64),
                nullable=True,
                comment="256-bit perceptual hash (imagehash.phash, hash_size=16) as 64 hex digits (its 8x8 low-frequency "
                "corner: the 64-bit index key); NULL until computed or when unreadable",
            )
        )
        batch_op.create_index("ix_images_phash", ["phash"], unique=False)
    with op.batch_alter_table("reference_captions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "segmented",
                sa.Text(),
                nullable=True,
                comment="word-segmented form given by the data set (KTVIC: 'khung_cảnh'); NULL: pyvi segments it",
            )
        )
    with op.batch_alter_table("captions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "reused_from_id",
                sa.Integer(),
                nullable=True,
                comment="the earlier caption of the same content this row copies (submit caption --skip-known)",
            )
        )
        batch_op.create_foreign_key(
            op.f("fk_captions_reused_from_id_captions"), "captions", ["reused_from_id"], ["id"], ondelete="SET NULL"
        )
    op.execute("DROP VIEW IF EXISTS latest_scores")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "training_overlap",
                sa.Integer(),
                nullable=True,
                comment="evaluated images that are exact or near duplicates of the model's training images; NULL: not checked",
            )
        )
    op.execute(LATEST_SCORES_VIEW_SQL)
    op.create_table(
        "image_overlaps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_a_id", sa.Integer(), nullable=False, comment="the smaller id"),
        sa.Column("image_b_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.String(length=10),
            nullable=False,
            comment="exact (same sha256) | near (phash within the threshold)",
        ),
        sa.Column(
            "distance",
            sa.Integer(),
            nullable=False,
            comment="Hamming distance of the 256-bit perceptual hashes (0..256)",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('exact', 'near')", name=op.f("ck_image_overlaps_kind")),
        sa.CheckConstraint("image_a_id < image_b_id", name=op.f("ck_image_overlaps_ordered")),
        sa.ForeignKeyConstraint(
            ["image_a_id"], ["images.id"], name=op.f("fk_image_overlaps_image_a_id_images"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["image_b_id"], ["images.id"], name=op.f("fk_image_overlaps_image_b_id_images"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_overlaps")),
        sa.UniqueConstraint("image_a_id", "image_b_id", name=op.f("uq_image_overlaps_image_a_id_image_b_id")),
    )
    op.create_index("ix_image_overlaps_image_b_id", "image_overlaps", ["image_b_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_image_overlaps_image_b_id", table_name="image_overlaps")
    op.drop_table("image_overlaps")
    op.execute("DROP VIEW IF EXISTS latest_scores")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_column("training_overlap")
    op.execute(LATEST_SCORES_VIEW_SQL)
    with op.batch_alter_table("captions", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_captions_reused_from_id_captions"), type_="foreignkey")
        batch_op.drop_column("reused_from_id")
    with op.batch_alter_table("reference_captions", schema=None) as batch_op:
        batch_op.drop_column("segmented")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index("ix_images_phash")
        batch_op.drop_column("phash")
