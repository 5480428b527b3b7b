"""Pairwise LLM-as-a-judge over an OpenAI-compatible endpoint (MT-Bench style ``[[A]]/[[B]]/[[C]]``).

Every unordered pair of samples is judged twice, once in each order, to cancel position bias; the
two verdicts are combined as in FastChat's pairwise mode: agreeing verdicts count, disagreeing ones
are a tie. The K×K matrix holds P(row beats column) in {0, ½, 1} with M + Mᵀ = 1 and ½ on the diagonal.

Two kinds of failure, kept apart: a reply that is not a chat completion at all (bad JSON, no ``choices``)
is a transport fault, retried by :class:`~selfplay.judges.http.ChatClient` and then an error naming the
prompt; a chat completion without a ``[[A]]/[[B]]/[[C]]`` verdict is a tie, as in FastChat, counted in
``errors`` — and the rank stage stops when a prompt is left with no usable comparison (``remote.min_usable``).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Literal

from selfplay.judges.base import JudgeItem, JudgeResult, prompt_as_text
from selfplay.judges.http import ChatClient, ChatRequest

if TYPE_CHECKING:
    from selfplay.config import RemoteConfig

log = logging.getLogger(__name__)

# Adapted from FastChat's MT-Bench "pair-v2" judge prompt (Apache-2.0).
SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. Choose the assistant that follows the user's "
    "instructions and answers the user's question better, considering helpfulness, relevance, accuracy, "
    "depth, creativity and level of detail. Begin with a short comparison of the two responses. Avoid any "
    "position bias: the order in which the responses appear must not influence your decision, nor their "
    "length, nor the assistants' names. Be as objective as possible. After your explanation, output your "
    'final verdict strictly in this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is '
    'better, and "[[C]]" for a tie.'
)
REFERENCE_NOTE = " A reference answer is provided; use it to check the correctness of both responses."

_VERDICT = re.compile(r"\[\[([ABC])\]\]")

Verdict = Literal["A", "B", "C"]


def pairwise_messages(question: str, answer_a: str, answer_b: str, reference: str | None = None) -> list[dict]:
    """The chat messages asking the judge to compare answer A with answer B."""
    parts = [f"[User Question]\n{question}\n"]
    if reference:
        parts.append(f"[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n")
    parts.append(f"[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n")
    parts.append(f"[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]")
    system = SYSTEM_PROMPT + (REFERENCE_NOTE if reference else "")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(parts)}]


def parse_verdict(reply: str) -> Verdict | None:
    """The last ``[[A]]``, ``[[B]]`` or ``[[C]]`` in the reply (the final verdict), or None if absent."""
    found = _VERDICT.findall(reply or "")
    return found[-1] if found else None  # type: ignore[return-value]


def combine_orders(first: Verdict | None, second: Verdict | None) -> float:
    """P(i beats j) from the verdicts of order (A=i, B=j) and the swapped order (A=j, B=i).

    Agreeing verdicts give 1 (i wins), 0 (j wins) or ½ (tie); disagreement or a missing verdict is a tie.
    """
    as_i = {"A": 1.0, "B": 0.0, "C": 0.5}
    as_j = {"A": 0.0, "B": 1.0, "C": 0.5}  # in the swapped order, "A" is sample j
    if first is None or second is None:
        return 0.5
    a, b = as_i[first], as_j[second]
    return a if a == b else 0.5


class LLMJudge:
    """``llm-judge:URL[#model]``: K(K−1) pairwise chat calls per prompt, ``concurrency`` at a time.

    Replies without a verdict are counted in ``errors`` and treated as ties; ``pairs_usable`` counts the
    pairs with a verdict in both orders. A server that cannot be reached, keeps failing or keeps sending
    something other than a chat completion raises :class:`~selfplay.judges.http.JudgeError` naming the prompt.
    """

    kind: Literal["matrix"] = "matrix"
    needs_reference = False

    def __init__(self, base_url: str, model: str = "default", *, concurrency: int = 8,
                 client: ChatClient | None = None, max_tokens: int = 1024, remote: RemoteConfig | None = None) -> None:
        self.client = client or ChatClient.for_remote(base_url, model, remote, concurrency=concurrency)
        self.max_tokens = max_tokens

    def score(self, items: list[JudgeItem]) -> list[JudgeResult]:
        """Judge every ordered pair of samples of every item; returns a ``prob`` win matrix per item."""
        keys: list[tuple[int, int, int]] = []  # (item, A index, B index)
        requests: list[ChatRequest] = []
        for n, item in enumerate(items):
            question = prompt_as_text(item["prompt_messages"])
            samples = item["samples"]
            for a in range(len(samples)):
                for b in range(len(samples)):
                    if a != b:
                        keys.append((n, a, b))
                        requests.append(ChatRequest(
                            pairwise_messages(question, samples[a], samples[b], item.get("reference")),
                            label=f"prompt '{item['id']}' (sample {a} as A, {b} as B)", max_tokens=self.max_tokens))
        replies = dict(zip(keys, self.client.chat_many(requests)))
        results: list[JudgeResult] = []
        for n, item in enumerate(items):
            k = len(item["samples"])
            matrix = [[0.5] * k for _ in range(k)]
            errors = usable = 0
            sample_error = ""
            for i in range(k):
                for j in range(i + 1, k):
                    first, second = parse_verdict(replies[(n, i, j)]), parse_verdict(replies[(n, j, i)])
                    for verdict, key in ((first, (n, i, j)), (second, (n, j, i))):
                        if verdict is None:
                            errors += 1
                            sample_error = sample_error or replies[key][:120]
                    usable += first is not None and second is not None
                    matrix[i][j] = combine_orders(first, second)
                    matrix[j][i] = 1.0 - matrix[i][j]
            if errors:
                log.info("prompt '%s': %d judge replies without a [[A]]/[[B]]/[[C]] verdict (ties), e.g. %r",
                         item["id"], errors, sample_error)
            results.append({"win_matrix": matrix, "win_matrix_kind": "prob", "errors": errors,
                            "pairs_usable": usable, "sample_error": sample_error})
        return results
