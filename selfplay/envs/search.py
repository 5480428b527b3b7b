"""The ``search`` tool's backends behind one interface (the tools themselves: :mod:`selfplay.envs.tools`).

* ``replay`` (default, offline): answers from what earlier runs recorded — the ``Action: search[q]`` /
  ``Observation: ...`` pairs inside FireAct trajectory files (anchor JSON, our JSONL, Alpaca SFT files) and
  query → result cache files like the anchor's ``tools/search.json``. The exact query (case and spacing
  folded) returns its recorded result — a query the anchor recorded as empty (``Observation: None``, a null
  in its cache) stays empty; a query never recorded gets the nearest recorded query-and-result by BM25
  (``bm25s``), flagged ``nearest`` and counted per trajectory; nothing similar at all is empty.
* ``serpapi``: Google through SerpAPI when ``SERPAPI_API_KEY`` is set (answer box, else the first organic
  snippet, as the anchor's ``extract_answer``); results are cached to a JSON file. The key is read from
  the environment, sent only to SerpAPI, and never logged.

A backend that fails or times out never crashes a rollout: its observation says so and it is counted
(:class:`SearchResult.error`). SerpAPI failures worth another try (timeouts, dropped connections, 429/5xx,
a reply that is not JSON) are retried ``remote.search_retries`` times behind one backoff shared by the
step's concurrent searches, honouring ``Retry-After``; each try is cut off after ``remote.search_timeout``
seconds, whole. Tool output is untrusted text: it is only ever shown to the model.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfplay.errors import ConfigError, DataError, UserError, suggest
from selfplay.remote import RETRYABLE_STATUS, Backoff, bounded_get, parse_retry_after, redact

if TYPE_CHECKING:
    from selfplay.config import RemoteConfig

NO_RESULTS = "No results found."
SERPAPI_URL = "https://serpapi.com/search.json"


@dataclass(frozen=True)
class SearchResult:
    """A search's answer. ``empty``: nothing found (the tool shows its observation style's text for that);
    ``nearest``: the replay's answer to another, similar recorded query (this one was never recorded)."""

    text: str
    error: bool = False
    empty: bool = False
    nearest: bool = False


EMPTY = SearchResult(NO_RESULTS, empty=True)


def normalize_query(query: str) -> str:
    return " ".join(query.lower().split())


def recorded_pairs(path: Path) -> list[tuple[str, str | None]]:
    """(query, observation) pairs recorded in a trajectory or cache file, None for a search that found
    nothing (FireAct's ``Observation: None``, a null or empty value in a cache); a broken file names itself."""
    path = Path(path)
    if not path.is_file():
        raise DataError("search source not found", path=path)
    try:
        if path.suffix == ".jsonl":
            data: Any = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg})", path=path, line=e.lineno) from None
    if isinstance(data, dict) and all(isinstance(v, (str, type(None))) for v in data.values()):
        return [(q, v if v and v.strip() else None) for q, v in data.items()]  # a query -> result cache
    entries = data.values() if isinstance(data, dict) else data if isinstance(data, list) else []
    pairs = []
    for entry in entries:
        text = (entry.get("traj") or entry.get("output") or "") if isinstance(entry, dict) else ""
        pairs += _pairs_in_text(text if isinstance(text, str) else "")
    return pairs


def _pairs_in_text(text: str) -> list[tuple[str, str | None]]:
    """The searches of a trajectory as FireAct ran them: the query is the argument its parser takes from the
    action (:func:`selfplay.envs.react.fireact_call`), for a tool named exactly ``search``."""
    from selfplay.envs.react import fireact_call, parse_trajectory, response_part

    pairs = []
    for step in parse_trajectory(response_part(text)):
        call = fireact_call(step.action)
        if call is not None and call[0] == "search" and step.observation is not None:
            observation = step.observation
            pairs.append((call[1], None if observation.strip() in ("", "None") else observation))
    return pairs


