"""The OpenAI-compatible chat client of every LLM judge and RISE teacher: the ``openai`` package, with our
retry policy on top of it.

``openai.AsyncOpenAI`` does the HTTP (keep-alive, the bearer key, typed errors, the ``ChatCompletion``
type); we turn its own retries off (``max_retries=0``) and keep four things it does differently:

* **one backoff per endpoint** (:class:`selfplay.remote.Backoff`): its retries are per request, so a judge's
  64 in-flight requests to a failing server slept and logged 64 times per round;
* **a deadline per attempt**: its timeout bounds each read, so a server sending one byte a second never
  trips it; ``asyncio.wait_for`` bounds the whole request (``timeout`` seconds, user-set: ``remote.timeout``);
* **a 200 reply that is not a chat completion** (not JSON, no ``choices``) is retried like a 5xx and then
  reported with the record it was for: openai raises a bare ``JSONDecodeError`` for the first and returns a
  ``ChatCompletion`` with ``choices=None`` or ``[]`` for the second;
* ``Retry-After`` beyond 2 minutes: openai then stops retrying at once; we wait at most
  :data:`selfplay.remote.MAX_SLEEP_S` and let the retry limit decide.

The API key is read from an environment variable and sent only as the bearer token; every message built
here has it redacted (servers sometimes echo headers). Without a key the placeholder ``EMPTY`` is sent
(vLLM's documented convention; a server without a key ignores the header).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from selfplay.errors import UserError
from selfplay.remote import RETRYABLE_STATUS, Backoff, env_secret, parse_retry_after, redact

if TYPE_CHECKING:
    from selfplay.config import RemoteConfig

T = TypeVar("T")


class JudgeError(UserError):
    """A judge or teacher could not be reached, refused the request, or kept failing (after retries)."""


class MalformedReplyError(JudgeError):
    """The server kept answering 200 with a body that is not an OpenAI-style chat completion."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for; ``label`` names its record in errors ("prompt 'q3', samples 0 vs 1")."""

    messages: list[dict[str, Any]]
    label: str = "request"
    temperature: float = 0.0
    max_tokens: int = 1024


class _NotACompletion(Exception):
    """A 200 reply without ``choices[0].message``."""


class ChatClient:
    """Chat completions against an OpenAI-compatible server (vLLM, llama.cpp, TGI, OpenAI, ``selfplay serve``).

    ``base_url`` is the API root, e.g. ``http://127.0.0.1:8000/v1`` (a full ``.../chat/completions`` URL is
    accepted too). A request that times out, cannot connect, is cut off, gets 408/409/425/429/5xx or a 200
    that is not a chat completion is tried again up to ``max_retries`` times, after the endpoint's shared
    backoff (``backoff * 2**round`` seconds, or the server's ``Retry-After``); then :class:`JudgeError`
    names the request's label, the last problem and the time spent. Other statuses (400, 401, 404) fail
    at once. The default ``timeout`` is the openai client's 600 s: a long judgment from a local model on a
    CPU takes minutes.
    """

    def __init__(self, base_url: str, model: str = "default", *, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 600.0, max_retries: int = 4, backoff: float = 1.0, concurrency: int = 8,
                 role: str = "judge") -> None:
        base = base_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise UserError(f"{role} URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base.removesuffix("/chat/completions")
        self.url = self.base_url + "/chat/completions"
        self.model, self.api_key_env, self.role = model, api_key_env, role
        self.timeout, self.max_retries, self.concurrency = timeout, max_retries, max(1, concurrency)
        self.backoff = Backoff(f"{role} {self.url}", base=backoff, max_retries=max_retries)

    @classmethod
    def for_remote(cls, base_url: str, model: str, remote: RemoteConfig | None, **kw: Any) -> ChatClient:
        """A client with the timeout, retries and backoff of the ``remote`` config section (defaults if None)."""
        if remote is not None:
            kw = {"timeout": remote.timeout, "max_retries": remote.max_retries, "backoff": remote.backoff, **kw}
        return cls(base_url, model, **kw)

    def __repr__(self) -> str:  # no key here either
        return f"ChatClient(url={self.url!r}, model={self.model!r})"

    def _redact(self, text: str) -> str:
        return redact(text, [env_secret(self.api_key_env)])

    def chat(self, messages: list[dict[str, Any]], *, temperature: float = 0.0, max_tokens: int = 1024,
             label: str = "request") -> str:
        """One request; returns ``choices[0].message.content`` ("" when the message has no text)."""
        return self.chat_many([ChatRequest(messages, label, temperature, max_tokens)])[0]

    def chat_many(self, requests: Sequence[ChatRequest]) -> list[str]:
        """Every request, ``concurrency`` at a time; the replies in order. The first request that fails for
        good cancels the others and raises :class:`JudgeError` (replies already received are dropped: the
        callers write per record, and a rerun asks again only for what was not written)."""
        if not requests:
            return []
        return _run(self._ask_all(list(requests)))

    async def _ask_all(self, requests: list[ChatRequest]) -> list[str]:
        import openai

        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=env_secret(self.api_key_env) or "EMPTY",
                                    timeout=self.timeout, max_retries=0)
        slots = asyncio.Semaphore(self.concurrency)

        async def one(request: ChatRequest) -> str:
            async with slots:
                return await self._ask(client, request)

        async with client:
            tasks = [asyncio.ensure_future(one(r)) for r in requests]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _ask(self, client: Any, request: ChatRequest) -> str:
        """One request with the shared backoff, the deadline and the retry limit."""
        import openai

        started, attempts = time.monotonic(), 0
        while True:
            while (wait := self.backoff.wait_s()) > 0:
                await asyncio.sleep(wait)
            ticket = self.backoff.ticket()
            attempts += 1
            retry_after, malformed = None, False
            try:
                raw = await asyncio.wait_for(client.chat.completions.with_raw_response.create(
                    model=self.model, messages=request.messages, temperature=request.temperature,
                    max_tokens=request.max_tokens), timeout=self.timeout)
                text = _content(raw)
                self.backoff.succeeded()
                return text
            except openai.APIStatusError as e:
                detail = self._redact(e.response.text[:200]) if e.response is not None else ""
                problem = f"HTTP {e.status_code}" + (f": {detail}" if detail else "")
                if e.status_code not in RETRYABLE_STATUS:
                    raise JudgeError(f"{self.role} {self.url} refused {request.label}: {problem}") from None
                retry_after = parse_retry_after(e.response.headers)
            except (asyncio.TimeoutError, openai.APITimeoutError):
                problem = f"timed out: no complete reply within {self.timeout:g}s (remote.timeout)"
            except openai.APIConnectionError as e:
                cause = e.__cause__ or e
                problem = self._redact(f"connection failed ({type(cause).__name__}: {cause})"[:300])
            except _NotACompletion as e:
                problem, malformed = self._redact(f"the reply is not a chat completion: {e}"), True
            if attempts > self.max_retries:
                error = MalformedReplyError if malformed else JudgeError
                raise error(f"{self.role} {self.url}: {request.label}: {problem} — gave up after {attempts} tries "
                            f"in {time.monotonic() - started:.1f}s") from None
            self.backoff.failed(ticket, problem, retry_after)


def _content(raw: Any) -> str:
    """``choices[0].message.content`` of an openai raw response; :class:`_NotACompletion` when there is none."""
    body = raw.http_response.text
    try:
        completion = raw.parse()
        message = completion.choices[0].message
    except (ValueError, TypeError, IndexError, AttributeError):
        raise _NotACompletion(repr(body[:200])) from None
    return message.content if isinstance(message.content, str) else ""


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code (in a helper thread when this thread has a loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
