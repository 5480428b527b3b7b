"""A minimal OpenAI-compatible chat client (``POST {base_url}/chat/completions``).

Why by hand: the ``openai`` package is not a dependency and ``httpx`` is not installed everywhere; one
JSON POST with retries is small enough for the standard library. The API key is read from an
environment variable, sent as a Bearer token, and never logged or put into an exception message.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from selfplay.errors import UserError

log = logging.getLogger(__name__)

# Status codes worth another try: rate limiting and server-side failures.
_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# Never sleep longer than this between tries, whatever Retry-After says.
_MAX_SLEEP_S = 60.0


class JudgeError(UserError):
    """A judge could not be reached or refused the request (after retries)."""


class MalformedReplyError(JudgeError):
    """The server answered 200 but the body is not an OpenAI-style chat completion."""


class ChatClient:
    """Chat completions against an OpenAI-compatible server (vLLM, llama.cpp, TGI, OpenAI, ...).

    ``base_url`` is the API root, e.g. ``http://127.0.0.1:8000/v1`` (a full ``.../chat/completions``
    URL is accepted too). Requests that time out, fail to connect, or get 429/5xx are retried up to
    ``max_retries`` times with exponential backoff (``backoff * 2**attempt`` seconds, or the server's
    ``Retry-After``), then :class:`JudgeError` is raised. The default ``timeout`` is the OpenAI Python
    client's 600 s: a long judgment from a local model on a CPU takes minutes, and a retry of a request
    the server is still decoding only adds to its queue.
    """

    def __init__(self, base_url: str, model: str = "default", *, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 600.0, max_retries: int = 4, backoff: float = 1.0) -> None:
        base = base_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise UserError(f"judge URL must start with http:// or https://, got {base_url!r}")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff

    def __repr__(self) -> str:  # no key here either
        return f"ChatClient(url={self.url!r}, model={self.model!r})"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _redact(self, text: str) -> str:
        """Remove the API key from text that may end up in a message (servers sometimes echo headers)."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text

    def chat(self, messages: list[dict], *, temperature: float = 0.0, max_tokens: int = 1024) -> str:
        """Send one chat request and return ``choices[0].message.content``.

        Raises :class:`JudgeError` after ``max_retries`` failed retries or on a non-retryable HTTP
        error (e.g. 401), and :class:`MalformedReplyError` when a 200 reply is not a chat completion.
        """
        body = json.dumps({"model": self.model, "messages": messages, "temperature": temperature,
                           "max_tokens": max_tokens}).encode("utf-8")
        last_problem = ""
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
            retry_after: float | None = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                return self._parse(raw)
            except urllib.error.HTTPError as e:
                detail = self._redact(e.read().decode("utf-8", "replace")[:200])
                last_problem = f"HTTP {e.code} {e.reason}: {detail}".strip()
                if e.code not in _RETRYABLE_STATUS:
                    raise JudgeError(f"judge {self.url} refused the request: {last_problem}") from None
                retry_after = _parse_retry_after(e.headers.get("Retry-After") if e.headers else None)
            except (TimeoutError, socket.timeout):
                last_problem = f"timed out after {self.timeout:g}s"
            except urllib.error.URLError as e:
                reason = e.reason
                is_timeout = isinstance(reason, (TimeoutError, socket.timeout))
                last_problem = f"timed out after {self.timeout:g}s" if is_timeout else f"cannot connect ({reason})"
            except (ConnectionError, http.client.HTTPException) as e:
                last_problem = f"connection error ({type(e).__name__})"
            if attempt == self.max_retries:
                break
            sleep = min(retry_after if retry_after is not None else self.backoff * 2**attempt, _MAX_SLEEP_S)
            log.warning("judge %s: %s; retrying in %.2fs (retry %d/%d)", self.url, last_problem, sleep,
                        attempt + 1, self.max_retries)
            time.sleep(sleep)
        raise JudgeError(f"judge {self.url} failed after {self.max_retries} retries: {last_problem}")

    def _parse(self, raw: bytes) -> str:
        try:
            payload: Any = json.loads(raw)
            content = payload["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            snippet = self._redact(raw[:200].decode("utf-8", "replace"))
            raise MalformedReplyError(f"judge {self.url} sent a reply that is not a chat completion: "
                                      f"{snippet!r}") from None
        return content if isinstance(content, str) else ""


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a numeric ``Retry-After`` header; HTTP dates are ignored (backoff applies)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
