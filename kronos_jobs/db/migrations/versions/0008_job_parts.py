"""Jobs split over the live worker slots: jobs.parent_id and jobs.parts.

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-03

A large forecast job is split into part jobs that run on different workers at once
(kronos_jobs/jobs/parts.py). Written to match kronos_jobs/db/models.py
(tests/db/test_migrations.py compares them); like 0001 it imports no application code.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("parts", sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f("fk_jobs_parent_id_jobs"), "jobs", ["parent_id"], ["id"], ondelete="CASCADE")
        batch.create_index(op.f("ix_jobs_parent_id"), ["parent_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_parent_id"))
        batch.drop_constraint(op.f("fk_jobs_parent_id_jobs"), type_="foreignkey")
        batch.drop_column("parts")
        batch.drop_column("parent_id")
