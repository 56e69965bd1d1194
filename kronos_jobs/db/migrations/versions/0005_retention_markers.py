"""Retention: what was pruned and when (jobs.input_pruned_at, jobs.result_pruned_at,
models.artifact_pruned_at, the pruned_records tombstones) and the indexes retention scans by.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Written to match kronos_jobs/db/models.py (tests/db/test_migrations.py compares them); imports no
application code.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("input_pruned_at", TZ, nullable=True))
        batch.add_column(sa.Column("result_pruned_at", TZ, nullable=True))
        batch.create_index("ix_jobs_finished_at", ["finished_at"])
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("artifact_pruned_at", TZ, nullable=True))
    op.create_index("ix_schedule_runs_finished_at", "schedule_runs", ["finished_at"])
    op.create_table(
        "pruned_records",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("pruned_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("kind", "id", name=op.f("pk_pruned_records")),
    )


def downgrade() -> None:
    op.drop_table("pruned_records")
    op.drop_index("ix_schedule_runs_finished_at", table_name="schedule_runs")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("artifact_pruned_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_finished_at")
        batch.drop_column("result_pruned_at")
        batch.drop_column("input_pruned_at")
