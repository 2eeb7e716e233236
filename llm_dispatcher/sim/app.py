"""The simulator's HTTP face: a raw ASGI app (no framework, so it is never a benchmark's bottleneck).

Routes (vLLM 0.32's shapes): GET /health /version /metrics /v1/models; POST /v1/chat/completions
/v1/completions /v1/embeddings. Control routes for tests: GET|POST /sim/config, GET /sim/stats,
POST /sim/die, POST /sim/revive.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import signal
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from llm_dispatcher.sim.config import SimConfig
from llm_dispatcher.sim.engine import Engine, SimRequest
from llm_dispatcher.sim.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from llm_dispatcher.sim.metrics import SimMetrics
from llm_dispatcher.sim.text import TokenSource, chat_prompt, count_text_tokens, embedding, natural_lengths

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions
MAX_N_SEQUENCES = 16384  # vLLM's VLLM_MAX_N_SEQUENCES default: the most choices (n) one request may ask for
JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream; charset=utf-8")]
DONE = b"data: [DONE]\n\n"


class SimulatedDrop(Exception):
    """Raised after a partial response so that uvicorn closes the connection (fault injection)."""


class DropLogFilter(logging.Filter):
    """Keeps uvicorn from logging a traceback for every injected connection drop."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SimulatedDrop)


def install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DropLogFilter) for f in logger.filters):
        logger.addFilter(DropLogFilter())


class ApiError(Exception):
    """An error rendered as vLLM's envelope {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, err_type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.err_type = err_type or error_type(status)

    def body(self) -> bytes:
        return error_body(self.status, self.message, self.err_type, self.param)


def error_type(status: int) -> str:
    """vLLM's names: 400 BadRequestError, 404 NotFoundError, 500 InternalServerError, ..."""
    return "".join(HTTPStatus(status).phrase.split()) + "Error" if status != 500 else "InternalServerError"


def error_body(status: int, message: str, err_type: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": err_type or error_type(status), "param": param, "code": status}}
    )


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def param_error(message: str, param: str, value: Any = ..., *, status: int = 400) -> ApiError:
    """vLLM's own request checks: ``"<message> (parameter=<param>, value=<value>)"``, type BadRequestError."""
    suffix = f"(parameter={param})" if value is ... else f"(parameter={param}, value={value})"
    return ApiError(status, f"{message} {suffix}", param=param)


def _pydantic_input(value: Any) -> Any:
    """How FastAPI's validation errors print an input: containers abbreviated, scalars as they are."""
    if isinstance(value, dict):
        return f"<dict of {len(value)} items>"
    if isinstance(value, list):
        return f"<list of {len(value)} items>"
    return value


def validation_error(kind: str, loc: str, msg: str, value: Any, ctx: dict[str, Any] | None = None) -> ApiError:
    """A request-schema (pydantic) error as vLLM 0.32 renders it: type "Bad Request", param the location.

    e.g. ``1 validation error:\n  {'type': 'list_type', 'loc': 'body.messages', 'msg': ..., 'input': 'x'}``
    """
    detail: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": _pydantic_input(value)}
    if ctx is not None:
        detail["ctx"] = ctx
    return ApiError(400, f"1 validation error:\n  {detail!r}", param=loc, err_type="Bad Request")


def _lax_int(body: dict[str, Any], key: str) -> int | None:
    """Pydantic's lax int: ints, integral floats and numeric strings pass; anything else is a schema error."""
    value = body.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    loc = f"body.{key}"
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise validation_error(
            "int_from_float", loc, "Input should be a valid integer, got a number with a fractional part", value
        )
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise validation_error(
                "int_parsing", loc, "Input should be a valid integer, unable to parse string as an integer", value
            ) from None
    raise validation_error("int_type", loc, "Input should be a valid integer", value)


