"""Operations tables, so that every part (CLI, flows, workers, services) can run on its own machine:
the routing flags, settings (the API token), rollout events, the shadow log, drift windows and the
trigger's runs live in this database instead of files in a local home.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _stamp() -> sa.Column:
    return sa.Column("at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "flags",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("definition", sa.Text, nullable=False, comment="The flagd flag definition (JSON)."),
        _stamp(),
        sa.Column("by", sa.String(128), nullable=True),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "rollout_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _stamp(),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("segment", sa.String(64), nullable=True),
    )
    op.create_index("ix_rollout_events_model", "rollout_events", ["model", "id"])
    op.create_table(
        "shadow_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _stamp(),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("user_hash", sa.String(64), nullable=False, comment="Salted hash of the user id, never the id."),
        sa.Column("input", sa.Text, nullable=False, comment="Scrubbed of personal data."),
        sa.Column("live_version", sa.String(64), nullable=False),
        sa.Column("live_output", sa.Text, nullable=False),
        sa.Column("shadow_version", sa.String(64), nullable=False),
        sa.Column("shadow_output", sa.Text, nullable=False),
        sa.Column("agree", sa.Boolean, nullable=False),
    )
    op.create_index("ix_shadow_log_kind", "shadow_log", ["kind", "id"])
    op.create_table(
        "drift_windows",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _stamp(),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("statistic", sa.Float, nullable=False),
        sa.Column("p_value", sa.Float, nullable=False),
        sa.Column("drifted", sa.Boolean, nullable=False),
    )
    op.create_index("ix_drift_windows_kind", "drift_windows", ["kind", "id"])
    op.create_table(
        "trigger_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _stamp(),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("ran", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("cpu_seconds", sa.Float, nullable=False),
        sa.Column("wall_seconds", sa.Float, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
    )
    op.create_index("ix_trigger_runs_kind", "trigger_runs", ["kind", "id"])


def downgrade() -> None:
    for table in ("trigger_runs", "drift_windows", "shadow_log", "rollout_events", "settings", "flags"):
        op.drop_table(table)
