"""CIDEr-D beside BLEU and ROUGE-L

- ``evaluations.cider_d``: CIDEr-D as pycocoevalcap's ``Cider`` computes it (×10 scale, not a
  percentage); NULL for evaluations stored before this revision.
- ``latest_scores`` gains ``cider_d`` (its SQL is frozen below, as in every revision that touches it).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_VIEW_SQL = """
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
       e.bleu_1, e.bleu_2, e.bleu_3, e.bleu_4, e.rouge_l,{cider_d}
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

# Frozen copies of the view after this revision and before it (as in 0004). SQLite rebuilds a table it
# alters, which a view over that table does not survive, so the view is dropped and made again around it.
LATEST_SCORES_VIEW_SQL = _VIEW_SQL.format(cider_d=" e.cider_d,")
PREVIOUS_LATEST_SCORES_VIEW_SQL = _VIEW_SQL.format(cider_d="")


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS latest_scores")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "cider_d",
                sa.Float(),
                nullable=True,
                comment="CIDEr-D (COCO definition, ×10 scale as pycocoevalcap); NULL for rows before 0005",
            )
        )
    op.execute(LATEST_SCORES_VIEW_SQL)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS latest_scores")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_column("cider_d")
    op.execute(PREVIOUS_LATEST_SCORES_VIEW_SQL)
