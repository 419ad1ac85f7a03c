"""jobs.heartbeat_at and jobs.attempts: recover train/export jobs whose worker died

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 12:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "heartbeat_at",
                sa.DateTime(timezone=True),
                nullable=True,
                comment="last sign of life of the worker running a train/export/evaluate job",
            )
        )
        batch_op.add_column(
            sa.Column(
                "attempts", sa.Integer(), server_default="0", nullable=False, comment="times a worker died running it"
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("attempts")
        batch_op.drop_column("heartbeat_at")
