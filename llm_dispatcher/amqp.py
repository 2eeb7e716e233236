"""Broker plumbing both services share: connecting and declaring the topology of protocol.py."""

from __future__ import annotations

import logging

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from llm_dispatcher import protocol

log = logging.getLogger(__name__)


async def connect(url: str, name: str) -> AbstractRobustConnection:
    """A robust connection: it reconnects by itself and restores queues, bindings and consumers."""
    return await aio_pika.connect_robust(url, client_properties={"connection_name": name})


async def declare_model_queue(channel: AbstractChannel, prefix: str, model: str, max_priority: int):
    return await channel.declare_queue(
        protocol.model_queue(prefix, model),
        durable=True,
        arguments=protocol.queue_arguments(max_priority),
    )


async def declare_fanout(channel: AbstractChannel, name: str) -> AbstractExchange:
    return await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=False, auto_delete=False)
