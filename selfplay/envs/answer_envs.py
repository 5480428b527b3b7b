"""RISE's environments: a problem, an answer, a reward, and the feedback that asks for another attempt.

Gym-like (cmu-mind/RISE ``environments/``): :meth:`AnswerEnv.reset` gives the first observation (the
question after a one-shot solved example), :meth:`AnswerEnv.step` scores an answer. Rewards follow the
anchor: 1 for a correct final answer, 0 for another answer, -1 when there is no parsable answer.

* ``gsm8k`` — the answer is the last ``\\boxed{...}`` (commas dropped) compared numerically with the
  reference's ``#### n``; no boxed number is -1 (the anchor's ``extract_answers_from_llm``).
* ``math`` — math-verify equivalence of the last ``\\boxed{}`` with the reference's boxed answer; no boxed
  answer is -1. A reference whose final answer is several adjacent boxes (``\\boxed{5}, \\boxed{11}``) is
  one set-valued answer.
* ``arith`` — our embedded task: a boxed number if there is one, else the last number of the answer
  (SmolLM2-class models rarely box); -1 only when the answer holds no number at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from selfplay.envs.verifiers import boxed_answers, canonical_number, check_math, extract_gsm8k_answer, last_boxed
from selfplay.errors import UserError, suggest

Messages = list[dict[str, str]]

# The anchor's texts (cmu-mind/RISE environments/gsm8k.py, math.py): the first observation after the
# one-shot example, and the feedback after a wrong answer.
FIRST_OBSERVATION = "Great job! You've successfully answered the question. Now, let's move on to the next one.\n{question}"
RETRY_FEEDBACK = "The answer is incorrect. Please try again. Here's the question: {question}"
SUCCESS_FEEDBACK = "Great job! You've successfully answered the question."

# The anchor's one-shot example (utils/template.py), used for GSM8K and MATH.
MATH_INSTRUCTION = (
    "You are an AI language model designed to assist with math problem-solving. In this task, I will provide "
    "you with math problems. Your goal is to solve the problem step-by-step, showing your reasoning at each "
    "step. After you have finished solving the problem, present your final answer as \\boxed{Your Answer}.\n\n"
    "Here is the math word problem for you to solve:\n\nOf the 60 students in the drama club, 36 take "
    "mathematics, 27 take physics and 20 students take both mathematics and physics. How many drama club "
    "students take neither mathematics nor physics?"
)
MATH_EXAMPLE_ANSWER = (
    "Step 1: To find the number of drama club students who take neither mathematics nor physics, we first need "
    "to determine the number of students taking only math, only physics, and both math and physics. Step 2: Out "
    "of the 60 students in the drama club, 36 take mathematics and 27 take physics, and 20 students take both "
    "mathematics and physics. Step 3: To calculate the number of students taking only math, we subtract the "
    "number of students taking both from the total taking math: $36 - 20 = 16$. Step 4: Similarly, to calculate "
    "the number of students taking only physics, we subtract the number of students taking both from the total "
    "taking physics: $27 - 20 = 7$. Step 5: Now, to find the number of students taking neither math nor "
    "physics, we subtract the total number of students taking only math, only physics, and both from the total "
    "number of students in the drama club. This gives us $60 - 16 - 7 - 20 = \\boxed{17}$ students taking "
    "neither. Answer: \\boxed{17}"
)
# A short example for the embedded task: its problems are one to three steps, and a long example would
# cost a small CPU model most of its time in prefill.
ARITH_INSTRUCTION = (
    "Solve the problem step by step, then give the final answer as \\boxed{answer}.\n\n"
    "Mia has 4 shells. She finds 3 more shells. How many shells does Mia have now?"
)
ARITH_EXAMPLE_ANSWER = "Mia starts with 4 shells and finds 3 more: 4 + 3 = 7. The answer is \\boxed{7}."


@dataclass(frozen=True)
class Step:
    """The environment's answer to one attempt."""

    reward: float
    feedback: str
    done: bool


