"""An OpenAI-compatible chat endpoint over a local HF model (``selfplay serve``).

Lets a local model act as the judge of ``selfplay eval`` / ``selfplay rank --judge llm-judge:URL`` through
the same client a hosted API uses; it runs anywhere (vLLM's server needs a GPU; ``--backend vllm`` starts
that one instead) and binds to 127.0.0.1 unless told otherwise.

The HTTP side is Starlette on uvicorn (a listen backlog of 2048 and an event loop: a burst of 64 judge calls
queues instead of being reset, as it was on the standard library's server). Every request is checked
before it reaches the model (:mod:`selfplay.evals.serve_api`: types, ranges, roles, body size, prompt
length in tokens against the model's context), so a client's mistake is a 400 and never an allocation.
Concurrent requests are decoded together: one worker thread collects what is waiting, up to
``batch_size``, and runs one batched ``complete`` per group of equal sampling settings — on a CPU, 4
judgments in one batch cost little more than one.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import ipaddress
import queue
import socket
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from selfplay.errors import UserError
from selfplay.evals.serve_api import ApiError, ChatRequest, parse_request

# How long the worker waits for more requests after the first before decoding (they arrive together).
GATHER_S = 0.05
# Request bodies larger than this are refused (413), never held in memory: far above a 128k-token prompt.
MAX_BODY_BYTES = 4 << 20
# An oversized body is read (and dropped) up to this many bytes before answering 413; beyond, the connection closes.
DRAIN_BYTES = 64 << 20
API_KEY_ENV = "SELFPLAY_API_KEY"

Settings = tuple[float, float, int, int, int, tuple[str, ...]]  # temperature, top_p, max_tokens, seed, n, stop


class BatchingWorker:
    """Runs ``sampler.complete`` for queued prompts in batches, in one thread (the model is not thread-safe)."""

    def __init__(self, sampler: Any, batch_size: int = 8) -> None:
        self.sampler, self.batch_size = sampler, max(1, batch_size)
        self._queue: queue.Queue[tuple[Settings, str, Future[list[Any]]]] = queue.Queue()
        self.batches: list[int] = []  # sizes of the decode calls made, for logs and tests
        threading.Thread(target=self._run, name="serve-batcher", daemon=True).start()

    def submit(self, prompt: str, settings: Settings) -> Future[list[Any]]:
        """Queue ``prompt``; the future resolves to its n :class:`~selfplay.core.samplers.Completion` objects.

        A future cancelled before its batch starts (the client left) is skipped, costing no decoding.
        """
        done: Future[list[Any]] = Future()
        self._queue.put((settings, prompt, done))
        return done

    def _run(self) -> None:
        while True:
            waiting = [self._queue.get()]
            deadline = time.monotonic() + GATHER_S
            while len(waiting) < self.batch_size:
                try:
                    waiting.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict[Settings, list[tuple[str, Future[list[Any]]]]] = defaultdict(list)
            for settings, prompt, done in waiting:
                if done.set_running_or_notify_cancel():
                    groups[settings].append((prompt, done))
            for (temperature, top_p, max_tokens, seed, n, stop), items in groups.items():
                self.batches.append(len(items))
                try:
                    results = self.sampler.complete([p for p, _ in items], n=n, temperature=temperature, top_p=top_p,
                                                    max_new_tokens=max_tokens, seed=seed, stop=list(stop) or None,
                                                    progress=False)
                except Exception as e:  # noqa: BLE001 (handed to each waiting request, answered as a 500)
                    for _, done in items:
                        done.set_exception(e)
                    continue
                for (_, done), completions in zip(items, results):
                    done.set_result(completions)


def context_length(sampler: Any) -> int | None:
    """The model's context window in tokens (prompt + completion), from its config; None when it says nothing."""
    llm = getattr(sampler, "llm", None)
    if llm is not None:  # vLLM knows it exactly
        return int(llm.llm_engine.model_config.max_model_len)
    config = getattr(getattr(sampler, "model", None), "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(sampler.tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 10**7 else None  # transformers' "unset" is 1e30


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_key_beyond_loopback(host: str, api_key: str | None) -> None:
    """Refuse to serve on a non-loopback address without a key: anyone who can reach it could use the model."""
    if api_key is None and not is_loopback(host):
        raise UserError(f"serving on {host} exposes the model beyond this machine: set a key in ${API_KEY_ENV} "
                        "(or --api-key); clients then send it as 'Authorization: Bearer <key>'.")


class ChatService:
    """What one request goes through: authorization, body cap, schema, prompt length, the batching worker."""

    def __init__(self, worker: BatchingWorker, tokenizer: Any, model_name: str, *, context: int,
                 max_tokens: int, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        from selfplay.core.samplers import encode_prompt, format_prompt

        if not getattr(tokenizer, "chat_template", None):
            raise UserError("the model's tokenizer has no chat template: it cannot serve chat completions.")
        self.worker, self.model_name, self.context = worker, model_name, context
        self.max_tokens, self.max_body_bytes = max_tokens, max_body_bytes
        self._key = api_key.encode() if api_key else None
        # A copy of the tokenizer, used by one thread: HF fast tokenizers are not safe to share with the
        # worker thread that decodes ("Already borrowed"), and prompts are measured while others decode.
        tok = copy.deepcopy(tokenizer)
        self._measure_pool = ThreadPoolExecutor(1, thread_name_prefix="serve-tokenize")
        self._render = lambda turns: _render(tok, turns, format_prompt, encode_prompt)

    def authorize(self, headers: Any) -> None:
        """401 unless the bearer key matches (constant-time comparison; the key is never echoed or logged)."""
        if self._key is None:
            return
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
        if not hmac.compare_digest(given.strip().encode(), self._key):
            raise ApiError(401, "invalid API key", code="invalid_api_key")

    async def read_body(self, request: Any) -> bytes:
        """The body, refused with a 413 once it is known to exceed the cap (from its Content-Length or the
        bytes read). The rest is read and dropped, up to :data:`DRAIN_BYTES`, so that the client, still
        sending, gets the 413 instead of a reset connection; memory stays bounded by the cap."""
        declared = request.headers.get("content-length")
        over = declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            over = over or size > self.max_body_bytes
            if over and size > DRAIN_BYTES:
                break
            if not over:
                chunks.append(chunk)
        if over:
            raise ApiError(413, f"the request body exceeds {self.max_body_bytes} bytes", code="request_too_large")
        return b"".join(chunks)

    async def complete(self, body: bytes) -> dict[str, Any]:
        """A chat-completion response body for a request body; raises :class:`ApiError` for the client's errors."""
        req = parse_request(body)
        loop = asyncio.get_running_loop()
        prompt, prompt_tokens = await loop.run_in_executor(self._measure_pool, self._render,
                                                           [m.as_turn() for m in req.messages])
        max_tokens = self._completion_budget(req, prompt_tokens)
        settings: Any = (1.0 if req.temperature is None else req.temperature, 1.0 if req.top_p is None else req.top_p,
                         max_tokens, 0 if req.seed is None else req.seed, req.n or 1, tuple(req.stop_list))
        completions = await asyncio.wrap_future(self.worker.submit(prompt, settings))
        used = sum(c.num_tokens for c in completions)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                         "finish_reason": "length" if c.finish_reason == "length" else "stop"}
                        for i, c in enumerate(completions)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": used, "total_tokens": prompt_tokens + used},
        }

    def _completion_budget(self, req: ChatRequest, prompt_tokens: int) -> int:
        """New tokens for this request: asked (capped by ``--max-tokens``) or what the context leaves. A
        prompt that leaves no room, or an explicit ask beyond the context, is a 400, as at OpenAI."""
        room = self.context - prompt_tokens
        asked = req.requested_tokens
        wanted = min(asked if asked is not None else self.max_tokens, self.max_tokens)
        if room < 1 or (asked is not None and wanted > room):
            asking = (f"you requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the messages, {wanted} in "
                      "the completion)" if asked is not None else
                      f"the messages take {prompt_tokens} tokens, leaving no room for a completion")
            raise ApiError(400, f"This model's maximum context length is {self.context} tokens. However, {asking}. "
                                "Please reduce the length of the messages or completion.",
                           param="messages", code="context_length_exceeded")
        return min(wanted, room)


