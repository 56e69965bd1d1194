"""The job outbox: jobs.sent_at, set once a job's task reached the broker.

Revision ID: 0007
Revises: 0002
Create Date: 2026-12-03

A queued job whose `sent_at` is NULL was committed but its task never reached the broker (the
broker was down at submit); beat's dispatcher sends it (kronos_jobs/jobs/recovery.py). Rows that
exist already count as sent: their tasks went out, or the reconciler re-sends them as before.
Written to match kronos_jobs/db/models.py (tests/db/test_migrations.py compares them).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_jobs_outbox", ["state", "sent_at"])
    op.execute("UPDATE jobs SET sent_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_outbox")
        batch.drop_column("sent_at")
