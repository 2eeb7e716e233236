"""Integration tier: one part of the product against real services, not a whole stack. The token store,
migrations and usage writer against SQLite, PostgreSQL and MariaDB for real (each test in a database of
its own), the token CLI against a SQLite file, and a database that refuses connections. Needs the
servers of `make services` (`LLMD_TEST_POSTGRES_URL`, `LLMD_TEST_MYSQL_URL`; a server that is down skips
its tests with the reason shown). Run: `.venv/bin/python -m pytest tests/integration` (or `-m integration`)."""
