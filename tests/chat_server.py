"""One scripted, fault-injecting HTTP server on 127.0.0.1 for the remote-service tests: an OpenAI-compatible
``POST /v1/chat/completions`` (judges, RISE teachers) and a SerpAPI-like ``GET /search.json`` (search).

A script maps (request number, parsed request) to a reply: ``(status, raw body, delay seconds)`` or a
:class:`Reply`, which can also carry headers and a transport fault:

* ``hang``: read the request, then never answer (until the server closes);
* ``drip``: send the response one byte per ``drip_s`` seconds (status line, headers, body);
* ``drop``: send the headers and half of the body, then close the connection.

POST bodies are parsed JSON; GET requests are ``{"query": {name: value}}``. :func:`chat_script` adapts the
simpler (number, messages) -> (status, reply text) form the eval tests use. A non-200 reply without its own
headers carries ``Retry-After: 0`` so a client's retry does not sleep.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: str = ""
    delay: float = 0.0
    headers: dict[str, str] | None = None  # None: Retry-After 0 on a non-200
    fault: str | None = None  # hang | drip | drop
    drip_s: float = 1.0
    extra: dict = field(default_factory=dict)


Script = Callable[[int, dict], "tuple[int, str, float] | Reply"]
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
    """Serves ``script`` in a thread; records every request (method, path, headers, authorization, body, status)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: clients reuse connections

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._answer(body)

            def do_GET(self) -> None:  # noqa: N802
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                self._answer({"query": query})

            def _answer(self, body: dict) -> None:
                with server.lock:
                    number = len(server.requests)
                    server.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                            "body": body, "authorization": self.headers.get("Authorization"),
                                            "time": time.monotonic()})
                    reply = server.script(number, body)
                    if not isinstance(reply, Reply):
                        reply = Reply(*reply)
                    server.statuses.append(reply.status)
                if server.closing.wait(reply.delay) or reply.fault == "hang":
                    server.closing.wait()
                    self.close_connection = True
                    return
                data = reply.body.encode()
                headers = dict(reply.headers) if reply.headers is not None else (
                    {} if reply.status == 200 else {"Retry-After": "0"})
                headers.setdefault("Content-Type", "application/json")
                headers["Content-Length"] = str(len(data))
                try:
                    if reply.fault == "drip":
                        self._drip(reply, headers, data)
                        return
                    self.send_response(reply.status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if reply.fault == "drop":
                        self.wfile.write(data[:len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (timeout tests)

            def _drip(self, reply: Reply, headers: dict[str, str], data: bytes) -> None:
                head = f"HTTP/1.1 {reply.status} OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                for byte in (head + "\r\n").encode() + data:
                    if server.closing.wait(reply.drip_s):
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                self.close_connection = True

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
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
