"""RISE's environments: a problem, an answer, a reward, and the feedback that asks for another attempt.

Gym-like (cmu-mind/RISE ``environments/``): :meth:`AnswerEnv.reset` gives the first observation (the
question after a one-shot solved example), :meth:`AnswerEnv.step` scores an answer. Rewards: 1 for a
correct final answer, 0 for another answer, -1 when there is no parsable answer (the anchor's GSM8K rule;
its MATH rule gives 0 there). An
environment is a task of the registry (:mod:`selfplay.envs.tasks`) with a RISE rule (``rise.rewards:
selfplay``, below; ``anchor`` checks GSM8K and MATH with cmu-mind/RISE's own code instead, see
docs/anchor-differences.md):

* ``gsm8k`` — the answer is the last non-empty ``\\boxed{...}`` (commas, ``$`` and a sign allowed)
  compared numerically with the reference's ``#### n``; no boxed number is -1.
* ``math`` — math-verify equivalence of the last ``\\boxed{}`` with the reference's boxed answer; no boxed
  answer is -1. A reference whose final answer is several adjacent boxes (``\\boxed{5}, \\boxed{11}``) is
  one set-valued answer.
* ``arith`` — our embedded task: a boxed number if there is one, else the last number of the answer
  (SmolLM2-class models rarely box); -1 only when the answer holds no number at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from selfplay.envs.tasks import TASKS, RiseRule, Task, records_task
from selfplay.errors import UserError, suggest

Messages = list[dict[str, str]]

# The anchor's texts (cmu-mind/RISE environments/gsm8k.py, math.py): the first observation after the
# one-shot example, and the feedback after a wrong answer.
FIRST_OBSERVATION = "Great job! You've successfully answered the question. Now, let's move on to the next one.\n{question}"
RETRY_FEEDBACK = "The answer is incorrect. Please try again. Here's the question: {question}"
SUCCESS_FEEDBACK = "Great job! You've successfully answered the question."


@dataclass(frozen=True)
class Step:
    """The environment's answer to one attempt."""

    reward: float
    feedback: str
    done: bool


@dataclass(frozen=True)
class AnswerEnv:
    """One RISE environment: a task of the registry that has a RISE rule (:class:`~selfplay.envs.tasks.RiseRule`)."""

    task: Task
    # Which of the task's RISE rules checks attempts (``rise.rewards``): "selfplay" (Task.rise) or a name of
    # Task.rise_variants ("anchor": cmu-mind/RISE's own checker).
    rules: str = "selfplay"

    @property
    def name(self) -> str:
        return self.task.name

    def extract(self, answer: str) -> str | None:
        """An attempt's final answer, normalized for comparison; None when it has none."""
        return self._rule.extract(answer)

    def parse_gold(self, gold: str) -> str | None:
        """The gold answer of a reference, normalized; None when unparsable (a broken record)."""
        return self._rule.parse_gold(gold)

    @property
    def _rule(self) -> RiseRule:
        assert self.task.rise is not None, f"task '{self.task.name}' has no RISE rule"
        return self.task.rise if self.rules == "selfplay" else self.task.rise_variants[self.rules]

    def question(self, record: dict[str, Any]) -> str:
        return record["messages"][-1]["content"]

    def gold(self, record: dict[str, Any]) -> str:
        return self.task.gold(record)

    def reset(self, record: dict[str, Any]) -> Messages:
        """The conversation the first attempt answers: the one-shot example, then the question."""
        problem, solution = self._rule.one_shot
        return [{"role": "user", "content": problem}, {"role": "assistant", "content": solution},
                {"role": "user", "content": FIRST_OBSERVATION.format(question=self.question(record))}]

    def reward(self, answer: str, gold: str) -> float:
        """1 correct, 0 another answer, the rule's ``unparsable`` (-1; the anchor's MATH: 0) without one."""
        if self.extract(answer) is None:
            return self._rule.unparsable
        return 1.0 if self._rule.correct(answer, gold) else 0.0

    def step(self, record: dict[str, Any], answer: str) -> Step:
        reward = self.reward(answer, self.gold(record))
        if reward == 1.0:
            return Step(reward, SUCCESS_FEEDBACK, True)
        return Step(reward, RETRY_FEEDBACK.format(question=self.question(record)), False)

    def retry(self, record: dict[str, Any]) -> str:
        """The feedback of sequential evaluation, whatever the answer (no oracle)."""
        return RETRY_FEEDBACK.format(question=self.question(record))


# The environments: every task with a RISE rule.
ENVS: dict[str, AnswerEnv] = {name: AnswerEnv(task) for name, task in TASKS.items() if task.rise is not None}
# The names rise.rewards takes: ours, and the variants some environment has.
RULES = ("selfplay", *sorted({v for env in ENVS.values() for v in env.task.rise_variants}))


def get_env(name: str, rules: str = "selfplay") -> AnswerEnv:
    """The environment ``name`` checking attempts by its ``rules`` (``rise.rewards``)."""
    if name not in ENVS:
        raise UserError(f"unknown environment '{name}'.{suggest(name, ENVS)} Available: {', '.join(ENVS)}.")
    env = ENVS[name]
    if rules != "selfplay" and rules not in env.task.rise_variants:
        choices = ["selfplay", *env.task.rise_variants]
        raise UserError(f"rise.rewards '{rules}' is not a rule of the {name} environment; choose one of "
                        f"{', '.join(choices)}.{suggest(rules, choices)}")
    return AnswerEnv(env.task, rules)


def env_for_records(name: str, records: list[dict[str, Any]], rules: str = "selfplay") -> AnswerEnv:
    """``name``, or with ``auto`` the one task the records share (meta.task), checking by ``rules``."""
    if name != "auto":
        return get_env(name, rules)
    task = records_task(records)
    if task is None or task.name not in ENVS:
        tasks = {r.get("meta", {}).get("task") for r in records}
        raise UserError(f"rise.env is auto, but the data's tasks are {sorted(map(str, tasks))}: set rise.env to "
                        f"one of {', '.join(ENVS)}.")
    return get_env(task.name, rules)


def is_degenerate(text: str, max_repeats: int = 150) -> bool:
    """The anchor's filter (``detect_duplicates``): some word repeated more than ``max_repeats`` times (case
    folded), or a "word" longer than 300 characters — a sample stuck in a loop."""
    counts: dict[str, int] = {}
    for word in text.lower().split():
        if len(word) > 300:
            return True
        counts[word] = counts.get(word, 0) + 1
        if counts[word] > max_repeats:
            return True
    return False
