"""The ORM and the migrations describe one schema: a column, index or table added to one of them
only fails here (Alembic's autogenerate comparison of a migrated database against the ORM)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, create_engine

import tuneloop.data.ops_tables  # noqa: F401  (its tables join the feedback store's metadata)
from tuneloop.data import migrations
from tuneloop.data.feedback import Base


def _differences(url: str, metadata: MetaData) -> list:
    engine = create_engine(url)
    try:
        migrations.upgrade(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    # the migrations' own bookkeeping table is not part of the ORM
    return [d for d in diff if not (d[0] == "remove_table" and d[1].name == migrations.VERSION_TABLE)]


def test_the_migrations_build_exactly_the_orm_schema_on_sqlite(tmp_path):
    assert _differences(f"sqlite:///{tmp_path / 'f.db'}", Base.metadata) == []


@pytest.mark.postgres
def test_the_migrations_build_exactly_the_orm_schema_on_postgres(postgres_url):
    assert _differences(postgres_url, Base.metadata) == []


def test_a_column_in_the_orm_only_is_caught(tmp_path):
    # the check itself can fail: a copy of the ORM with one extra column differs from the migrated database
    metadata = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    Table("feedback", metadata, Column("orm_only", Integer), extend_existing=True)
    diff = _differences(f"sqlite:///{tmp_path / 'f.db'}", metadata)
    assert [(d[0], d[3].name) for d in diff] == [("add_column", "orm_only")]
