"""``verifier:NAME``: rule-based scores, each sample checked against the record's reference answer."""

from __future__ import annotations

from typing import Literal

from selfplay.errors import UserError
from selfplay.judges.base import JudgeItem, JudgeResult


class VerifierJudge:
    """Scores = ``get_verifier(name)(sample, reference)`` (e.g. 1.0 for a correct GSM8K answer, else 0.0).

    Names come from :func:`selfplay.envs.tasks.get_verifier`: a task of the registry (arith, gsm8k, math,
    hotpotqa, ...: its :meth:`~selfplay.envs.tasks.Task.verify`), or the task-free em and f1.
    """

    kind: Literal["scores"] = "scores"
    needs_reference = True

    def __init__(self, name: str) -> None:
        from selfplay.envs.tasks import get_verifier

        self.name = name
        self.verify = get_verifier(name)

    def score(self, items: list[JudgeItem]) -> list[JudgeResult]:
        """One verifier call per sample; no batching needed (pure Python, microseconds each)."""
        results: list[JudgeResult] = []
        for item in items:
            reference = item.get("reference")
            if not isinstance(reference, str) or not reference.strip():
                raise UserError(f"prompt '{item['id']}': the verifier:{self.name} judge needs a 'reference' answer")
            scores = [float(self.verify(sample, reference)) for sample in item["samples"]]
            results.append({"scores": scores, "errors": 0})
        return results
