"""Backtests and live scoring: backtest_results, backtest_metrics, forecast_scores.

Revision ID: 0003
Revises: 0005
Create Date: 2026-12-03

Written to match kronos_jobs/db/models.py (tests/db/test_migrations.py compares them); like 0001 it
imports no application code.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "backtest_results",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("rows_parquet", sa.LargeBinary(), nullable=False),
        sa.Column("n_rows", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_backtest_results_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_backtest_results")),
    )

    op.create_table(
        "backtest_metrics",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("lookback", sa.Integer(), nullable=False),
        sa.Column("symbol", sa.String(128), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("horizon", sa.Integer(), nullable=True),
        sa.Column("n", sa.Integer(), nullable=False),
        *(sa.Column(name, sa.Float(), nullable=True) for name in (
            "mae", "rmse", "smape", "mase", "directional_accuracy", "crps", "skill", "dm_stat", "dm_pvalue")),
        sa.Column("bands", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_backtest_metrics_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backtest_metrics")),
    )
    op.create_index("ix_backtest_metrics_job_id", "backtest_metrics", ["job_id"])

    op.create_table(
        "forecast_scores",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(128), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("schedule_id", sa.String(32), nullable=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("timestamp", TZ, nullable=False),
        sa.Column("forecast", sa.Float(), nullable=False),
        sa.Column("actual", sa.Float(), nullable=False),
        sa.Column("naive", sa.Float(), nullable=False),
        sa.Column("scored_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_forecast_scores_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "symbol", "step", name=op.f("pk_forecast_scores")),
    )
    op.create_index("ix_forecast_scores_tenant_timestamp", "forecast_scores", ["tenant_id", "timestamp"])


def downgrade() -> None:
    op.drop_index("ix_forecast_scores_tenant_timestamp", table_name="forecast_scores")
    op.drop_table("forecast_scores")
    op.drop_index("ix_backtest_metrics_job_id", table_name="backtest_metrics")
    op.drop_table("backtest_metrics")
    op.drop_table("backtest_results")