def _render(tok: Any, turns: list[dict[str, str]], format_prompt: Any, encode_prompt: Any) -> tuple[str, int]:
    """(prompt text, its token count) through the chat template; a template's refusal is the client's error."""
    from jinja2.exceptions import TemplateError

    try:
        prompt = format_prompt(tok, turns, "chat")
    except TemplateError as e:  # e.g. "roles must alternate user/assistant"
        raise ApiError(400, f"the model's chat template rejected the messages: {e}", param="messages",
                       code="invalid_messages") from None
    return prompt, len(encode_prompt(tok, prompt))


def build_app(service: ChatService) -> Any:
    """The Starlette application: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def error(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    async def chat(request: Request) -> JSONResponse:
        try:
            service.authorize(request.headers)
            return JSONResponse(await service.complete(await service.read_body(request)))
        except ApiError as e:
            return error(e)

    async def models(request: Request) -> JSONResponse:
        try:
            service.authorize(request.headers)
        except ApiError as e:
            return error(e)
        return JSONResponse({"object": "list", "data": [{"id": service.model_name, "object": "model",
                                                         "owned_by": "selfplay", "created": 0}]})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        status = getattr(exc, "status_code", 500)
        what = "no route" if status == 404 else "method not allowed for"
        return error(ApiError(status, f"{what} {request.method} {request.url.path}", kind="invalid_request_error"))

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        # A failed generation is the server's fault: a 500 the client may retry, without internals in the body.
        return error(ApiError(500, f"generation failed ({type(exc).__name__})", kind="server_error"))

    routes = [Route(p + "/chat/completions", chat, methods=["POST"]) for p in ("/v1", "")]
    routes += [Route(p + "/models", models, methods=["GET"]) for p in ("/v1", "")]
    routes.append(Route("/health", health, methods=["GET"]))
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})


class Server:
    """uvicorn serving ``app`` on a socket bound here (so port 0 is known before serving)."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 8000, max_connections: int = 512) -> None:
        import uvicorn

        try:
            self.socket = socket.create_server((host, port), family=_family(host), backlog=2048)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                limit_concurrency=max_connections, timeout_graceful_shutdown=5)
        self.uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def run(self) -> None:
        """Serve in this thread until Ctrl-C (uvicorn handles the signals in the main thread)."""
        self.uvicorn.run(sockets=[self.socket])

    def start(self) -> Server:
        """Serve in a background thread (tests, embedding); returns once it accepts connections."""
        self._thread = threading.Thread(target=self.run, name="serve-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def make_server(sampler: Any, model_name: str, *, host: str = "127.0.0.1", port: int = 8000, max_tokens: int = 1024,
                batch_size: int = 8, api_key: str | None = None, context: int | None = None,
                max_body_bytes: int = MAX_BODY_BYTES, max_connections: int = 512) -> Server:
    """A server (not yet serving) whose requests share one batching worker over ``sampler``."""
    require_key_beyond_loopback(host, api_key)
    context = context or context_length(sampler)
    if context is None:
        raise UserError("cannot tell the model's context length from its config; pass --context-length N.")
    worker = BatchingWorker(sampler, batch_size)
    service = ChatService(worker, sampler.tokenizer, model_name, context=context, max_tokens=max_tokens,
                          api_key=api_key, max_body_bytes=max_body_bytes)
    server = Server(build_app(service), host=host, port=port, max_connections=max_connections)
    server.worker, server.service = worker, service  # type: ignore[attr-defined]
    return server


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, max_tokens: int = 1024, batch_size: int = 8,
          api_key: str | None = None, context: int | None = None, max_body_bytes: int = MAX_BODY_BYTES,
          max_connections: int = 512, backend: str = "hf", model_cfg: Any = None) -> None:
    """Load ``model`` and serve ``POST /v1/chat/completions`` until interrupted (arguments checked first)."""
    from selfplay.progress import console

    _check_args(host, port, max_tokens, batch_size, api_key, context, max_body_bytes, max_connections)
    if backend == "vllm":
        return serve_vllm(model, host=host, port=port, api_key=api_key, context=context, model_cfg=model_cfg)
    if backend != "hf":
        raise UserError(f"unknown serve backend '{backend}'; choose hf or vllm.")
    from selfplay.core.samplers import make_sampler

    sampler = make_sampler("hf", model, model_cfg=model_cfg, batch_size=batch_size)
    server = make_server(sampler, model, host=host, port=port, max_tokens=max_tokens, batch_size=batch_size,
                         api_key=api_key, context=context, max_body_bytes=max_body_bytes,
                         max_connections=max_connections)
    guarded = "a bearer key required" if api_key else "no key"
    console.print(f"serving {model} at {server.url} ({guarded}; context {server.service.context} tokens; up to "
                  f"{batch_size} requests decoded together; Ctrl-C to stop)")
    try:
        server.run()
    finally:
        server.socket.close()


