"""One interface for every preference source, and ``make_judge("name:arg")`` to build one.

A judge looks at the K samples of one prompt and returns either K scalar scores (``kind == "scores"``:
PairRM, reward models, verifiers) or a K×K matrix (``kind == "matrix"``: GPM's skew-symmetric score,
an LLM judge's pairwise win matrix). The rank stage turns either into a win-probability matrix with
:mod:`selfplay.core.preference`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

from selfplay.errors import UserError, suggest

if TYPE_CHECKING:
    from selfplay.config import RemoteConfig


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
    """Anything that scores batches of prompts; see :func:`make_judge`."""

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


def _make_pairrm(arg: str | None, batch_size: int, device: str, remote: RemoteConfig | None) -> Judge:
    from selfplay.judges.pairrm import PairRMJudge

    return PairRMJudge(arg or "llm-blender/PairRM", batch_size=batch_size, device=device)


def _make_gpm(arg: str | None, batch_size: int, device: str, remote: RemoteConfig | None) -> Judge:
    from selfplay.judges.gpm import GPMJudge

    return GPMJudge(_require(arg, "gpm", "a checkpoint directory or hub id"), batch_size=batch_size, device=device)


def _make_reward_model(arg: str | None, batch_size: int, device: str, remote: RemoteConfig | None) -> Judge:
    from selfplay.judges.reward_model import RewardModelJudge

    return RewardModelJudge(_require(arg, "reward-model", "a checkpoint directory or hub id"),
                            batch_size=batch_size, device=device)


def _make_verifier(arg: str | None, batch_size: int, device: str, remote: RemoteConfig | None) -> Judge:
    from selfplay.judges.verifier import VerifierJudge

    return VerifierJudge(_require(arg, "verifier", "a verifier name (arith, gsm8k, math, em, f1)"))


def _make_llm_judge(arg: str | None, batch_size: int, device: str, remote: RemoteConfig | None) -> Judge:
    from selfplay.judges.llm_judge import LLMJudge

    url = _require(arg, "llm-judge", "an OpenAI-compatible URL, e.g. llm-judge:http://127.0.0.1:8000/v1#model")
    url, _, model = url.partition("#")
    return LLMJudge(url, model or "default", concurrency=batch_size, remote=remote)


# name -> factory(arg, batch_size, device, remote settings); modules are imported only when their judge is built.
JUDGES: dict[str, Callable[[str | None, int, str, "RemoteConfig | None"], Judge]] = {
    "pairrm": _make_pairrm,
    "gpm": _make_gpm,
    "reward-model": _make_reward_model,
    "verifier": _make_verifier,
    "llm-judge": _make_llm_judge,
}


# Judges that check samples against the record's reference answer (their score is task accuracy, which
# evaluations report as such, so they are not averaged a second time as a "judge score").
REFERENCE_JUDGES: frozenset[str] = frozenset({"verifier"})


def checks_reference(spec: str) -> bool:
    """True when the judge of ``spec`` scores samples against the reference answer (a verifier)."""
    return parse_judge_spec(spec)[0] in REFERENCE_JUDGES


# Judges that run a model in the ranking process: only these gain from data-parallel rank workers (a
# verifier is string matching, an LLM judge's requests are already concurrent).
LOCAL_MODEL_JUDGES: frozenset[str] = frozenset({"pairrm", "gpm", "reward-model"})


def runs_local_model(spec: str) -> bool:
    """True when the judge of ``spec`` loads a model into the ranking process (PairRM, GPM, reward models)."""
    return parse_judge_spec(spec)[0] in LOCAL_MODEL_JUDGES


def _require(arg: str | None, name: str, what: str) -> str:
    if not arg:
        raise UserError(f"judge '{name}' needs {what}: --judge {name}:ARG")
    return arg


def parse_judge_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"name:arg"`` at the first colon (URLs keep theirs); checks the name."""
    name, sep, arg = spec.strip().partition(":")
    if name not in JUDGES:
        raise UserError(f"unknown judge '{name}'.{suggest(name, JUDGES)} "
                        f"Available: {', '.join(JUDGES)} (as NAME or NAME:ARG).")
    return name, (arg if sep and arg else None)


def make_judge(spec: str, *, batch_size: int = 8, device: str = "auto", remote: RemoteConfig | None = None) -> Judge:
    """Build the judge named by ``spec``: ``pairrm[:path_or_id]``, ``gpm:path``, ``reward-model:path``,
    ``verifier:NAME`` (arith, gsm8k, math, em, f1) or ``llm-judge:URL[#model]``.

    ``batch_size`` is the number of sequences per forward pass (concurrent requests for the LLM judge);
    ``remote`` the timeouts and retries of judges behind a URL (the ``remote`` config section).
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    name, arg = parse_judge_spec(spec)
    return JUDGES[name](arg, batch_size, device, remote)
