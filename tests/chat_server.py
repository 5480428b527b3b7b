"""One scripted OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1 for the judge tests.

A script maps (request number, parsed request body) to (HTTP status, raw response body, delay seconds);
:func:`chat_script` adapts the simpler (number, messages) -> (status, reply text) form the eval tests use.
Each non-200 reply carries ``Retry-After: 0`` so a client's retry does not sleep.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Script = Callable[[int, dict], "tuple[int, str, float]"]
TextScript = Callable[[int, list[dict]], "tuple[int, str]"]

# A reply text starting with this is sent as the raw body (a malformed 200 reply), not as a completion.
RAW_BODY = "RAW:"


def completion(text: str) -> str:
    """A chat-completion response body carrying ``text``."""
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})


def chat_script(script: TextScript) -> Script:
    """(number, messages) -> (status, text) as a full script: 200 texts become completions, others errors."""
    def full(number: int, body: dict) -> tuple[int, str, float]:
        status, text = script(number, body["messages"])
        if text.startswith(RAW_BODY):
            return status, text[len(RAW_BODY):], 0.0
        return status, completion(text) if status == 200 else json.dumps({"error": text}), 0.0
    return full


class ChatServer:
    """Serves ``script`` in a thread; records every request (path, headers, authorization, body, status)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    number = len(server.requests)
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                            "authorization": self.headers.get("Authorization")})
                    status, payload, delay = server.script(number, body)
                    server.statuses.append(status)
                time.sleep(delay)
                try:
                    data = payload.encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if status != 200:
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def judged(self) -> list[dict]:
        """The requests that got a 200 reply."""
        return [r for r, s in zip(self.requests, self.statuses) if s == 200]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
