"""Curation bookkeeping (curation_runs, quarantine) and immutable raw feedback.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION tuneloop_feedback_immutable() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'feedback rows are immutable'; END
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "curation_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("high_water_id", sa.Integer, nullable=False, comment="Newest feedback id this curation used."),
        sa.Column("dataset_hash", sa.String(64), nullable=False),
        sa.Column("counts", sa.Text, nullable=False),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_curation_runs_kind", "curation_runs", ["kind"])
    op.create_table(
        "quarantine",
        sa.Column("feedback_id", sa.Integer, sa.ForeignKey("feedback.id"), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("curation_run_id", sa.Integer, sa.ForeignKey("curation_runs.id"), nullable=False),
    )
    op.create_index("ix_quarantine_kind", "quarantine", ["kind"])
    # "new records since the last run" and curation read by (kind, id)
    op.create_index("ix_feedback_kind_id", "feedback", ["kind", "id"])
    # raw records are evidence: the database itself refuses to change them
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(
            "CREATE TRIGGER feedback_immutable BEFORE UPDATE ON feedback "
            "BEGIN SELECT RAISE(ABORT, 'feedback rows are immutable'); END"
        )
    elif dialect == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(
            "CREATE TRIGGER feedback_immutable BEFORE UPDATE ON feedback "
            "FOR EACH ROW EXECUTE FUNCTION tuneloop_feedback_immutable()"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        op.execute("DROP TRIGGER IF EXISTS feedback_immutable" + (" ON feedback" if dialect == "postgresql" else ""))
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS tuneloop_feedback_immutable()")
    op.drop_index("ix_feedback_kind_id", table_name="feedback")
    op.drop_table("quarantine")
    op.drop_table("curation_runs")
