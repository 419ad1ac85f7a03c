"""jobs.parent_id, jobs.queue, enqueued_at on jobs and chunks; job kinds no longer a CHECK

- ``jobs.parent_id`` (nullable, indexed): a job can group child jobs (a sweep, a nightly run).
- ``jobs.queue``: the broker queue a job's messages go to, recorded at submit time, so a recovered
  job (or chunk) goes back to the GPU it was pinned to. NULL means the shared queue ``vicap``.
- ``enqueued_at`` on jobs and chunks: when the message was last published. Until now a queued
  chunk's ``heartbeat_at`` held that time; ``heartbeat_at`` now only means "the worker that claimed
  it is alive". Queued chunks move their time over.
- The ``kind`` CHECK is dropped: the job-kind table in code validates kinds, so adding a kind (or a
  plugin's) needs no migration.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 09:00:00
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_KINDS_CHECK = "kind IN ('train', 'export', 'caption', 'evaluate')"
_KIND_COMMENT = "job-kind table name: train, export, caption, evaluate, ..."


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_kind"), type_="check")
        batch_op.add_column(
            sa.Column(
                "parent_id",
                sa.Integer(),
                nullable=True,
                comment="the job this one belongs to (a sweep, a nightly run)",
            )
        )
        batch_op.add_column(
            sa.Column(
                "queue",
                sa.String(length=100),
                nullable=True,
                comment="broker queue its messages go to: vicap (shared) or gpu.N; NULL = vicap",
            )
        )
        batch_op.add_column(
            sa.Column(
                "enqueued_at",
                sa.DateTime(timezone=True),
                nullable=True,
                comment="when its message was last published (NULL: never, or chunks carry them)",
            )
        )
        batch_op.alter_column("kind", existing_type=sa.String(length=20), existing_nullable=False, comment=_KIND_COMMENT)
        batch_op.create_foreign_key(op.f("fk_jobs_parent_id_jobs"), "jobs", ["parent_id"], ["id"], ondelete="SET NULL")
        batch_op.create_index("ix_jobs_parent_id", ["parent_id"], unique=False)
    with op.batch_alter_table("job_chunks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "enqueued_at", sa.DateTime(timezone=True), nullable=True, comment="when its message was last published"
            )
        )
        batch_op.alter_column(
            "heartbeat_at",
            existing_type=sa.DateTime(timezone=True),
            existing_nullable=True,
            comment="last sign of life of the worker that claimed it (running chunks only)",
        )
        batch_op.alter_column(
            "attempts", existing_type=sa.Integer(), existing_nullable=False, comment="times a worker claimed it"
        )
    _move_enqueue_times()
    _record_pinned_queues()


def _move_enqueue_times() -> None:
    """A queued chunk's heartbeat_at was its last enqueue time: move it to enqueued_at."""
    op.execute(
        "UPDATE job_chunks SET enqueued_at = heartbeat_at, heartbeat_at = NULL WHERE status = 'queued'"
    )


def _record_pinned_queues() -> None:
    """Open jobs submitted with --gpu N recorded params.device = 'gpuN': their queue is gpu.N."""
    connection = op.get_bind()
    rows = connection.execute(sa.text("SELECT id, params FROM jobs WHERE status IN ('queued', 'running')")).all()
    for job_id, params in rows:
        values = json.loads(params) if isinstance(params, str) else (params or {})
        device = str(values.get("device") or "")
        if device.startswith("gpu") and device[3:].isdigit():
            connection.execute(
                sa.text("UPDATE jobs SET queue = :queue WHERE id = :id"), {"queue": f"gpu.{device[3:]}", "id": job_id}
            )


def downgrade() -> None:
    op.execute("UPDATE job_chunks SET heartbeat_at = enqueued_at WHERE status = 'queued'")
    with op.batch_alter_table("job_chunks", schema=None) as batch_op:
        batch_op.alter_column("attempts", existing_type=sa.Integer(), existing_nullable=False, comment=None)
        batch_op.alter_column(
            "heartbeat_at", existing_type=sa.DateTime(timezone=True), existing_nullable=True, comment=None
        )
        batch_op.drop_column("enqueued_at")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_parent_id")
        batch_op.drop_constraint(op.f("fk_jobs_parent_id_jobs"), type_="foreignkey")
        batch_op.alter_column("kind", existing_type=sa.String(length=20), existing_nullable=False, comment=None)
        batch_op.drop_column("enqueued_at")
        batch_op.drop_column("queue")
        batch_op.drop_column("parent_id")
        batch_op.create_check_constraint(op.f("ck_jobs_kind"), sa.text(_KINDS_CHECK))