@dataclass(slots=True)
class Job:
    """One validated generation request."""

    kind: str  # "chat" or "completion"
    request_id: str
    model: str
    prompt_text: str
    prompt_tokens: int
    outputs: list[int]  # output tokens of each choice (n = len(outputs))
    finishes: list[str]  # each choice's finish reason: "stop" (natural end) or "length"
    stream: bool
    include_usage: bool
    priority: int
    created: int

    @property
    def n(self) -> int:
        return len(self.outputs)


def _opt_int(body: dict[str, Any], key: str, minimum: int | None = None) -> int | None:
    value = _lax_int(body, key)
    if value is not None and minimum is not None and value < minimum:
        raise param_error(f"{key} must be at least {minimum}, got {value}.", key, value)
    return value


def _opt_bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise validation_error("bool_type", f"body.{key}", "Input should be a valid boolean", value)
    return value


def _headers_get(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class SimApp:
    """One simulated vLLM replica. ``create_app(config)`` builds it; it is an ASGI callable."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.metrics = SimMetrics(config.served_model_names[0])
        self.engine = Engine(config, self.metrics)
        self.tokens = TokenSource(config.seed)
        self._fault_rng = random.Random(config.seed)
        self._drop_rng = random.Random(config.seed + 1)
        self._created = int(time.time())
        self._started = False
        self._ready_at = 0.0
        self.dead = False
        self.on_exit: Callable[[], None] | None = None  # set by the server runner (CLI or fixture)
        self._models_body = self._build_models()
        # vLLM 0.32: "vllm-<version>-<8 hex digits of a hash of the engine config>".
        self.fingerprint = f"vllm-{config.version}-{zlib.crc32(repr(config.as_dict()).encode()):08x}"
        self._fingerprint_json = orjson.dumps(self.fingerprint)
        self._routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
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
                    await self._send_json(send, 405, b'{"detail":"Method Not Allowed"}')
                else:
                    await self._send_json(send, 404, b'{"detail":"Not Found"}')
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
    @staticmethod
    async def _send_json(
        send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*JSON, (b"content-length", str(len(body)).encode()), *(headers or ())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _read_body(receive: Receive) -> bytes:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b""
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _read_json(self, receive: Receive) -> dict[str, Any]:
        raw = await self._read_body(receive)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # FastAPI decodes with the json module: its message and position make vLLM's error.
            try:
                body = json.loads(raw)
            except ValueError as exc:
                pos = getattr(exc, "pos", 0)
                msg = getattr(exc, "msg", str(exc))
                raise validation_error("json_invalid", f"body.{pos}", "JSON decode error", {}, {"error": msg}) from None
        if not isinstance(body, dict):
            raise validation_error(
                "model_attributes_type",
                "body",
                "Input should be a valid dictionary or object to extract fields from",
                body,
            )
        return body

    def _check_model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if model is None:
            return self.config.served_model_names[0]
        if not isinstance(model, str):
            raise validation_error("string_type", "body.model", "Input should be a valid string", model)
        names = self.config.served_model_names
        if model not in names:
            raise ApiError(
                404,
                f"The model `{model}` does not exist. Valid aliases: {', '.join(names)}.",
                param="model",
                err_type="NotFoundError",
            )
        return model

    def _unavailable(self) -> ApiError | None:
        if self.dead:
            return ApiError(500, "EngineCore encountered an issue. See stack trace (above) for the root cause.")
        if not self.ready:
            return ApiError(503, "The server is starting up.")
        return None

    def _auth_error(self, scope: Scope) -> bool:
        key = self.config.api_key
        if key is None:
            return False
        return _headers_get(scope, b"authorization") != b"Bearer " + key.encode()

    def _request_id(self, scope: Scope) -> tuple[str, list[tuple[bytes, bytes]]]:
        header = _headers_get(scope, b"x-request-id")
        if header:
            rid = header.decode("latin-1")
            echoed = header
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
        await self._send_json(send, 200, orjson.dumps({"version": self.config.version}))

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

    def _build_models(self) -> bytes:
        cfg = self.config
        data = [
            {
                "id": name,
                "object": "model",
                "created": self._created,
                "owned_by": "vllm",
                "root": cfg.model,
                "parent": None,
                "max_model_len": cfg.max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{random.Random(cfg.seed + i).getrandbits(64):016x}",
                        "object": "model_permission",
                        "created": self._created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for i, name in enumerate(cfg.served_model_names)
        ]
        return orjson.dumps({"object": "list", "data": data})

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._auth_error(scope):
            await self._send_json(send, 401, b'{"error":"Unauthorized"}')
            return
        await self._send_json(send, 200, self._models_body)

    # -- control routes ----------------------------------------------------------------------
    async def _get_config(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._send_json(send, 200, orjson.dumps(self.config.as_dict()))

    async def _set_config(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await self._read_json(receive)
            try:
                self.config.update(body)
            except ValueError as exc:
                raise bad_request(str(exc)) from exc
        except ApiError as exc:
            await self._send_json(send, exc.status, exc.body())
            return
        await self._send_json(send, 200, orjson.dumps(self.config.as_dict()))

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
        await self._send_json(send, 200, orjson.dumps(stats))

    async def _die(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await self._read_body(receive)
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            body = {}
        exit_ = isinstance(body, dict) and bool(body.get("exit"))
        self.die()
        await self._send_json(send, 200, orjson.dumps({"dead": True, "exit": exit_}))
        if exit_ and self.on_exit is not None:
            self.on_exit()

    async def _revive(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.dead = False
        await self._send_json(send, 200, b'{"dead":false}')

    # -- generation --------------------------------------------------------------------------
    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(scope, receive, send, "chat")

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(scope, receive, send, "completion")

    def _parse_job(self, kind: str, body: dict[str, Any], request_id: str) -> Job:
        cfg = self.config
        max_len = cfg.max_model_len
        if kind == "chat":
            messages = body.get("messages")
            if messages is None:
                raise validation_error("missing", "body.messages", "Field required", body)
            if not isinstance(messages, list):
                raise validation_error("list_type", "body.messages", "Input should be a valid list", messages)
            for i, m in enumerate(messages):
                if not isinstance(m, dict):
                    raise validation_error(
                        "model_type", f"body.messages.{i}", "Input should be a valid dictionary or object", m
                    )
        model = self._check_model(body)
        if kind == "chat":
            if not messages:
                raise bad_request("Cannot apply chat template to an empty conversation. Provide at least one message.")
            try:
                prompt_text, prompt_tokens = chat_prompt(messages)
            except ValueError as exc:
                raise bad_request(str(exc), "messages") from exc
            exact_count = False  # text is tokenized with truncation at max_model_len + 1
            key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        else:
            prompt_text, prompt_tokens, exact_count = self._completion_prompt(body.get("prompt"))
            key = "max_tokens"
        max_tokens = _opt_int(body, key, 1)
        n = _lax_int(body, "n")
        n = 1 if n is None else n
        stream = bool(_opt_bool(body, "stream"))
        _opt_bool(body, "ignore_eos")
        temperature = body.get("temperature")
        if temperature is not None and (not isinstance(temperature, int | float) or temperature < 0):
            raise bad_request("temperature must be non-negative.", "temperature")
        options = body.get("stream_options")
        include_usage = False
        if options is not None:
            if not isinstance(options, dict):
                raise validation_error(
                    "model_type", "body.stream_options", "Input should be a valid dictionary", options
                )
            if not stream:
                raise param_error("Stream options can only be defined when `stream=True`.", "stream_options")
            include_usage = bool(options.get("include_usage"))
        # vLLM 0.32 accepts a priority on any server; only --scheduling-policy priority orders by it.
        priority = _opt_int(body, "priority") or 0
        if max_tokens is not None and max_tokens > max_len:
            raise param_error(
                f"{key}={max_tokens} cannot be greater than max_model_len={max_len}. "
                "Please request fewer output tokens.",
                key,
                max_tokens,
            )
        if prompt_tokens > max_len:
            shown = prompt_tokens if exact_count else max_len + 1
            raise param_error(
                f"This model's maximum context length is {max_len} tokens. However, your prompt contains "
                f"{'' if exact_count else 'at least '}{shown} input tokens, which exceeds this limit even without any "
                "output tokens. Please reduce the length of the input prompt.",
                "input_tokens",
                shown,
            )
        room = max_len - prompt_tokens
        if max_tokens is not None:
            # prompt + max_tokens over the context is accepted: the output is capped by the context.
            output = min(max_tokens, room)
            if output < 1:
                raise param_error(f"max_tokens must be at least 1, got {output}.", "max_tokens", output)
        else:
            output = room if kind == "chat" else min(room, COMPLETIONS_DEFAULT_MAX_TOKENS)
            if output < 1:
                raise param_error(f"max_tokens must be at least 1, got {output}.", "max_tokens", output)
        # vLLM's SamplingParams checks (a VLLMValidationError without a parameter: no suffix).
        if n < 1:
            raise bad_request(f"n must be at least 1, got {n}.")
        if n > MAX_N_SEQUENCES:
            raise bad_request(
                f"n must be at most {MAX_N_SEQUENCES}, got {n}. "
                "To increase this limit, set the VLLM_MAX_N_SEQUENCES environment variable."
            )
        if max_tokens is not None or body.get("ignore_eos"):
            outputs, finishes = [output] * n, ["length"] * n
        else:  # each choice stops at its own seeded natural length, unless the cap comes first
            naturals = natural_lengths(cfg.seed, prompt_text, cfg.default_output_tokens, n)
            outputs = [min(k, output) for k in naturals]
            finishes = ["stop" if k <= output else "length" for k in naturals]
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        return Job(
            kind=kind,
            request_id=prefix + request_id,
            model=model,
            prompt_text=prompt_text,
            prompt_tokens=prompt_tokens,
            outputs=outputs,
            finishes=finishes,
            stream=stream,
            include_usage=include_usage,
            priority=priority,
            created=int(time.time()),
        )

    @staticmethod
    def _completion_prompt(prompt: Any) -> tuple[str, int, bool]:
        """(text, tokens, exact): token-id prompts are counted exactly, text ones up to max_model_len + 1."""
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str) and prompt:
            return prompt, max(1, count_text_tokens(prompt)), False
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return " ".join(map(str, prompt)), len(prompt), True
        if prompt is None or prompt == "" or prompt == []:
            raise param_error("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
        raise bad_request("prompt must be a string, a list of token ids, or a list of one of those.", "prompt")

    async def _admit_request(self, scope: Scope, send: Send) -> bool:
        """The checks every inference route makes first: API key (401 sent here, False), engine
        available (raises its ApiError)."""
        if self._auth_error(scope):
            await self._send_json(send, 401, b'{"error":"Unauthorized"}')
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
            job = self._parse_job(kind, await self._read_json(receive), request_id)
            cfg = self.config
            if cfg.failure_rate and self._fault_rng.random() < cfg.failure_rate:
                self.metrics.request_success["error"].inc()
                raise ApiError(cfg.failure_status, f"Simulated failure (status {cfg.failure_status}).")
        except ApiError as exc:
            await self._send_json(send, exc.status, exc.body(), extra_headers)
            return
        drop_at = -1
        if cfg.drop_mid_stream_rate and self._drop_rng.random() < cfg.drop_mid_stream_rate:
            drop_at = sum(job.outputs) // 2  # token events (of all choices) sent before the drop
        if cfg.zero_delay:
            await self._generate_at_once(job, send, extra_headers, drop_at)
        else:
            await self._generate_in_engine(job, receive, send, extra_headers, drop_at)

    # rendering ------------------------------------------------------------------------------
    def _chunk_prefix(self, job: Job) -> bytes:
        obj = "chat.completion.chunk" if job.kind == "chat" else "text_completion"
        return (
            b'data: {"id":'
            + orjson.dumps(job.request_id)
            + b',"object":"'
            + obj.encode()
            + b'","created":'
            + str(job.created).encode()
            + b',"model":'
            + orjson.dumps(job.model)
            + b',"choices":['
        )

    def _chunk(
        self, job: Job, prefix: bytes, text: str, finish: str | None, first: bool, head: bytes = b'{"index":0,'
    ) -> bytes:
        """One streamed event, field for field as vLLM 0.32 writes it; ``head`` opens the choice with its index."""
        end = (
            b'"finish_reason":null'
            if finish is None
            else b'"finish_reason":"' + finish.encode() + b'","stop_reason":null'
        )
        if job.kind == "chat":
            if first:  # the role event: no token_ids, and the prompt fields after the choices
                return (
                    prefix
                    + head
                    + b'"delta":{"role":"assistant","content":'
                    + orjson.dumps(text)
                    + b'},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n'
                )
            return (
                prefix
                + head
                + b'"delta":{"content":'
                + orjson.dumps(text)
                + b'},"logprobs":null,'
                + end
                + b',"token_ids":null}]'
                + self._stream_tail(job, finish)
            )
        if finish is None:
            end += b',"stop_reason":null'
        return (
            prefix
            + head
            + b'"text":'
            + orjson.dumps(text)
            + b',"logprobs":null,'
            + end
            + b',"prompt_token_ids":null,"token_ids":null}]'
            + self._stream_tail(job, finish)
        )

    @staticmethod
    def _heads(n: int) -> list[bytes]:
        """The opening of each choice's streamed object: ``{"index":i,``."""
        return [b'{"index":%d,' % i for i in range(n)]

    def _stream_tail(self, job: Job, finish: str | None) -> bytes:
        """The finish event carries the fingerprint, unless a usage event follows (then that one does)."""
        if finish is not None and not job.include_usage:
            return b',"system_fingerprint":' + self._fingerprint_json + b"}\n\n"
        return b"}\n\n"

    @staticmethod
    def _usage(job: Job, completion_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": job.prompt_tokens,
            "total_tokens": job.prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        }

    def _usage_chunk(self, job: Job, prefix: bytes, completion_tokens: int) -> bytes:
        usage = b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
            job.prompt_tokens,
            job.prompt_tokens + completion_tokens,
            completion_tokens,
        )
        return prefix + b'],"usage":' + usage + b',"system_fingerprint":' + self._fingerprint_json + b"}\n\n"

    def _full_response(self, job: Job, texts: list[str], finishes: list[str], completion_tokens: int) -> bytes:
        """The non-streamed body: one choice per text (usage: the prompt once, every choice's tokens)."""
        if job.kind == "chat":
            choices: list[dict[str, Any]] = [
                {
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "reasoning": None,
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                    "token_ids": None,
                    "routed_experts": None,
                }
                for i, (text, finish) in enumerate(zip(texts, finishes, strict=True))
            ]
            body: dict[str, Any] = {
                "id": job.request_id,
                "object": "chat.completion",
                "created": job.created,
                "model": job.model,
                "choices": choices,
                "service_tier": None,
                "system_fingerprint": self.fingerprint,
                "usage": self._usage(job, completion_tokens),
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "prompt_text": None,
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        else:
            body = {
                "id": job.request_id,
                "object": "text_completion",
                "created": job.created,
                "model": job.model,
                "choices": [
                    {
                        "index": i,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": finish,
                        "stop_reason": None,
                        "token_ids": None,
                        "prompt_logprobs": None,
                        "prompt_token_ids": None,
                        "routed_experts": None,
                    }
                    for i, (text, finish) in enumerate(zip(texts, finishes, strict=True))
                ],
                "service_tier": None,
                "system_fingerprint": self.fingerprint,
                "usage": self._usage(job, completion_tokens),
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        return orjson.dumps(body)

    # zero-delay mode ------------------------------------------------------------------------
    async def _generate_at_once(self, job: Job, send: Send, headers: list[tuple[bytes, bytes]], drop_at: int) -> None:
        cfg, metrics = self.config, self.metrics
        t0 = time.perf_counter()
        stall = cfg.stall_before_first_token
        outputs, finishes, n = job.outputs, job.finishes, job.n
        total = outputs[0] if n == 1 else sum(outputs)
        starts = self.tokens.starts(cfg.seed, job.prompt_text, n)
        # Each of the n sequences is one engine request (vLLM's parallel sampling): its prompt counts.
        metrics.prompt_tokens.inc(job.prompt_tokens * n)
        metrics.prefix_cache_queries.inc(job.prompt_tokens * n)
        if not job.stream:
            if stall:
                await asyncio.sleep(stall)
            texts = [self.tokens.text(start, 0, out) for start, out in zip(starts, outputs, strict=True)]
            body = self._full_response(job, texts, finishes, total)
            if drop_at >= 0:
                await self._drop(job, send, body, headers, total)
            metrics.generation_tokens.inc(total)
            self._observe_at_once(job, time.perf_counter() - t0)
            await self._send_json(send, 200, body, headers)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [*SSE, *headers]})
        if stall:
            await asyncio.sleep(stall)
        prefix = self._chunk_prefix(job)
        toks = self.tokens
        limit = total if drop_at < 0 else drop_at
        chunk = self._chunk
        if n == 1:
            start, out, finish = starts[0], outputs[0], finishes[0]
            parts = [chunk(job, prefix, "", None, True)] if job.kind == "chat" else []
            for i in range(limit):
                last = i == out - 1
                parts.append(chunk(job, prefix, toks.text(start, i, i + 1), finish if last else None, False))
        else:  # vLLM interleaves the choices: token t of every choice, then token t + 1
            heads = self._heads(n)
            parts = [chunk(job, prefix, "", None, True, h) for h in heads] if job.kind == "chat" else []
            emitted = 0
            for t in range(max(outputs)):
                for c in range(n):
                    out = outputs[c]
                    if t < out and emitted < limit:
                        text = toks.text(starts[c], t, t + 1)
                        parts.append(chunk(job, prefix, text, finishes[c] if t == out - 1 else None, False, heads[c]))
                        emitted += 1
        if drop_at >= 0:
            await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
            metrics.generation_tokens.inc(limit)
            metrics.request_success["abort"].inc(n)
            raise SimulatedDrop(job.request_id)
        if job.include_usage:
            parts.append(self._usage_chunk(job, prefix, total))
        parts.append(DONE)
        metrics.generation_tokens.inc(total)
        self._observe_at_once(job, time.perf_counter() - t0)
        await send({"type": "http.response.body", "body": b"".join(parts)})

    def _observe_at_once(self, job: Job, elapsed: float) -> None:
        """Every sequence finishes (vLLM counts each of the n as a request in its histograms)."""
        observe = self.metrics.observe_finished
        for finish, out in zip(job.finishes, job.outputs, strict=True):
            observe(finish, e2e=elapsed, queue=0.0, ttft=elapsed, prefill=0.0, decode=0.0, output_tokens=out)

    async def _drop(self, job: Job, send: Send, body: bytes, headers: list[tuple[bytes, bytes]], n: int) -> None:
        """Start a non-streamed response, send half of it and close the connection."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*JSON, (b"content-length", str(len(body)).encode()), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        self.metrics.request_success["abort"].inc(job.n)
        raise SimulatedDrop(job.request_id)

    # engine mode ----------------------------------------------------------------------------
    async def _generate_in_engine(
        self, job: Job, receive: Receive, send: Send, headers: list[tuple[bytes, bytes]], drop_at: int
    ) -> None:
        loop = asyncio.get_running_loop()
        n, rid = job.n, job.request_id
        # n > 1: one engine request a choice, with vLLM's child ids "<index>_<request id>".
        reqs = [
            SimRequest(
                rid if n == 1 else f"{i}_{rid}", job.prompt_tokens, out, natural_stop=finish == "stop",
                priority=job.priority,
            )
            for i, (out, finish) in enumerate(zip(job.outputs, job.finishes, strict=True))
        ]  # fmt: skip
        disconnected: asyncio.Future[None] = loop.create_future()
        engine = self.engine

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
            if not disconnected.done():
                disconnected.set_result(None)
            for req in reqs:
                engine.abort(req)

        watcher = loop.create_task(watch())
        try:
            if job.stream:
                await send({"type": "http.response.start", "status": 200, "headers": [*SSE, *headers]})
            stall = self.config.stall_before_first_token
            if stall:
                await asyncio.wait([disconnected], timeout=stall)
                if disconnected.done():
                    self.metrics.request_success["abort"].inc(n)
                    return
            for req in reqs:
                engine.submit(req)
            if job.stream:
                await self._stream_from_engine(job, reqs, send, drop_at)
            else:
                for req in reqs:
                    assert req.done is not None
                    await req.done
                await self._reply_from_engine(job, reqs, send, headers, drop_at)
        finally:
            watcher.cancel()
            for req in reqs:
                if not req.finished and req.done is not None:
                    engine.abort(req)

    def _engine_error(self) -> ApiError:
        return ApiError(500, "EngineCore encountered an issue. See stack trace (above) for the root cause.")

    async def _reply_from_engine(
        self, job: Job, reqs: list[SimRequest], send: Send, headers: list[tuple[bytes, bytes]], drop_at: int
    ) -> None:
        reasons = [req.finish_reason for req in reqs]
        if "abort" in reasons:
            return  # the client went away: nobody to answer
        if "error" in reasons:
            err = self._engine_error()
            await self._send_json(send, err.status, err.body(), headers)
            return
        starts = self.tokens.starts(self.config.seed, job.prompt_text, job.n)
        texts = [self.tokens.text(start, 0, req.generated) for start, req in zip(starts, reqs, strict=True)]
        total = sum(req.generated for req in reqs)
        body = self._full_response(job, texts, [r or "length" for r in reasons], total)
        if drop_at >= 0:
            await self._drop(job, send, body, headers, total)
        await self._send_json(send, 200, body, headers)

    @staticmethod
    async def _next_tokens(reqs: list[SimRequest], sent: list[int]) -> None:
        """Wait until one of the still open choices has new tokens or finished."""
        if len(reqs) == 1:
            await reqs[0].next_tokens()
            return
        open_ = [(req, s) for req, s in zip(reqs, sent, strict=True) if s >= 0]
        if any(req.finished or req.generated > s for req, s in open_):
            return
        waiter = asyncio.get_running_loop().create_future()
        for req, _ in open_:
            req.waiter = waiter  # one future for all: whichever the engine steps first wakes it
        try:
            await waiter
        finally:
            for req, _ in open_:
                if req.waiter is waiter:
                    req.waiter = None

    async def _stream_from_engine(self, job: Job, reqs: list[SimRequest], send: Send, drop_at: int) -> None:
        n = len(reqs)
        prefix = self._chunk_prefix(job)
        starts = self.tokens.starts(self.config.seed, job.prompt_text, n)
        heads = self._heads(n)
        toks, chunk, engine = self.tokens, self._chunk, self.engine
        sent = [0] * n  # tokens sent of each choice; -1 once its finish event went out
        total_sent = 0
        first = True
        while True:
            await self._next_tokens(reqs, sent)
            reasons = [req.finish_reason for req in reqs]
            if "abort" in reasons:
                for req in reqs:
                    engine.abort(req)
                return
            if "error" in reasons:
                err = self._engine_error()
                await send(
                    {"type": "http.response.body", "body": b"data: " + err.body() + b"\n\n" + DONE, "more_body": False}
                )
                return
            parts: list[bytes] = []
            if first and job.kind == "chat":
                parts.extend(chunk(job, prefix, "", None, True, h) for h in heads)
            first = False
            # New tokens, interleaved like vLLM: position by position, choice by choice.
            budget = -1 if drop_at < 0 else drop_at - total_sent
            lo = min((s for s in sent if s >= 0), default=0)
            hi = max(req.generated for req in reqs)
            for t in range(lo, hi):
                for c in range(n):
                    req, s = reqs[c], sent[c]
                    if s < 0 or not s <= t < req.generated or budget == 0:
                        continue
                    reason = reasons[c]
                    final = reason is not None and t == req.generated - 1
                    text = toks.text(starts[c], t, t + 1)
                    parts.append(chunk(job, prefix, text, reason if final else None, False, heads[c]))
                    sent[c] = -1 if final else t + 1
                    total_sent += 1
                    budget -= 1
            if budget == 0:
                if parts:
                    await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
                for req in reqs:
                    engine.abort(req)
                raise SimulatedDrop(job.request_id)
            if all(s < 0 for s in sent):
                if job.include_usage:
                    parts.append(self._usage_chunk(job, prefix, sum(req.generated for req in reqs)))
                parts.append(DONE)
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": False})
                return
            if parts:
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})

    # embeddings -----------------------------------------------------------------------------
    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id, headers = self._request_id(scope)
        try:
            if not await self._admit_request(scope, send):
                return
            body = await self._read_json(receive)
            model = self._check_model(body)
            inputs = body.get("input")
            if isinstance(inputs, str) or (
                isinstance(inputs, list) and inputs and all(isinstance(t, int) for t in inputs)
            ):
                inputs = [inputs]
            if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str | list) for x in inputs):
                raise bad_request("input: Field required (a string, a list of strings or token ids)", "input")
            fmt = body.get("encoding_format") or "float"
            if fmt not in ("float", "base64"):
                raise bad_request(f"encoding_format must be 'float' or 'base64', not {fmt!r}", "encoding_format")
            cfg = self.config
            if cfg.failure_rate and self._fault_rng.random() < cfg.failure_rate:
                raise ApiError(cfg.failure_status, f"Simulated failure (status {cfg.failure_status}).")
        except ApiError as exc:
            await self._send_json(send, exc.status, exc.body(), headers)
            return
        texts = [x if isinstance(x, str) else " ".join(map(str, x)) for x in inputs]
        tokens = sum(
            max(1, count_text_tokens(t)) if isinstance(x, str) else len(x) for t, x in zip(texts, inputs, strict=True)
        )
        self.metrics.prompt_tokens.inc(tokens)
        if cfg.prefill_per_token:
            await asyncio.sleep(cfg.prefill_per_token * tokens)
        self.metrics.request_success["stop"].inc()
        vectors = [embedding(cfg.seed, t, cfg.embedding_dim) for t in texts]
        data = [
            {"index": i, "object": "embedding", "embedding": v if fmt == "float" else _base64_floats(v)}
            for i, v in enumerate(vectors)
        ]
        out = {
            "id": f"embd-{request_id}",
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": {
                "prompt_tokens": tokens,
                "total_tokens": tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }
        await self._send_json(send, 200, orjson.dumps(out), headers)


def _base64_floats(vector: list[float]) -> str:
    """vLLM's base64 encoding: little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def create_app(config: SimConfig | None = None) -> SimApp:
    """Build one simulated vLLM replica (an ASGI app) from its settings."""
    return SimApp(config or SimConfig())
