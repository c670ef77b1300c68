"""Alembic environment: runs on the connection handed over by ``tuneloop.data.migrations.upgrade``,
or, from the ``alembic`` command line, on ``sqlalchemy.url`` / ``TUNELOOP_FEEDBACK_URL``."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from tuneloop.data.migrations import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, render_as_batch=True, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()
else:
    url = context.config.get_main_option("sqlalchemy.url") or os.environ.get("TUNELOOP_FEEDBACK_URL")
    if not url:
        raise SystemExit("set sqlalchemy.url or TUNELOOP_FEEDBACK_URL")
    with create_engine(url).begin() as conn:
        context.configure(connection=conn, render_as_batch=True, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
