"""The raw feedback table (as the first release created it).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Stores made before migrations existed already have this table (created by create_all): adopt it.
    if "feedback" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=True, unique=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    op.create_index("ix_feedback_kind", "feedback", ["kind"])


def downgrade() -> None:
    op.drop_index("ix_feedback_kind", table_name="feedback")
    op.drop_table("feedback")
