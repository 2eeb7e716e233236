"""The migrations create exactly the tables the code describes (llm_dispatcher/db/models.py), on every
database: a column added to one and not the other fails here, not in production."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from llm_dispatcher.db import Store
from llm_dispatcher.db.models import metadata


async def test_the_migrated_schema_matches_the_table_models(store: Store):
    def diff(sync_conn):
        context = MigrationContext.configure(sync_conn, opts={"compare_type": False})
        return [d for d in compare_metadata(context, metadata) if not _ignored(d)]

    async with store.engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []


def _ignored(difference) -> bool:
    """alembic's own version table is not ours."""
    op = difference[0] if isinstance(difference, tuple) else difference[0][0]
    table = difference[1] if isinstance(difference, tuple) and len(difference) > 1 else None
    return op == "remove_table" and getattr(table, "name", "") == "alembic_version"
