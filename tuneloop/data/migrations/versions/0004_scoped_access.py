"""Scoped API tokens (stored hashed), who acted on traffic, and where feedback came from.

- ``api_tokens``: named tokens with a scope (``feedback`` or ``admin``), kept as SHA-256 digests.
  A plain-text ``api_token`` setting left by older versions becomes the admin token ``legacy``
  (hashed) and the plain text is deleted.
- ``feedback.source`` (api: its receipt verified; import: ``tuneloop import``; raw: stored as found)
  and ``feedback.user_id`` (the per-user rate limit counts by it; older rows keep NULL and are
  found by their payload).
- ``rollout_events.actor``: the named token, user or flow that moved traffic.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column(
            "token_hash", sa.String(64), nullable=False, unique=True, comment="SHA-256 of the token; never the token."
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    )
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=True))
        batch.add_column(sa.Column("user_id", sa.String(128), nullable=True))
    op.create_index("ix_feedback_user_received", "feedback", ["user_id", "received_at"])
    with op.batch_alter_table("rollout_events") as batch:
        batch.add_column(sa.Column("actor", sa.String(128), nullable=True))
    _hash_legacy_token()


def _hash_legacy_token() -> None:
    bind = op.get_bind()
    row = bind.execute(sa.text("SELECT value FROM settings WHERE key = 'api_token'")).first()
    if row is None:
        return
    bind.execute(
        sa.text("INSERT INTO api_tokens (name, scope, token_hash, created_at) VALUES ('legacy', 'admin', :h, :at)"),
        {"h": hashlib.sha256(row[0].encode()).hexdigest(), "at": datetime.now(UTC)},
    )
    bind.execute(sa.text("DELETE FROM settings WHERE key = 'api_token'"))


def downgrade() -> None:
    with op.batch_alter_table("rollout_events") as batch:
        batch.drop_column("actor")
    op.drop_index("ix_feedback_user_received", "feedback")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("user_id")
        batch.drop_column("source")
    op.drop_table("api_tokens")
