"""What every service's Prometheus registry starts with: process and platform metrics, a build-info
metric, and no `*_created` series (they double the series count and nobody queries them)."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from importlib import metadata

import prometheus_client
from prometheus_client import CollectorRegistry, Info, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

prometheus_client.disable_created_metrics()


def version() -> str:
    try:
        return metadata.version("llm-dispatcher")
    except metadata.PackageNotFoundError:
        return "unknown"


def new_registry(service: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    Info("llmd_build", "Version of this service", registry=registry).info(
        {"service": service, "version": version(), "python": platform.python_version()}
    )
    return registry


class CounterFunction(Collector):
    """A counter whose value a function returns (a running total kept elsewhere), exported `_total`."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float], registry: CollectorRegistry):
        self._name, self._doc, self._read = name, documentation, read
        registry.register(self)

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._doc, value=self._read())
