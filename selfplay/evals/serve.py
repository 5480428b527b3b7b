"""A minimal OpenAI-compatible chat endpoint over a local HF model (``selfplay serve``).

Lets a local model act as the judge of ``selfplay eval`` / ``selfplay rank --judge llm-judge:URL`` through
the same client a hosted API uses. Why not vLLM's server: it needs a GPU; this one runs anywhere and binds
to 127.0.0.1 unless told otherwise. Concurrent requests (the judges send several at once) are decoded
together: a worker collects what is waiting, up to ``batch_size``, and runs one batched ``generate`` per
group of equal sampling settings — on a CPU, 4 judgments in one batch cost little more than one.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# How long the worker waits for more requests after the first before decoding (they arrive together).
GATHER_S = 0.05


class BatchingWorker:
    """Runs ``sampler.generate`` for queued prompts in batches, in one thread (the model is not thread-safe)."""

    def __init__(self, sampler: Any, batch_size: int = 8) -> None:
        self.sampler, self.batch_size = sampler, max(1, batch_size)
        self._queue: queue.Queue[tuple[tuple[float, float, int, int], str, Future[str]]] = queue.Queue()
        self.batches: list[int] = []  # sizes of the generate calls made, for logs and tests
        threading.Thread(target=self._run, name="serve-batcher", daemon=True).start()

    def complete(self, prompt: str, *, temperature: float, top_p: float, max_tokens: int, seed: int) -> str:
        """Block until ``prompt`` is decoded (with whatever else is waiting) and return its text."""
        done: Future[str] = Future()
        self._queue.put(((temperature, top_p, max_tokens, seed), prompt, done))
        return done.result()

    def _run(self) -> None:
        while True:
            waiting = [self._queue.get()]
            deadline = time.monotonic() + GATHER_S
            while len(waiting) < self.batch_size:
                try:
                    waiting.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict[tuple[float, float, int, int], list[tuple[str, Future[str]]]] = defaultdict(list)
            for settings, prompt, done in waiting:
                groups[settings].append((prompt, done))
            for (temperature, top_p, max_tokens, seed), items in groups.items():
                self.batches.append(len(items))
                try:
                    texts = self.sampler.generate([p for p, _ in items], n=1, temperature=temperature, top_p=top_p,
                                                  max_new_tokens=max_tokens, seed=seed, progress=False)
                except Exception as e:  # noqa: BLE001 (handed to each waiting request, answered as a 500)
                    for _, done in items:
                        done.set_exception(e)
                    continue
                for (_, done), text in zip(items, texts):
                    done.set_result(text[0])


def make_handler(worker: BatchingWorker, tokenizer: Any, model_name: str,
                 max_tokens_cap: int) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one model's batching worker."""
    from selfplay.core.samplers import format_prompt

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left; its retry is (or was) another request

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": model_name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:  # noqa: N802
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                prompt = format_prompt(tokenizer, req["messages"], "chat")
                settings = {"temperature": float(req.get("temperature", 1.0)), "top_p": float(req.get("top_p", 1.0)),
                            "max_tokens": min(int(req.get("max_tokens") or max_tokens_cap), max_tokens_cap),
                            "seed": int(req.get("seed", 0))}
            except (ValueError, KeyError, TypeError) as e:
                self._send(400, {"error": {"message": f"bad request: {e}"}})
                return
            try:
                text = worker.complete(prompt, **settings)
            except Exception as e:  # noqa: BLE001 (a failed generation is the server's error, not the client's)
                self._send(500, {"error": {"message": f"generation failed: {e}"}})
                return
            self._send(200, {
                "id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            })

        def log_message(self, fmt: str, *args: Any) -> None:  # keep the terminal for the progress of others
            pass

    return Handler


def make_server(sampler: Any, model_name: str, *, host: str = "127.0.0.1", port: int = 8000,
                max_tokens: int = 1024, batch_size: int = 8) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) whose requests share one batching worker over ``sampler``."""
    worker = BatchingWorker(sampler, batch_size)
    server = ThreadingHTTPServer((host, port), make_handler(worker, sampler.tokenizer, model_name, max_tokens))
    server.daemon_threads = True
    server.worker = worker  # type: ignore[attr-defined]
    return server


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, max_tokens: int = 1024, batch_size: int = 8,
          model_cfg: Any = None) -> None:
    """Load ``model`` and serve ``POST /v1/chat/completions`` until interrupted."""
    from selfplay.progress import console
    from selfplay.core.samplers import make_sampler

    sampler = make_sampler("hf", model, model_cfg=model_cfg, batch_size=batch_size)
    server = make_server(sampler, model, host=host, port=port, max_tokens=max_tokens, batch_size=batch_size)
    console.print(f"serving {model} at http://{host}:{server.server_port}/v1, up to {batch_size} requests "
                  "decoded together (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
