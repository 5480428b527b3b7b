"""Preference sources behind one interface: the judge registry (:data:`JUDGES`), ``make_judge("name:arg")``
(pairrm, gpm, reward-model, verifier, llm-judge) and the OpenAI-compatible :class:`ChatClient`.

Each entry holds what the stages need to know about a judge before building it: its factory, what its
argument is, whether it checks samples against the reference answer (a verifier: its score is task
accuracy, which evaluations report as such), and whether it runs a model in the ranking process (only
those gain from data-parallel rank workers). Judge modules are imported only when their judge is built, so
model-backed judges import torch only then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from selfplay.errors import UserError, suggest
from selfplay.judges.base import Judge, JudgeItem, JudgeResult
from selfplay.judges.http import ChatClient, JudgeError, MalformedReplyError

if TYPE_CHECKING:
    from selfplay.config import RemoteConfig

__all__ = ["JUDGES", "ChatClient", "Judge", "JudgeError", "JudgeItem", "JudgeResult", "JudgeSpec",
           "MalformedReplyError", "checks_reference", "make_judge", "parse_judge_spec", "runs_local_model"]


@dataclass(frozen=True)
class JudgeSpec:
    """A registry entry: ``build(arg, batch_size, device, remote)`` and the facts the stages read before building
    (``remote``: the timeouts and retries of judges behind a URL, the ``remote`` config section)."""

    build: Callable[[str | None, int, str, "RemoteConfig | None"], Judge]
    arg: str | None = None  # what NAME:ARG's argument is, when it is required (for the error message)
    checks_reference: bool = False  # scores samples against the record's reference answer
    local_model: bool = False  # loads a model into the ranking process


def _pairrm(arg: str | None, batch_size: int, device: str, remote: RemoteConfig | None) -> Judge:
    from selfplay.judges.pairrm import PairRMJudge

    return PairRMJudge(arg or "llm-blender/PairRM", batch_size=batch_size, device=device)


def _gpm(arg: str | None, batch_size: int, device: str, remote: RemoteConfig | None) -> Judge:
    from selfplay.judges.gpm import GPMJudge

    return GPMJudge(arg, batch_size=batch_size, device=device)


def _reward_model(arg: str | None, batch_size: int, device: str, remote: RemoteConfig | None) -> Judge:
    from selfplay.judges.reward_model import RewardModelJudge

    return RewardModelJudge(arg, batch_size=batch_size, device=device)


def _verifier(arg: str | None, batch_size: int, device: str, remote: RemoteConfig | None) -> Judge:
    from selfplay.judges.verifier import VerifierJudge

    return VerifierJudge(arg)


def _llm_judge(arg: str | None, batch_size: int, device: str, remote: RemoteConfig | None) -> Judge:
    from selfplay.judges.llm_judge import LLMJudge

    url, _, model = arg.partition("#")
    return LLMJudge(url, model or "default", concurrency=batch_size, remote=remote)


# name -> entry; `--judge NAME[:ARG]`.
JUDGES: dict[str, JudgeSpec] = {
    "pairrm": JudgeSpec(_pairrm, local_model=True),
    "gpm": JudgeSpec(_gpm, arg="a checkpoint directory or hub id", local_model=True),
    "reward-model": JudgeSpec(_reward_model, arg="a checkpoint directory or hub id", local_model=True),
    "verifier": JudgeSpec(_verifier, arg="a verifier name (a task such as arith, gsm8k, math, hotpotqa; or em, f1)",
                          checks_reference=True),
    "llm-judge": JudgeSpec(_llm_judge, arg="an OpenAI-compatible URL, e.g. llm-judge:http://127.0.0.1:8000/v1#model"),
}


def parse_judge_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"name:arg"`` at the first colon (URLs keep theirs); checks the name."""
    name, sep, arg = spec.strip().partition(":")
    if name not in JUDGES:
        raise UserError(f"unknown judge '{name}'.{suggest(name, JUDGES)} "
                        f"Available: {', '.join(JUDGES)} (as NAME or NAME:ARG).")
    return name, (arg if sep and arg else None)


def checks_reference(spec: str) -> bool:
    """True when the judge of ``spec`` scores samples against the reference answer (a verifier)."""
    return JUDGES[parse_judge_spec(spec)[0]].checks_reference


def runs_local_model(spec: str) -> bool:
    """True when the judge of ``spec`` loads a model into the ranking process (PairRM, GPM, reward models)."""
    return JUDGES[parse_judge_spec(spec)[0]].local_model


def make_judge(spec: str, *, batch_size: int = 8, device: str = "auto", remote: RemoteConfig | None = None) -> Judge:
    """Build the judge named by ``spec``: ``pairrm[:path_or_id]``, ``gpm:path``, ``reward-model:path``,
    ``verifier:NAME`` (a task, or em / f1) or ``llm-judge:URL[#model]``.

    ``batch_size`` is the number of sequences per forward pass (concurrent requests for the LLM judge);
    ``remote`` the timeouts and retries of judges behind a URL (the ``remote`` config section).
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    name, arg = parse_judge_spec(spec)
    entry = JUDGES[name]
    if entry.arg is not None and not arg:
        raise UserError(f"judge '{name}' needs {entry.arg}: --judge {name}:ARG")
    return entry.build(arg, batch_size, device, remote)
