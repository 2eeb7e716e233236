"""Watches one vLLM: /health and /metrics on a fixed interval (never a hot loop)."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from consumer.vllm_metrics import VllmScrape, tokens_per_second

log = logging.getLogger(__name__)


class VllmWatcher:
    """Keeps the latest view of a replica. `healthy` drops at once on a refusal or a non-200 /health,
    and after `unhealthy_after_s` of failed probes (timeouts); it recovers on the next good probe."""

    def __init__(
        self,
        base_url: str,
        *,
        interval_s: float = 0.5,
        stale_after_s: float = 5.0,
        unhealthy_after_s: float = 2.0,
        on_change=None,
        metrics=None,
        labels: tuple[str, str] = ("", ""),
    ):
        self.base_url = base_url.rstrip("/")
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s
        self.unhealthy_after_s = unhealthy_after_s
        self.on_change = on_change or (lambda: None)
        self._metrics = metrics
        self._labels = labels
        self.healthy = False
        self.last_health_ok = 0.0
        self.latest: VllmScrape | None = None
        self._window: list[VllmScrape] = []  # recent scrapes, for a throughput over ~2 s
        self.tokens_per_second: float | None = None
        self.max_model_len: int | None = None
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def metrics_fresh(self) -> bool:
        return self.latest is not None and time.monotonic() - self.latest.at <= self.stale_after_s

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(0.2, min(1.0, self.unhealthy_after_s / 2)))
        self._session = aiohttp.ClientSession(timeout=timeout)
        await self.poll_once()
        self._task = asyncio.create_task(self._run(), name="vllm-watcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll_once()
            except Exception:  # never let the watcher die silently
                log.exception("vLLM watcher poll failed")

    async def poll_once(self) -> None:
        assert self._session is not None
        before = (self.healthy, self.metrics_fresh)
        await asyncio.gather(self._probe_health(), self._scrape())
        if self.max_model_len is None and self.healthy:
            await self._read_models()
        self._export()
        if (self.healthy, self.metrics_fresh) != before:
            log.info("vLLM %s healthy=%s metrics_fresh=%s", self.base_url, self.healthy, self.metrics_fresh)
        self.on_change()

    async def _probe_health(self) -> None:
        assert self._session is not None
        try:
            async with self._session.get(self.base_url + "/health") as resp:
                await resp.read()
                ok = resp.status == 200
        except TimeoutError:
            self._count_error("health")
            if time.monotonic() - self.last_health_ok > self.unhealthy_after_s:
                self.healthy = False
            return
        except aiohttp.ClientError:
            ok = False
        if ok:
            self.healthy = True
            self.last_health_ok = time.monotonic()
        else:
            self._count_error("health")
            self.healthy = False

    async def _scrape(self) -> None:
        assert self._session is not None
        try:
            async with self._session.get(self.base_url + "/metrics") as resp:
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                text = await resp.text()
            scrape = VllmScrape.parse(text, time.monotonic())
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            self._count_error("metrics")
            log.debug("scrape of %s/metrics failed: %r", self.base_url, exc)
            return
        self._window.append(scrape)
        while len(self._window) > 2 and scrape.at - self._window[1].at >= 2.0:
            self._window.pop(0)
        self.tokens_per_second = tokens_per_second(self._window[0], scrape) if len(self._window) > 1 else None
        self.latest = scrape

    async def _read_models(self) -> None:
        assert self._session is not None
        try:
            async with self._session.get(self.base_url + "/v1/models") as resp:
                data = await resp.json(content_type=None)
            lens = [m.get("max_model_len") for m in data.get("data", []) if m.get("max_model_len")]
            self.max_model_len = int(lens[0]) if lens else None
        except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError):
            pass

    def _count_error(self, endpoint: str) -> None:
        if self._metrics is not None:
            self._metrics.scrape_errors.labels(*self._labels, endpoint).inc()

    def _export(self) -> None:
        m = self._metrics
        if m is None:
            return
        lab = self._labels
        m.healthy.labels(*lab).set(1 if self.healthy else 0)
        m.metrics_fresh.labels(*lab).set(1 if self.metrics_fresh else 0)
        s = self.latest
        if s is not None:
            for gauge, value in (
                (m.vllm_running, s.running),
                (m.vllm_waiting, s.waiting),
                (m.vllm_kv, s.kv_cache_usage),
                (m.vllm_tps, self.tokens_per_second),
            ):
                if value is not None:
                    gauge.labels(*lab).set(value)
