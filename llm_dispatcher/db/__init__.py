"""Storage: hashed API tokens (with a TTL-cached authenticator) and batched usage records.

SQLAlchemy 2 async over SQLite (default), PostgreSQL (asyncpg) or MySQL/MariaDB (aiomysql);
the schema is managed by the alembic migrations in `llm_dispatcher/migrations`.
"""

from llm_dispatcher.db.cache import TokenCache, parse_bearer
from llm_dispatcher.db.errors import (
    DatabaseUnavailableError,
    DuplicateTokenError,
    StoreError,
    TokenNotFoundError,
)
from llm_dispatcher.db.models import TokenRecord, UsageRecord
from llm_dispatcher.db.store import TOKEN_PREFIX, UNSET, Store, generate_token, hash_token
from llm_dispatcher.db.usage import UsageWriter

__all__ = [
    "TOKEN_PREFIX",
    "UNSET",
    "DatabaseUnavailableError",
    "DuplicateTokenError",
    "Store",
    "StoreError",
    "TokenCache",
    "TokenNotFoundError",
    "TokenRecord",
    "UsageRecord",
    "UsageWriter",
    "generate_token",
    "hash_token",
    "parse_bearer",
]
