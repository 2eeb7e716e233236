"""What every step of a request needs, built once in the app's lifespan and passed down."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp

from llm_dispatcher.db import Store, TokenCache, UsageWriter
from sender.dispatch import Dispatcher
from sender.fairness import FairShare
from sender.limits import LimitStore
from sender.metrics import OTHER_MODEL, SenderMetrics
from sender.registry import Registry
from sender.routes import ForwardPaths
from sender.settings import SenderSettings


@dataclass
class SenderContext:
    settings: SenderSettings
    metrics: SenderMetrics
    registry: Registry
    dispatcher: Dispatcher
    tokens: TokenCache
    usage: UsageWriter
    session: aiohttp.ClientSession
    forward_paths: ForwardPaths
    store: Store
    fairness: FairShare
    limits: LimitStore
    draining: bool = False
    active: set[asyncio.Task] = field(default_factory=set)

    def model_label(self, model: str) -> str:
        """The `model` label for metrics: a known model's name, one bucket for everything else."""
        return model if model and self.registry.known(model) else OTHER_MODEL
