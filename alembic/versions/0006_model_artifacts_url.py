"""Artifacts in object storage: where a model's published files are and their digests

- ``models.artifacts_url``: the object storage folder of this version of the model's files
  (``VICAP_ARTIFACTS_URL/<name>/<version>``; ``MANIFEST.json`` in it is written last); NULL for a
  model whose files are only on the host that wrote them (the default, and every row before 0006).
- ``models.artifact_digests``: ``{path relative to artifact_dir: sha256}`` of every published file;
  a worker on another host verifies its download against these (the store is the trust anchor).

``latest_scores`` joins ``models``: its SQL as of 0005 is frozen below, dropped and made again around
the alteration (SQLite rebuilds an altered table, which a view over it does not survive).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# A frozen copy of the view as 0005 left it (unchanged by this revision).
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


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS latest_scores")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "artifacts_url",
                sa.Text(),
                nullable=True,
                comment="object storage folder of this version of the files (VICAP_ARTIFACTS_URL/<name>/<version>), "
                "MANIFEST.json written last; NULL: the files are only in artifact_dir on the host that wrote them",
            )
        )
        batch_op.add_column(
            sa.Column(
                "artifact_digests",
                sa.JSON(),
                nullable=True,
                comment="{path relative to artifact_dir: sha256} of every published file; workers verify downloads "
                "against these; NULL when not published",
            )
        )
    op.execute(LATEST_SCORES_VIEW_SQL)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS latest_scores")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("artifact_digests")
        batch_op.drop_column("artifacts_url")
    op.execute(LATEST_SCORES_VIEW_SQL)
