"""Sharing the fleet: job priority, workload and queue wait; job_chunks for bulk jobs that yield.

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-03

Written to match kronos_jobs/db/models.py (tests/db/test_migrations.py compares them); like 0001 it
imports no application code.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Rows that exist already were all submitted by people: interactive, the interactive default.
    op.add_column("jobs", sa.Column("priority", sa.Integer(), nullable=False, server_default="6"))
    op.add_column("jobs", sa.Column("workload", sa.String(16), nullable=False, server_default="interactive"))
    op.add_column("jobs", sa.Column("enqueued_at", TZ, nullable=True))
    op.add_column("jobs", sa.Column("queue_wait_seconds", sa.Float(), nullable=True))

    op.create_table(
        "job_chunks",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("start", sa.Integer(), nullable=False),
        sa.Column("stop", sa.Integer(), nullable=False),
        sa.Column("rows_parquet", sa.LargeBinary(), nullable=True),
        sa.Column("symbol_errors", sa.JSON(), nullable=False),
        sa.Column("inference_seconds", sa.Float(), nullable=False),
        sa.Column("wait_seconds", sa.Float(), nullable=False),
        sa.Column("device", sa.String(32), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_chunks_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "start", name=op.f("pk_job_chunks")),
    )


def downgrade() -> None:
    op.drop_table("job_chunks")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("queue_wait_seconds")
        batch.drop_column("enqueued_at")
        batch.drop_column("workload")
        batch.drop_column("priority")
