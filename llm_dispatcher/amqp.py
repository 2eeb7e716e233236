"""Broker plumbing both services share: connecting and declaring the topology of protocol.py."""

from __future__ import annotations

import logging

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from pamqp.commands import Basic

from llm_dispatcher import protocol

log = logging.getLogger(__name__)

RECONNECT_INTERVAL_S = 1.0


async def connect(url: str, name: str) -> AbstractRobustConnection:
    """A robust connection: it reconnects by itself and restores queues, bindings and consumers."""
    # Reconnect every second (aio-pika's default is 5 s: every waiting request gets 503 that much
    # longer after a broker restart); a `reconnect_interval` in the URL's query wins.
    interval = None if "reconnect_interval=" in url else RECONNECT_INTERVAL_S  # None: not passed
    return await aio_pika.connect_robust(url, client_properties={"connection_name": name}, reconnect_interval=interval)


async def declare_model_queue(channel: AbstractChannel, prefix: str, model: str, max_priority: int):
    return await channel.declare_queue(
        protocol.model_queue(prefix, model),
        durable=True,
        arguments=protocol.queue_arguments(max_priority),
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
