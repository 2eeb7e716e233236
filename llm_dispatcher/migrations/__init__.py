"""Alembic migrations, run programmatically by `Store.migrate()` / `llm-dispatcher db upgrade`."""