class ReplaySearch:
    """Recorded results: the exact query's (empty when it was recorded empty), else — for a query never
    recorded — the nearest recorded query-and-result by BM25 (``nearest``; :attr:`fallbacks` counts them)."""

    def __init__(self, sources: list[str | Path]) -> None:
        if not sources:
            raise UserError("the replay search needs at least one source file (agent.search_sources): FireAct "
                            "trajectories or a query -> result cache such as ../shared/data/agent/search_cache.json")
        pairs = [p for src in sources for p in recorded_pairs(Path(src))]
        self.exact: dict[str, str | None] = {normalize_query(q): o for q, o in pairs}
        self.docs = list({(normalize_query(q), o): (q, o) for q, o in pairs if o is not None}.values())
        self.fallbacks = 0
        self._index = None
        self._lock = threading.Lock()

    def _retriever(self) -> Any:
        import bm25s

        with self._lock:
            if self._index is None and self.docs:
                corpus = [f"{q} {o}" for q, o in self.docs]
                retriever = bm25s.BM25()
                retriever.index(bm25s.tokenize(corpus, show_progress=False), show_progress=False)
                self._index = retriever
        return self._index

    def __call__(self, query: str) -> SearchResult:
        key = normalize_query(query)
        if key in self.exact:
            hit = self.exact[key]
            return EMPTY if hit is None else SearchResult(hit)
        with self._lock:
            self.fallbacks += 1
        retriever = self._retriever()
        if retriever is None or not query.strip():
            return SearchResult(NO_RESULTS, empty=True, nearest=True)
        import bm25s

        tokens = bm25s.tokenize([query], show_progress=False)
        if not tokens.ids or not tokens.ids[0]:
            return SearchResult(NO_RESULTS, empty=True, nearest=True)
        ids, scores = retriever.retrieve(tokens, k=1, show_progress=False)
        if float(scores[0][0]) <= 0:
            return SearchResult(NO_RESULTS, empty=True, nearest=True)
        return SearchResult(self.docs[int(ids[0][0])][1], nearest=True)


class _SearchFailed(Exception):
    """A SerpAPI request that failed for good (the message is the observation's reason)."""


class SerpApiSearch:
    """Google through SerpAPI, cached in ``cache_path`` (query -> result JSON, the anchor's search.json form)."""

    def __init__(self, cache_path: str | Path | None = None, *, timeout: float = 30.0, retries: int = 2,
                 backoff: float = 1.0, url: str = SERPAPI_URL) -> None:
        self.key = os.environ.get("SERPAPI_API_KEY", "")
        if not self.key:
            raise UserError("the serpapi search backend needs the SERPAPI_API_KEY environment variable "
                            "(or use agent.search=replay, which works offline)")
        self.url, self.timeout, self.retries = url, timeout, retries
        self.backoff = Backoff(f"search {url}", base=backoff, max_retries=retries)
        self.cache_path = Path(cache_path) if cache_path else None
        self.cache: dict[str, str | None] = {}  # None: found nothing (a null in the file, as the anchor's)
        if self.cache_path is not None and self.cache_path.is_file():
            self.cache = {q: v for q, v in recorded_pairs(self.cache_path)}
        self._lock = threading.Lock()

    def __call__(self, query: str) -> SearchResult:
        if query in self.cache:
            return EMPTY if self.cache[query] is None else SearchResult(self.cache[query])
        try:
            result = extract_answer(self._fetch(query))
        except _SearchFailed as e:
            return SearchResult(f"search failed: {e}"[:300], error=True)
        with self._lock:
            self.cache[query] = result
            if self.cache_path is not None:
                from selfplay.io import write_json

                write_json(self.cache_path, self.cache)
        return EMPTY if result is None else SearchResult(result)

    def _fetch(self, query: str) -> dict[str, Any]:
        """SerpAPI's JSON for ``query``, after the shared backoff and retries; :class:`_SearchFailed` else."""
        params = urllib.parse.urlencode({"engine": "google", "q": query, "google_domain": "google.com", "gl": "us",
                                         "hl": "en", "api_key": self.key})
        started, attempts = time.monotonic(), 0
        while True:
            while (wait := self.backoff.wait_s()) > 0:
                time.sleep(wait)
            ticket = self.backoff.ticket()
            attempts += 1
            retry_after = None
            try:
                status, headers, body = bounded_get(f"{self.url}?{params}", self.timeout,
                                                    {"Accept": "application/json"})
                if status == 200:
                    payload = json.loads(body)
                    if isinstance(payload, dict):
                        self.backoff.succeeded()
                        return payload
                    problem = f"the reply is not a JSON object: {body[:80]!r}"
                else:
                    problem = f"HTTP {status}"
                    if status not in RETRYABLE_STATUS:
                        raise _SearchFailed(redact(problem + f": {body[:120]!r}", [self.key]))
                    retry_after = parse_retry_after(headers)
            except (OSError, http.client.HTTPException) as e:  # TimeoutError is an OSError
                problem = f"{type(e).__name__}: {e}"
            except ValueError:
                problem = f"the reply is not JSON: {body[:80]!r}"
            problem = redact(problem, [self.key])
            if attempts > self.retries:
                raise _SearchFailed(f"{problem} (gave up after {attempts} tries in {time.monotonic() - started:.1f}s)")
            self.backoff.failed(ticket, problem, retry_after)


