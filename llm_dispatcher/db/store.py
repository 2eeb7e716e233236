"""The store: one async engine, used by the sender and the `tokens`/`db` CLI.

`Store` is the facade the rest of the project uses; each concern lives in its own module and is a
piece of it:

    engine.Database       the engine, per-backend settings, driver errors translated
    ├── migrate.Migrations   migrate(), current_revision()           (alembic, serialised)
    ├── tokens.TokenStore    create/get/list/update/revoke/import     (hashed tokens)
    ├── usage.UsageStore     insert_usage()                           (fed by usage.UsageWriter)
    ├── usage_report.UsageReportStore  usage_aggregate(), usage_records()  (reports: CLI, admin API)
    └── batches.BatchStore   files, batches and their lines           (the Files and Batch APIs)
"""

from __future__ import annotations

from llm_dispatcher.db.batches import BatchStore
from llm_dispatcher.db.migrate import Migrations
from llm_dispatcher.db.tokens import TokenStore, hash_token
from llm_dispatcher.db.usage import UsageStore
from llm_dispatcher.db.usage_report import UsageReportStore

__all__ = ["Store", "hash_token"]  # hash_token: still imported from here by db.cache


class Store(Migrations, TokenStore, UsageStore, UsageReportStore, BatchStore):
    """Owns the async engine. Build it in main()/lifespan, `await migrate()`, `await dispose()`."""
