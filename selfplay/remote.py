"""What every call to a remote service shares (LLM judges, RISE teachers, SerpAPI search): one backoff per
endpoint, ``Retry-After``, a deadline per attempt, and keys kept out of every message.

Why one backoff per endpoint: a judge sends K(K−1) × batch requests at once; when the server fails they all
fail together, and if each backed off on its own the user read one "retrying in …" line per request (~50
for one outage) and the retries arrived as a burst again. Here the first failure of a round opens the round
(one line, one sleep), the requests that were in flight when it opened join it silently, and nothing is sent
to the endpoint until the round's sleep is over. A request still gives up after its own ``max_retries``, so
the total wait stays bounded whatever the others do.
"""

from __future__ import annotations

import email.message
import email.utils
import http.client
import logging
import math
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable

log = logging.getLogger("selfplay.remote")

# HTTP statuses worth another try: timeouts, lock conflicts, rate limiting and server-side failures.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Never sleep longer than this between tries, whatever Retry-After says (a server asking for an hour is
# answered by the retry limit instead).
MAX_SLEEP_S = 120.0


def parse_retry_after(headers: object) -> float | None:
    """Seconds to wait from ``Retry-After-Ms`` or ``Retry-After`` (seconds or an HTTP date); None if absent.

    ``headers``: anything with ``.get(name)`` (httpx, http.client and urllib headers all are).
    """
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = get(name)
        if not value:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            seconds = when.timestamp() - time.time()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every non-empty secret replaced by ``***`` (servers sometimes echo headers or URLs)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def env_secret(name: str) -> str | None:
    """The value of environment variable ``name`` (None when unset or empty)."""
    return os.environ.get(name) or None


class Backoff:
    """One exponential backoff shared by every in-flight request to one endpoint (thread-safe).

    A request takes a :meth:`ticket` before it is sent and, when it fails in a way worth another try, calls
    :meth:`failed` with it. The first failure since the last round opened a new round: one warning line,
    sleep ``base * 2**(streak - 1)`` capped at :data:`MAX_SLEEP_S`, or the server's ``Retry-After`` when it
    gave one. Failures of requests sent before the round opened join it (a longer ``Retry-After`` extends
    it). :meth:`wait_s` says how long a request must still wait before it is sent. A success ends the
    streak, so the next outage starts again from ``base``.
    """

    def __init__(self, name: str, *, base: float = 1.0, max_retries: int = 4) -> None:
        self.name, self.base, self.max_retries = name, base, max_retries
        self._lock = threading.Lock()
        self._epoch = 0  # rounds opened so far (a ticket is the epoch a request was sent in)
        self._streak = 0  # consecutive rounds without a success
        self._resume_at = 0.0  # time.monotonic() before which nothing is sent
        self.rounds_logged = 0  # "retrying in ..." lines written (tests count them)

    def ticket(self) -> int:
        with self._lock:
            return self._epoch

    def wait_s(self) -> float:
        with self._lock:
            return max(0.0, self._resume_at - time.monotonic())

    def succeeded(self) -> None:
        with self._lock:
            self._streak = 0

    def failed(self, ticket: int, problem: str, retry_after: float | None) -> None:
        """Record a retryable failure of the request that took ``ticket``; the caller then waits
        :meth:`wait_s` and tries again."""
        with self._lock:
            now = time.monotonic()
            if ticket == self._epoch:  # the first failure seen since this request was sent: a new round
                self._epoch += 1
                self._streak += 1
                # Retry-After: 0 is no reason to hammer a failing server (openai's client ignores it too)
                sleep = retry_after if retry_after else self.base * 2 ** (self._streak - 1)
                sleep = min(sleep, MAX_SLEEP_S)
                self._resume_at = now + sleep
                self.rounds_logged += 1
                log.warning("%s: %s; retrying in %.1fs (round %d of at most %d)", self.name, problem, sleep,
                            self._streak, self.max_retries)
            elif retry_after:  # joins the open round; the server may ask for longer
                self._resume_at = max(self._resume_at, now + min(retry_after, MAX_SLEEP_S))


def bounded_get(url: str, timeout: float, headers: dict[str, str] | None = None) -> tuple[int, email.message.Message, bytes]:
    """GET ``url`` with the whole exchange (connect, status, headers, body) inside ``timeout`` seconds.

    A socket timeout bounds each read only, so a server answering one byte a second would hold a request
    forever; a timer shuts the socket down at the deadline instead (:class:`TimeoutError`). Returns
    (status, headers, body) for any status; transport failures raise OSError / http.client.HTTPException.
    """
    parts = urllib.parse.urlsplit(url)
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = connection_type(parts.hostname or "", parts.port, timeout=timeout)
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        if conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(timeout, cut)
    timer.daemon = True
    timer.start()
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise TimeoutError(f"timed out: no complete reply within {timeout:g}s") from None
        raise
    finally:
        timer.cancel()
        conn.close()