def _check_args(host: str, port: int, max_tokens: int, batch_size: int, api_key: str | None, context: int | None,
                max_body_bytes: int, max_connections: int) -> None:
    """Refuse bad settings before a model is loaded."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {port}")
    for name, value in (("--max-tokens", max_tokens), ("--batch-size", batch_size),
                        ("--max-body-bytes", max_body_bytes), ("--max-connections", max_connections)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if context is not None and context < 2:
        raise UserError(f"--context-length must be at least 2, got {context}")
    if api_key is not None and not api_key.strip():
        raise UserError(f"the API key is empty; unset ${API_KEY_ENV} or give a key")
    require_key_beyond_loopback(host, api_key)


def vllm_command(model_dir: str, served_name: str, *, host: str, port: int, context: int | None) -> list[str]:
    """The command line of vLLM's own OpenAI-compatible server for a local model directory."""
    import sys

    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
               "--served-model-name", served_name, "--host", host, "--port", str(port)]
    return command + (["--max-model-len", str(context)] if context else [])


def serve_vllm(model: str, *, host: str, port: int, api_key: str | None, context: int | None,
               model_cfg: Any = None) -> None:
    """Run vLLM's OpenAI server (GPU, ``selfplay[gpu]``) in the foreground; the key travels in its
    environment (``VLLM_API_KEY``), not on a command line others can read."""
    import importlib.util
    import os
    import subprocess

    from selfplay.errors import MissingExtraError
    from selfplay.models import resolve_model

    if importlib.util.find_spec("vllm") is None:
        raise MissingExtraError("vllm", "gpu", "serve --backend vllm")
    model_dir = resolve_model(model, getattr(model_cfg, "revision", None))
    env = dict(os.environ, **({"VLLM_API_KEY": api_key} if api_key else {}))
    code = subprocess.call(vllm_command(model_dir, model, host=host, port=port, context=context), env=env)
    if code not in (0, -2, 130):  # Ctrl-C ends it too
        raise UserError(f"vLLM's server exited with code {code}")
