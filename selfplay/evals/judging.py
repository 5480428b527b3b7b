"""LLM-as-a-judge for the evals: one interface over an OpenAI-compatible server or a local HF model,
plus the verdict parsers shared by MT-Bench and the pairwise win rate.

Parsing follows FastChat's ``llm_judge/common.py``: a single-answer rating is ``[[r]]`` with ``[r]`` as a
fallback, a pairwise verdict is ``[[A]]``/``[[B]]``/``[[C]]``; anything else is an *error*, counted and
reported, never turned into a score.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from selfplay.config import RemoteConfig

Messages = list[dict[str, str]]

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")

# Verdict of one judged order -> which side won; ``combine_orders`` maps them back to model/baseline.
_FIRST_ORDER = {"A": "model", "B": "baseline", "tie": "tie"}  # A = model's answer
_SECOND_ORDER = {"A": "baseline", "B": "model", "tie": "tie"}  # A = baseline's answer


class ChatJudge(Protocol):
    """Anything that answers a batch of judge conversations greedily (temperature 0): a benchmark's grader.

    Not a :class:`selfplay.judges.Judge`, which scores the K samples of a prompt for ranking: a benchmark
    sends its own judge prompts (FastChat's templates) and parses the replies itself (:func:`parse_rating`,
    :func:`parse_verdict`), counting unparsable ones as errors instead of ties."""

    name: str

    def complete(self, conversations: list[Messages], *, max_tokens: int,
                 labels: list[str] | None = None) -> list[str]:
        """One reply per conversation, in order; ``labels`` name each conversation's record in errors."""
        ...


class HttpJudge:
    """A judge behind an OpenAI-compatible ``/chat/completions`` endpoint (retries live in ChatClient).

    Requests of one batch run ``parallel`` at a time, like FastChat's ``--parallel``: judge calls are I/O
    bound and a served judge batches concurrent requests itself. A server that keeps failing, or keeps
    answering with something that is not a chat completion, stops the evaluation with an error naming the
    record (judgments already written stay; the rerun continues after them); a chat completion without a
    verdict is an unparsable judgment, counted as an error in the results.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.name = f"{client.model}@{client.url}"

    def complete(self, conversations: list[Messages], *, max_tokens: int,
                 labels: list[str] | None = None) -> list[str]:
        from selfplay.judges.http import ChatRequest

        labels = labels or [f"conversation {i}" for i in range(len(conversations))]
        return self.client.chat_many([ChatRequest(c, label, 0.0, max_tokens)
                                      for c, label in zip(conversations, labels)])


class LocalJudge:
    """A local HF chat model as the judge: greedy decoding of its chat template."""

    def __init__(self, sampler: Any, name: str) -> None:
        self.sampler = sampler
        self.name = name

    def complete(self, conversations: list[Messages], *, max_tokens: int,
                 labels: list[str] | None = None) -> list[str]:
        from selfplay.evals.generation import generate_chat

        return generate_chat(self.sampler, conversations, max_new_tokens=max_tokens, temperature=0.0,
                             progress=False)


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def make_chat_judge(spec: str, *, judge_model: str = "default", api_key_env: str = "OPENAI_API_KEY",
                    parallel: int = 4, batch_size: int = 8, remote: RemoteConfig | None = None) -> ChatJudge:
    """Build a judge from ``--judge``: an ``http(s)://`` API root, or a local model path/alias.

    ``llm-judge:URL`` (the ``rank.judge`` spelling) is accepted too; ``remote`` holds the timeout and retries.
    """
    spec = spec.removeprefix("llm-judge:")
    if is_url(spec):
        from selfplay.judges.http import ChatClient

        return HttpJudge(ChatClient.for_remote(spec, judge_model, remote, api_key_env=api_key_env,
                                               concurrency=parallel))
    from selfplay.core.samplers import make_sampler

    return LocalJudge(make_sampler("hf", spec, batch_size=batch_size), name=spec)


def judge_conversation(system_prompt: str, user_prompt: str) -> Messages:
    """FastChat sends the template's system prompt (when any) and the filled template as one user turn."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": user_prompt}]


def parse_rating(judgment: str, *, low: float = 1.0, high: float = 10.0) -> float | None:
    """The 1-10 score in ``[[r]]`` (else ``[r]``); ``None`` when absent or outside [low, high]."""
    match = _RATING.search(judgment) or _RATING_FALLBACK.search(judgment)
    if not match:
        return None
    score = float(match.group(1))
    return score if low <= score <= high else None


def parse_verdict(judgment: str) -> str:
    """``"A"``, ``"B"``, ``"tie"`` (``[[C]]``) or ``"error"``: the reply's last verdict tag, as the rank
    stage's judge reads it (judges sometimes quote the instructions' tags before their verdict)."""
    from selfplay.judges.llm_judge import parse_verdict as last_verdict_tag

    return {"A": "A", "B": "B", "C": "tie", None: "error"}[last_verdict_tag(judgment)]


def combine_orders(first: str, second: str) -> str:
    """Merge the verdicts of both presentation orders into ``model``/``baseline``/``tie``/``error``.

    ``first`` judged (A = model, B = baseline), ``second`` the swapped order. As in FastChat, a verdict that
    flips with the order is position bias, so it counts as a tie; an unparsable verdict in either order
    makes the pair an error (excluded from the rates and counted). Unlike the rank stage's
    ``selfplay.judges.llm_judge.combine_orders``, which must fill every matrix cell and so reads an
    error as a tie, a benchmark reports errors instead of scoring them.
    """
    if first == "error" or second == "error":
        return "error"
    one, two = _FIRST_ORDER[first], _SECOND_ORDER[second]
    return one if one == two else "tie"


def preference(outcome: str) -> float:
    """Model-beats-baseline preference of a combined outcome: 1, 0 or 0.5 for a tie."""
    if outcome == "error":
        raise ValueError("an errored judgment has no preference; filter errors out first")
    return {"model": 1.0, "baseline": 0.0, "tie": 0.5}[outcome]
