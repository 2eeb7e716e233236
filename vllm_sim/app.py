"""The simulator's HTTP face: routing, the plain and control routes, and the steps every request takes.

Routes (vLLM 0.32's shapes): GET /health /version /metrics /v1/models; POST /v1/chat/completions
/v1/completions /v1/embeddings. Control routes for tests: GET|POST /sim/config, GET /sim/stats,
POST /sim/die, POST /sim/revive.

What each concern lives in: request checks ``validation``, error bodies ``errors``, response bytes
``render``, the two generation paths ``zero_delay`` and ``batched`` (through ``engine``), faults
``faults``, embeddings ``embeddings``, vLLM's /metrics ``metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import orjson

from vllm_sim.asgi import Handler, Headers, Receive, Scope, Send, header, read_body, send_json
from vllm_sim.batched import Batched
from vllm_sim.config import SimConfig
from vllm_sim.embeddings import embeddings_body, parse_embedding_request
from vllm_sim.engine import Engine
from vllm_sim.errors import ApiError, bad_request, engine_dead
from vllm_sim.faults import Faults
from vllm_sim.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from vllm_sim.metrics import SimMetrics
from vllm_sim.render import Renderer, models_body
from vllm_sim.text import TokenSource
from vllm_sim.validation import check_model, decode_json, parse_job
from vllm_sim.zero_delay import ZeroDelay

log = logging.getLogger(__name__)


class SimApp:
    """One simulated vLLM replica. ``create_app(config)`` builds it; it is an ASGI callable."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.metrics = SimMetrics(config.served_model_names[0])
        self.engine = Engine(config, self.metrics)
        self.tokens = TokenSource(config.seed)
        self.faults = Faults(config)
        self._created = int(time.time())
        self._started = False
        self._ready_at = 0.0
        self.dead = False
        self.on_exit: Callable[[], None] | None = None  # set by the server runner (CLI or fixture)
        self._models_body = models_body(config, self._created)
        # vLLM 0.32: "vllm-<version>-<8 hex digits of a hash of the engine config>".
        self.fingerprint = f"vllm-{config.version}-{zlib.crc32(repr(config.as_dict()).encode()):08x}"
        render = Renderer(self.fingerprint)
        self._at_once = ZeroDelay(config, self.metrics, self.tokens, render)
        self._in_engine = Batched(config, self.metrics, self.tokens, render, self.engine)
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/health"): self._health,
            ("GET", "/version"): self._version,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("GET", "/sim/config"): self._get_config,
            ("POST", "/sim/config"): self._set_config,
            ("GET", "/sim/stats"): self._stats,
            ("POST", "/sim/die"): self._die,
            ("POST", "/sim/revive"): self._revive,
        }
        self._paths = {path for _, path in self._routes}

    # -- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if not self._started:
                await self.startup()
            handler = self._routes.get((scope["method"], scope["path"]))
            if handler is None:
                if scope["path"] in self._paths:
                    await send_json(send, 405, b'{"detail":"Method Not Allowed"}')
                else:
                    await send_json(send, 404, b'{"detail":"Not Found"}')
                return
            await handler(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.startup()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.shutdown()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def startup(self) -> None:
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        self._ready_at = loop.time() + self.config.startup_delay
        self.engine.start()
        if threading.current_thread() is threading.main_thread():
            try:
                loop.add_signal_handler(signal.SIGUSR1, self.die)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - platform without signals
                pass

    async def shutdown(self) -> None:
        await self.engine.stop()

    def die(self) -> None:
        """The engine is dead: /health answers 503, in-flight and new requests fail."""
        if not self.dead:
            log.warning("simulated engine death")
        self.dead = True
        self.engine.fail_all("error")

    @property
    def ready(self) -> bool:
        return asyncio.get_running_loop().time() >= self._ready_at

    # -- helpers -----------------------------------------------------------------------------
    async def _read_json(self, receive: Receive) -> dict[str, Any]:
        return decode_json(await read_body(receive))

    def _unavailable(self) -> ApiError | None:
        if self.dead:
            return engine_dead()
        if not self.ready:
            return ApiError(503, "The server is starting up.")
        return None

    def _auth_error(self, scope: Scope) -> bool:
        key = self.config.api_key
        if key is None:
            return False
        return header(scope, b"authorization") != b"Bearer " + key.encode()

    def _request_id(self, scope: Scope) -> tuple[str, Headers]:
        given = header(scope, b"x-request-id")
        if given:
            rid = given.decode("latin-1")
            echoed = given
        else:  # vLLM: the response id gets 16 hex digits, the echoed header (middleware) a full uuid4 hex
            echoed = uuid.uuid4().hex.encode()
            rid = echoed[:16].decode()
        extra = [(b"x-request-id", echoed)] if self.config.enable_request_id_headers else []
        return rid, extra

    # -- plain routes ------------------------------------------------------------------------
    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 503 if self.dead or not self.ready else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def _version(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, orjson.dumps({"version": self.config.version}))

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.metrics.render()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", METRICS_CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._auth_error(scope):
            await send_json(send, 401, b'{"error":"Unauthorized"}')
            return
        await send_json(send, 200, self._models_body)

    # -- control routes ----------------------------------------------------------------------
    async def _get_config(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, orjson.dumps(self.config.as_dict()))

    async def _set_config(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await self._read_json(receive)
            try:
                self.config.update(body)
            except ValueError as exc:
                raise bad_request(str(exc)) from exc
        except ApiError as exc:
            await send_json(send, exc.status, exc.body())
            return
        await send_json(send, 200, orjson.dumps(self.config.as_dict()))

    async def _stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        engine = self.engine
        stats = {
            "running": [r.request_id for r in engine.running],
            "waiting": [r.request_id for r in engine.waiting_requests()],
            "admitted": list(engine.admission_log),
            "kv_cache_usage": engine.kv_cache_usage(),
            "steps": engine.steps,
            "healthy": not self.dead and self.ready,
        }
        await send_json(send, 200, orjson.dumps(stats))

    async def _die(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(receive)
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            body = {}
        exit_ = isinstance(body, dict) and bool(body.get("exit"))
        self.die()
        await send_json(send, 200, orjson.dumps({"dead": True, "exit": exit_}))
        if exit_ and self.on_exit is not None:
            self.on_exit()

    async def _revive(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.dead = False
        await send_json(send, 200, b'{"dead":false}')

    # -- generation --------------------------------------------------------------------------
    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(scope, receive, send, "chat")

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(scope, receive, send, "completion")

    async def _admit_request(self, scope: Scope, send: Send) -> bool:
        """The checks every inference route makes first: API key (401 sent here, False), engine
        available (raises its ApiError)."""
        if self._auth_error(scope):
            await send_json(send, 401, b'{"error":"Unauthorized"}')
            return False
        unavailable = self._unavailable()
        if unavailable is not None:
            raise unavailable
        return True

    async def _generate(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        request_id, extra_headers = self._request_id(scope)
        try:
            if not await self._admit_request(scope, send):
                return
            job = parse_job(self.config, kind, await self._read_json(receive), request_id)
            failure = self.faults.failure()
            if failure is not None:
                self.metrics.request_success["error"].inc()
                raise failure
        except ApiError as exc:
            await send_json(send, exc.status, exc.body(), extra_headers)
            return
        drop_at = self.faults.drop_at(sum(job.outputs))  # token events (of all choices) sent before a drop
        if self.config.zero_delay:
            await self._at_once(job, send, extra_headers, drop_at)
        else:
            await self._in_engine(job, receive, send, extra_headers, drop_at)

    # -- embeddings --------------------------------------------------------------------------
    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id, headers = self._request_id(scope)
        try:
            if not await self._admit_request(scope, send):
                return
            body = await self._read_json(receive)
            model = check_model(self.config, body)
            request = parse_embedding_request(body)
            failure = self.faults.failure()
            if failure is not None:
                raise failure
        except ApiError as exc:
            await send_json(send, exc.status, exc.body(), headers)
            return
        cfg = self.config
        self.metrics.prompt_tokens.inc(request.tokens)
        if cfg.prefill_per_token:
            await asyncio.sleep(cfg.prefill_per_token * request.tokens)
        self.metrics.request_success["stop"].inc()
        await send_json(send, 200, embeddings_body(cfg, request_id, model, request), headers)


def create_app(config: SimConfig | None = None) -> SimApp:
    """Build one simulated vLLM replica (an ASGI app) from its settings."""
    return SimApp(config or SimConfig())
