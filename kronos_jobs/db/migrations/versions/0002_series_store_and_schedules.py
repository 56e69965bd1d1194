"""Series store and schedules: series_bars, schedules, schedule_runs, schedule_run_jobs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

Written to match kronos_jobs/db/models.py (tests/db/test_migrations.py compares them); like 0001 it
imports no application code.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "series_bars",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(128), nullable=False),
        sa.Column("freq", sa.String(32), nullable=False),
        sa.Column("timestamp", TZ, nullable=False),
        sa.Column("open", sa.Float(), nullable=False),
        sa.Column("high", sa.Float(), nullable=False),
        sa.Column("low", sa.Float(), nullable=False),
        sa.Column("close", sa.Float(), nullable=False),
        sa.Column("volume", sa.Float(), nullable=True),
        sa.Column("amount", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "symbol", "freq", "timestamp", name=op.f("pk_series_bars")),
    )

    op.create_table(
        "schedules",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("cron", sa.String(128), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("symbols", sa.JSON(), nullable=True),
        sa.Column("freq", sa.String(32), nullable=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("device", sa.String(8), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("calendar", sa.JSON(), nullable=False),
        sa.Column("min_history", sa.Integer(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("anchor_at", TZ, nullable=False),
        sa.Column("next_run_at", TZ, nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.UniqueConstraint("tenant_id", "name", name="uq_schedules_tenant_name"),
    )

    op.create_table(
        "schedule_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("schedule_id", sa.String(32), nullable=False),
        sa.Column("scheduled_for", TZ, nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=False),
        sa.Column("symbol_errors", sa.JSON(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("started_at", TZ, nullable=True),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("updated_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(["schedule_id"], ["schedules.id"], name=op.f("fk_schedule_runs_schedule_id_schedules"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_runs")),
        sa.UniqueConstraint("schedule_id", "scheduled_for", name="uq_schedule_runs_schedule_id_scheduled_for"),
    )
    op.create_index("ix_schedule_runs_state", "schedule_runs", ["state"])

    op.create_table(
        "schedule_run_jobs",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("schedule_id", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["schedule_runs.id"], name=op.f("fk_schedule_run_jobs_run_id_schedule_runs"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_schedule_run_jobs_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "batch", name=op.f("pk_schedule_run_jobs")),
    )
    op.create_index("ix_schedule_run_jobs_job_id", "schedule_run_jobs", ["job_id"])
    op.create_index("ix_schedule_run_jobs_schedule_id", "schedule_run_jobs", ["schedule_id"])


def downgrade() -> None:
    op.drop_index("ix_schedule_run_jobs_schedule_id", table_name="schedule_run_jobs")
    op.drop_index("ix_schedule_run_jobs_job_id", table_name="schedule_run_jobs")
    op.drop_table("schedule_run_jobs")
    op.drop_index("ix_schedule_runs_state", table_name="schedule_runs")
    op.drop_table("schedule_runs")
    op.drop_table("schedules")
    op.drop_table("series_bars")
