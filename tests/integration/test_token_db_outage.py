"""A token database that refuses connections: cached tokens keep working, a new token gets a generic
503 with Retry-After (no driver text, no database name), and the log says so once, not per request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import pytest
from sqlalchemy.engine import make_url

from devstack.net import free_port
from llm_dispatcher.db import Store, TokenCache
from llm_dispatcher.db.errors import DatabaseUnavailableError
from tests.fixtures.db import POSTGRES_URL


@pytest.fixture
def refusing_store():
    """PostgreSQL URL on a loopback port where nothing listens: every connection is refused."""
    return Store(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/secret_db_name")


async def test_a_db_refusing_connections_gives_a_generic_503_with_retry_after_and_logs_once(refusing_store, caplog):
    cache = TokenCache(refusing_store, ttl_s=10, retry_after_s=3)
    caplog.set_level(logging.WARNING)
    for _ in range(50):
        with pytest.raises(DatabaseUnavailableError) as info:
            await cache.authenticate("Bearer sk-llmd-never-seen")
        exc = info.value
        assert exc.status == 503 and exc.headers() == {"retry-after": "3"}
        text = str(exc.body())
        for leak in ("sqlalche", "asyncpg", "secret_db_name", "Connect", "127.0.0.1", "Errno"):
            assert leak not in text, text
    records = [r for r in caplog.records if r.name == "llm_dispatcher.db.cache"]
    assert 1 <= len(records) <= 2  # the first failure in full; the rest counted, not repeated
    assert sum(1 for r in records if r.exc_info) == 1
    await refusing_store.dispose()


class TcpGate:
    """A loopback TCP forwarder in front of a real server: `close()` is the outage (connections
    refused, open ones cut), `open()` the recovery."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.port = target, free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_cached_tokens_keep_working_and_new_ones_get_503_while_postgresql_refuses_connections(caplog):
    url = make_url(POSTGRES_URL)
    gate = TcpGate((url.host or "127.0.0.1", url.port or 5432))
    await gate.open()
    store = Store(url.set(host="127.0.0.1", port=gate.port).render_as_string(hide_password=False))
    try:
        await store.migrate()
        _, plaintext = await store.create_token(f"cached-{uuid.uuid4().hex[:8]}", priority=5, threshold=10)
        cache = TokenCache(store, ttl_s=0.0, retry_after_s=2)  # every call goes to the database
        assert (await cache.authenticate(f"Bearer {plaintext}")).priority == 5
        await gate.close()
        caplog.set_level(logging.WARNING)
        for _ in range(20):  # the outage: the stale entry is served
            assert (await cache.authenticate(f"Bearer {plaintext}")).priority == 5
        assert cache.stale_served == 20
        with pytest.raises(DatabaseUnavailableError) as info:
            await cache.authenticate("Bearer sk-llmd-not-cached")
        assert info.value.headers() == {"retry-after": "2"} and "unavailable" in info.value.message
        await gate.open()  # recovery: lookups go to the database again, and the log says so
        assert (await cache.authenticate(f"Bearer {plaintext}")).priority == 5
        assert any("working again" in r.getMessage() for r in caplog.records)
    finally:
        await store.dispose()
