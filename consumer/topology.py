"""What a consumer holds on each broker node: the topology it declared there and its subscription."""

from __future__ import annotations

from dataclasses import dataclass

import aiormq
from aio_pika.abc import AbstractExchange, AbstractQueue

from consumer.settings import ConsumerSettings
from llm_dispatcher import amqp, protocol
from llm_dispatcher.nodes import Node


@dataclass(frozen=True, slots=True)
class Topology:
    """What the consumer declared on one broker node: its model queue there, the exchanges, its
    control queue there."""

    queue: AbstractQueue
    heartbeats: AbstractExchange
    control: AbstractQueue

    @classmethod
    async def declare(cls, link: amqp.BrokerLink, st: ConsumerSettings, control_name: str, node: int) -> Topology:
        channel = link.channel
        shape = await amqp.model_queue_shape(
            link.connection, st.queue_prefix, st.model, st.max_priority, st.fair_levels, node
        )
        queue = await amqp.declare_model_queue(channel, st.queue_prefix, st.model, shape, node)
        heartbeats = await amqp.declare_fanout(channel, protocol.heartbeat_exchange(st.queue_prefix))
        cancels = await amqp.declare_fanout(channel, protocol.cancel_exchange(st.queue_prefix))
        control = await channel.declare_queue(control_name, exclusive=True, auto_delete=True)
        await control.bind(cancels)
        return cls(queue, heartbeats, control)


@dataclass(slots=True)
class Pull:
    """The consumer on one broker node: what it declared there and its subscription to the model queue."""

    node: Node
    control_name: str
    topology: Topology | None = None
    tag: str | None = None  # the subscription's consumer tag while pulling
    raw: aiormq.abc.AbstractChannel | None = None
    prefetch: int = 1

    @property
    def link(self) -> amqp.BrokerLink:
        assert self.node.link is not None
        return self.node.link

    @property
    def usable(self) -> bool:
        return self.topology is not None and self.node.connected