@dataclass(frozen=True)
class AnswerEnv:
    """One RISE environment: how to read the question and the gold answer of a record, and score answers."""

    name: str
    one_shot: tuple[str, str]  # (example problem with instructions, its solution)
    extract: Callable[[str], str | None]  # an answer's final answer, normalized for comparison; None = none
    correct: Callable[[str, str], bool]  # (answer text, gold) -> whether it is right
    parse_gold: Callable[[str], str | None]  # the gold answer of a reference, normalized; None = unparsable

    def question(self, record: dict[str, Any]) -> str:
        return record["messages"][-1]["content"]

    def gold(self, record: dict[str, Any]) -> str:
        answer = record.get("meta", {}).get("answer")
        return answer if isinstance(answer, str) and answer.strip() else record["reference"]

    def reset(self, record: dict[str, Any]) -> Messages:
        """The conversation the first attempt answers: the one-shot example, then the question."""
        problem, solution = self.one_shot
        return [{"role": "user", "content": problem}, {"role": "assistant", "content": solution},
                {"role": "user", "content": FIRST_OBSERVATION.format(question=self.question(record))}]

    def reward(self, answer: str, gold: str) -> float:
        """1 correct, 0 another answer, -1 no parsable answer."""
        if self.extract(answer) is None:
            return -1.0
        return 1.0 if self.correct(answer, gold) else 0.0

    def step(self, record: dict[str, Any], answer: str) -> Step:
        reward = self.reward(answer, self.gold(record))
        if reward == 1.0:
            return Step(reward, SUCCESS_FEEDBACK, True)
        return Step(reward, RETRY_FEEDBACK.format(question=self.question(record)), False)

    def retry(self, record: dict[str, Any]) -> str:
        """The feedback of sequential evaluation, whatever the answer (no oracle)."""
        return RETRY_FEEDBACK.format(question=self.question(record))


_NUMBER_ONLY = re.compile(r"-?\d+(?:\.\d+)?")


def _boxed_number(text: str) -> str | None:
    """The anchor's GSM8K answer: the last ``\\boxed{}`` holding a number (commas dropped), else None."""
    content = last_boxed(text)
    if content is None:
        return None
    cleaned = content.replace(",", "").strip().strip("$").strip()
    return canonical_number(cleaned) if _NUMBER_ONLY.fullmatch(cleaned) else None


def _numbers_equal(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Decimal(a) == Decimal(b)


def _arith_answer(text: str) -> str | None:
    return _boxed_number(text) or extract_gsm8k_answer(text)


def _math_answer(text: str) -> str | None:
    boxes = boxed_answers(text)
    return re.sub(r"\s+", "", ", ".join(boxes)) if boxes else None


def _math_gold(reference: str) -> str | None:
    return _math_answer(reference) or (re.sub(r"\s+", "", reference.strip().strip("$")) or None)


ENVS: dict[str, AnswerEnv] = {
    "gsm8k": AnswerEnv("gsm8k", (MATH_INSTRUCTION, MATH_EXAMPLE_ANSWER), _boxed_number,
                       lambda answer, gold: _numbers_equal(_boxed_number(answer), extract_gsm8k_answer(gold)),
                       extract_gsm8k_answer),
    "math": AnswerEnv("math", (MATH_INSTRUCTION, MATH_EXAMPLE_ANSWER), _math_answer,
                      lambda answer, gold: last_boxed(answer) is not None and check_math(answer, gold), _math_gold),
    "arith": AnswerEnv("arith", (ARITH_INSTRUCTION, ARITH_EXAMPLE_ANSWER), _arith_answer,
                       lambda answer, gold: _numbers_equal(_arith_answer(answer), extract_gsm8k_answer(gold)),
                       extract_gsm8k_answer),
}


def get_env(name: str) -> AnswerEnv:
    if name not in ENVS:
        raise UserError(f"unknown environment '{name}'.{suggest(name, ENVS)} Available: {', '.join(ENVS)}.")
    return ENVS[name]


def env_for_records(name: str, records: list[dict[str, Any]]) -> AnswerEnv:
    """``name``, or with ``auto`` the one task the records share (meta.task)."""
    if name != "auto":
        return get_env(name)
    tasks = {r.get("meta", {}).get("task") for r in records}
    if len(tasks) != 1 or next(iter(tasks)) not in ENVS:
        raise UserError(f"rise.env is auto, but the data's tasks are {sorted(map(str, tasks))}: set rise.env to "
                        f"one of {', '.join(ENVS)}.")
    return ENVS[tasks.pop()]


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
