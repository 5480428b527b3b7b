"""One interface for every preference source (the registry that builds them: :mod:`selfplay.judges`).

A judge looks at the K samples of one prompt and returns either K scalar scores (``kind == "scores"``:
PairRM, reward models, verifiers) or a K×K matrix (``kind == "matrix"``: GPM's skew-symmetric score,
an LLM judge's pairwise win matrix). The rank stage turns either into a win-probability matrix with
:mod:`selfplay.core.preference`.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, TypedDict

class _JudgeItemRequired(TypedDict):
    id: str
    prompt_messages: list[dict[str, str]]
    samples: list[str]


class JudgeItem(_JudgeItemRequired, total=False):
    """One prompt and its K samples. ``prompt_messages`` are chat turns ending with the user turn."""

    reference: str | None
    meta: dict[str, Any]


class _JudgeResultRequired(TypedDict):
    errors: int


class JudgeResult(_JudgeResultRequired, total=False):
    """The judgement of one item: ``scores`` [K] or ``win_matrix`` [K][K], plus the count of failed calls.

    ``win_matrix_kind``: "prob" (entries are P(row beats column), in [0, 1]) or "skew_score" (raw
    skew-symmetric preference scores, S + S^T = 0, as GPM produces). Judges whose comparisons can fail
    (an LLM judge's reply without a verdict) also say how many of the K(K−1)/2 pairs were compared usably
    (``pairs_usable``) and show one failed reply (``sample_error``), for the rank stage's usable-reply check.
    """

    scores: list[float]
    win_matrix: list[list[float]]
    win_matrix_kind: Literal["prob", "skew_score"]
    pairs_usable: int
    sample_error: str


class Judge(Protocol):
    """Anything that scores batches of prompts; see :func:`selfplay.judges.make_judge`."""

    kind: Literal["scores", "matrix"]
    # True when the judge compares samples against the record's "reference" (verifiers).
    needs_reference: bool

    def score(self, items: list[JudgeItem]) -> list[JudgeResult]:
        """Judge every item (batched internally); returns one result per item, in order."""
        ...


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; anything else is passed through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def prompt_as_text(messages: list[dict[str, str]]) -> str:
    """A prompt conversation as plain text, for judges that take one input string (PairRM, LLM judge).

    A single user turn is its content; longer conversations are written as ``ROLE: content`` lines.
    """
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages)