def extract_answer(res: dict[str, Any]) -> str | None:
    """The anchor's choice of text from a SerpAPI result: the answer box's answer, snippet or highlighted
    words, else the first organic result's snippet."""
    box = res.get("answer_box") or {}
    if "answer" in box:
        return str(box["answer"])
    if "snippet" in box:
        return str(box["snippet"])
    if box.get("snippet_highlighted_words"):
        return str(box["snippet_highlighted_words"][0])
    organic = res.get("organic_results") or []
    if organic and "snippet" in organic[0]:
        return str(organic[0]["snippet"])
    return None


SearchFn = Callable[[str], SearchResult]
def _serpapi(sources: list[str], cache: str | None, remote: RemoteConfig | None) -> SearchFn:
    if remote is None:
        return SerpApiSearch(cache)
    return SerpApiSearch(cache, timeout=remote.search_timeout, retries=remote.search_retries, backoff=remote.backoff)


# name -> factory(sources, cache path, remote settings): the `agent.search` backends.
SEARCH_BACKENDS: dict[str, Callable[[list[str], str | None, "RemoteConfig | None"], SearchFn]] = {
    "replay": lambda sources, cache, remote: ReplaySearch(sources),
    "serpapi": _serpapi,
}


def make_search(name: str, sources: list[str], cache: str | None = None,
                remote: RemoteConfig | None = None) -> SearchFn:
    """The search backend called ``name`` (checked, and its key or sources, before any model is loaded)."""
    if name not in SEARCH_BACKENDS:
        raise UserError(f"unknown search backend '{name}'.{suggest(name, SEARCH_BACKENDS)} "
                        f"Available: {', '.join(SEARCH_BACKENDS)}.")
    return SEARCH_BACKENDS[name](sources, cache, remote)


def check_search_config(agent: Any) -> None:
    """``agent.search`` names a backend, and the replay backend has sources (when the config is loaded;
    serpapi's key is checked when the backend is built, so a config can be shown on a machine without it)."""
    if agent.search not in SEARCH_BACKENDS:
        raise ConfigError(f"agent.search '{agent.search}' is not one of {', '.join(SEARCH_BACKENDS)}")
    if agent.search == "replay" and not agent.search_sources:
        raise ConfigError("agent.search=replay needs agent.search_sources: FireAct trajectory files and/or a "
                          "query -> result cache (e.g. ../shared/data/agent/search_cache.json)")
