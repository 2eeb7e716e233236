"""Storage: hashed API tokens (with a TTL-cached authenticator) and batched usage records.

SQLAlchemy 2 async over SQLite (default), PostgreSQL (asyncpg) or MySQL/MariaDB (aiomysql);
the schema is managed by the alembic migrations in `llm_dispatcher/migrations`.

    models.py       tables and the records the rest of the project sees
    engine.py       the async engine, driver errors translated (Database)
    migrate.py      alembic upgrade from code, serialised across processes
    tokens.py       the one validation of a token's fields; the tokens table
    tokens_file.py  the one loader of token files (JSON or YAML)
    usage.py        the usage table and the batching UsageWriter
    store.py        Store: the facade composed of the three
    cache.py        TokenCache: the TTL-cached authenticator in front of the store
"""

from llm_dispatcher.db.cache import TokenCache, parse_bearer
from llm_dispatcher.db.errors import (
    DatabaseUnavailableError,
    DuplicateTokenError,
    StoreError,
    TokenNotFoundError,
)
from llm_dispatcher.db.models import TokenRecord, UsageRecord
from llm_dispatcher.db.store import Store
from llm_dispatcher.db.tokens import TOKEN_PREFIX, UNSET, generate_token, hash_token
from llm_dispatcher.db.tokens_file import load_tokens_file
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
    "load_tokens_file",
    "parse_bearer",
]
