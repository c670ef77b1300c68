"""Request ids unique per kind, not across kinds.

The generation and classification services of one set-up share the operations database; their
request ids come from different clients and may coincide. ``feedback.request_id`` was unique over
the whole table (a classification record could be refused as a "retry" of a generation one); it is
now unique per ``(kind, request_id)``.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

NEW = "uq_feedback_kind_request_id"
# SQLite keeps column-level UNIQUE constraints unnamed: batch mode names them by this convention to drop them
CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_name() -> str:
    for constraint in sa.inspect(op.get_bind()).get_unique_constraints("feedback"):
        if constraint["column_names"] == ["request_id"]:
            return constraint["name"] or "uq_feedback_request_id"
    return ""


def upgrade() -> None:
    _swap(_old_name(), NEW, ["kind", "request_id"])


def downgrade() -> None:
    _swap(NEW, "uq_feedback_request_id", ["request_id"])


def _swap(old: str, new: str, columns: list[str]) -> None:
    if op.get_bind().dialect.name != "sqlite":  # a plain ALTER: the table, its rows and its trigger stay
        if old:
            op.drop_constraint(old, "feedback", type_="unique")
        op.create_unique_constraint(new, "feedback", columns)
        return
    # SQLite cannot drop a constraint: the table is rebuilt (rows, indexes kept), then its trigger restored
    with op.batch_alter_table("feedback", recreate="always", naming_convention=CONVENTION) as batch:
        if old:
            batch.drop_constraint(old, type_="unique")
        batch.create_unique_constraint(new, columns)
    op.execute("DROP TRIGGER IF EXISTS feedback_immutable")
    op.execute(
        "CREATE TRIGGER feedback_immutable BEFORE UPDATE ON feedback "
        "BEGIN SELECT RAISE(ABORT, 'feedback rows are immutable'); END"
    )
