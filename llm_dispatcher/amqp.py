"""Broker plumbing both services share: the connection's life cycle, declaring the topology of
protocol.py, publishing on the hot path, and the one place where aio-pika/aiormq errors become the
project's (`broker_errors`, as httpx maps httpcore's exceptions at its transport).

    link = await BrokerLink.open(url, "sender:...", on_lost=..., on_restored=...)
    link.connected          False from a lost connection until it is restored (never raised)
    await link.publish(...) BrokerUnavailableError when the broker cannot take it
    await link.close()      the connection closed (not a loss: no on_lost callback)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from pamqp.commands import Basic

from llm_dispatcher import protocol
from llm_dispatcher.amqp_io import CoalescingRobustConnection
from llm_dispatcher.errors import BrokerUnavailableError

log = logging.getLogger(__name__)

RECONNECT_INTERVAL_S = 1.0
HEARTBEAT_S = 5
M = TypeVar("M", bound=protocol.Message)

# What a broker operation raises when the broker is away or the channel is closing.
_BROKER_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, asyncio.TimeoutError)


@contextlib.contextmanager
def broker_errors(
    retry_after_s: float | None = None, what: str = "the message broker is unreachable"
) -> Iterator[None]:
    """aio-pika / aiormq / socket failures become BrokerUnavailableError (503 at the HTTP edge)."""
    try:
        yield
    except _BROKER_ERRORS as exc:
        raise BrokerUnavailableError(what, retry_after=retry_after_s) from exc


def decode(cls: type[M], body: bytes, what: str) -> M | None:
    """A message off the broker, or None (logged, dropped) if it is not one: a malformed message is
    never retried and never stops a consumer."""
    try:
        return cls.loads(body)
    except protocol.MalformedMessage as exc:
        log.error("malformed %s dropped: %s (%r)", what, exc, body[:200])
        return None


class BrokerLink:
    """A robust connection and its channel, with what each service keeps around them."""

    def __init__(self, connection: AbstractRobustConnection, channel: AbstractChannel, retry_after_s: float):
        self.connection = connection
        self.channel = channel
        self.retry_after_s = retry_after_s
        self.connected = True
        self._closing = False
        self._on_lost: list[Callable[[], None]] = []
        self._on_restored: list[Callable[[], None]] = []
        connection.close_callbacks.add(self._lost)
        connection.reconnect_callbacks.add(self._restored)

    @classmethod
    async def open(cls, url: str, name: str, *, retry_after_s: float = 2.0) -> BrokerLink:
        connection = await connect(url, name)
        channel = await connection.channel(publisher_confirms=False)
        return cls(connection, channel, retry_after_s)

    def on_lost(self, callback: Callable[[], None]) -> None:
        self._on_lost.append(callback)

    def on_restored(self, callback: Callable[[], None]) -> None:
        self._on_restored.append(callback)

    def _lost(self, *_args: Any) -> None:
        if self._closing:
            return  # our own close
        was, self.connected = self.connected, False
        if was:
            log.warning("broker connection lost; reconnecting")
        for callback in self._on_lost:
            callback()

    def _restored(self, *_args: Any) -> None:
        self.connected = True
        log.info("broker connection restored")
        for callback in self._on_restored:
            callback()

    async def raw(self) -> aiormq.abc.AbstractChannel:
        with broker_errors(self.retry_after_s):
            return await self.channel.get_underlay_channel()

    async def publish(self, routing_key: str, body: bytes, **kwargs: Any) -> None:
        if not self.connected:
            raise BrokerUnavailableError("the message broker is unreachable", retry_after=self.retry_after_s)
        with broker_errors(self.retry_after_s):
            await publish(self.channel, routing_key, body, **kwargs)

    async def close(self) -> None:
        """Close the connection: our own close, not a loss (no on_lost callback)."""
        self._closing = True
        self.connected = False
        with contextlib.suppress(Exception):
            await self.connection.close()


async def connect(url: str, name: str) -> AbstractRobustConnection:
    """A robust connection: it reconnects by itself and restores queues, bindings and consumers."""
    # Reconnect every second (aio-pika's default is 5 s: every waiting request gets 503 that much
    # longer after a broker restart); a `reconnect_interval` in the URL's query wins.
    interval = None if "reconnect_interval=" in url else RECONNECT_INTERVAL_S  # None: not passed
    # AMQP heartbeats every few seconds (the library's default is 60 s): a node lost without closing its
    # connections (a machine gone, a partition) is noticed after (heartbeat + 1) x 3 s, 18 s, not 183 s.
    heartbeat = None if "heartbeat=" in url else HEARTBEAT_S
    return await aio_pika.connect_robust(
        url,
        client_properties={"connection_name": name},
        reconnect_interval=interval,
        heartbeat=heartbeat,
        connection_class=CoalescingRobustConnection,  # the frames of one loop turn in one socket write
    )


@dataclasses.dataclass(frozen=True, slots=True)
class QueueShape:
    """How a model queue is declared: its arguments (None: it exists with others, declare it passively)
    and the sub-levels per priority band its tickets may use."""

    arguments: dict[str, Any] | None
    levels: int


async def model_queue_shape(
    connection: AbstractRobustConnection, prefix: str, model: str, max_priority: int, levels: int, node: int = 0
) -> QueueShape:
    """Declares the model's queue with `levels` sub-levels per band. A queue that already exists with
    other arguments (declared before sub-levels, or with another LLMD_FAIR_LEVELS) is used as it is,
    first come first served within a band (band priorities fit any such queue), with a warning: RabbitMQ
    cannot change a queue's arguments, only a new queue can have them. Each attempt is made on a channel
    of its own, since a refused declaration closes its channel."""
    name = protocol.model_queue(prefix, model, node)
    for shape in (QueueShape(protocol.queue_arguments(max_priority, levels), levels), QueueShape(None, 1)):
        try:
            async with connection.channel() as probe:
                await declare_model_queue(probe, prefix, model, shape, node)
        except aiormq.exceptions.ChannelPreconditionFailed:
            continue
        if shape.levels != levels:
            log.warning(
                "queue %s exists with other arguments than x-max-priority %d (%d fair-share levels per band): "
                "used as it is, first come first served within a band; delete it while idle so that it is "
                "declared anew",
                name,
                protocol.queue_arguments(max_priority, levels)["x-max-priority"],
                levels,
            )
        return shape
    raise AssertionError("a passive declaration is never refused for its arguments")


async def declare_model_queue(channel: AbstractChannel, prefix: str, model: str, shape: QueueShape, node: int = 0):
    """The model's queue on broker node `node`, declared over a connection to that node (RabbitMQ
    places a classic queue on the node of the connection that declares it first)."""
    return await channel.declare_queue(
        protocol.model_queue(prefix, model, node),
        durable=True,
        passive=shape.arguments is None,
        arguments=shape.arguments,
    )


async def declare_fanout(channel: AbstractChannel, name: str) -> AbstractExchange:
    return await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=False, auto_delete=False)


async def publish(
    channel: AbstractChannel,
    routing_key: str,
    body: bytes,
    *,
    exchange: str = "",
    mandatory: bool = False,
    expiration_s: float | None = None,
    message_type: str | None = None,
    **properties,
) -> None:
    """Publish on the hot path: straight to the underlying aiormq channel, without building an
    aio-pika Message and without waiting for the socket to drain (frames stay in order)."""
    raw = await channel.get_underlay_channel()
    await raw.basic_publish(  # type: ignore[call-arg]  # `wait` is on the concrete aiormq channel
        body,
        exchange=exchange,
        routing_key=routing_key,
        mandatory=mandatory,
        properties=Basic.Properties(
            content_type="application/json",
            delivery_mode=1,
            expiration=None if expiration_s is None else str(max(0, int(expiration_s * 1000))),
            message_type=message_type,
            message_id=properties.pop("message_id", None) or properties.get("correlation_id"),
            **properties,
        ),
        wait=False,
    )
