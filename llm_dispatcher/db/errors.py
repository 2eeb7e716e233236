"""Errors raised by the storage layer. SQLAlchemy/driver exceptions never escape it untranslated.

StoreError                       admin-side problems (CLI, seeding)
├── TokenNotFoundError           no token with that name
└── DuplicateTokenError          name or token already registered
DatabaseUnavailableError         (errors.ServiceUnavailableError, 503) cannot reach / use the DB
"""

from __future__ import annotations

from llm_dispatcher.errors import ServiceUnavailableError


class StoreError(Exception):
    pass


class TokenNotFoundError(StoreError, LookupError):
    pass


class DuplicateTokenError(StoreError):
    pass


class DatabaseUnavailableError(ServiceUnavailableError):
    code = "database_unavailable"
