"""The task registry: one :class:`Task` per task, the one place that knows what a task is.

A task says how to read the gold answer of a canonical record, how to score an answer (reward and info),
how to extract the final answer majority voting compares, its RISE one-shot example and answer rule
(where RISE runs on it), the tools its agent uses and where its test questions come from. Everything
that needs a task reads this registry — ``eval task``, the RISE environments
(:mod:`selfplay.envs.answer_envs`), agent episodes (:mod:`selfplay.envs.agent_episodes`), the
``verifier:NAME`` judges and the loop's per-iteration evaluation — so no code elsewhere branches on a
task's name. Adding a task is one entry here (docs/adding-a-task.md).

Entries: ``arith`` (the embedded arithmetic task), ``gsm8k``, ``math`` (the rules of cmu-mind/RISE and of
the usual GSM8K/MATH graders), ``hotpotqa``, ``bamboogle``, ``strategyqa`` and ``mmlu`` (ReinholdM/SPIN's
agent tasks: exact match after HotpotQA's normalisation, yes/no, the answer letter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selfplay.data.answers import extract_gsm8k_answer, last_boxed
from selfplay.envs import verifiers as V
from selfplay.envs.math_equivalence import anchor_boxed, is_equiv
from selfplay.envs.react import is_react_trajectory
from selfplay.errors import UserError, suggest

Record = dict[str, Any]
# A task's default test questions: a data source and split that `eval task` reads as it reads --data
# (hub ids need the network), or a function of the number of questions wanted that makes them.
DefaultData = tuple[str, str] | Callable[[int | None], list[Record]]
Verifier = Callable[[str, str], float]


def whole_completion(text: str) -> str:
    """A completion as the answer: the math tasks score all of it."""
    return text


def gold_answer(record: Record) -> str:
    """A record's gold answer: ``meta.answer`` (the short answer readers store, e.g. HotpotQA's entity),
    else its reference — for a ReAct trajectory the answer of its ``finish[...]`` ("" when it has none)."""
    answer = (record.get("meta") or {}).get("answer")
    if isinstance(answer, str) and answer.strip():
        return answer
    reference = record.get("reference") or ""
    if is_react_trajectory(reference):
        return V.extract_finish_answer(reference) or ""
    return reference


@dataclass(frozen=True)
class RiseRule:
    """How RISE's environment checks an attempt (cmu-mind/RISE ``environments/``): reward 1 when
    ``correct``, ``unparsable`` (-1) when ``extract`` finds no answer, else 0; the attempt after a one-shot
    solved example."""

    one_shot: tuple[str, str]  # (the example problem with the instructions, its solution)
    extract: Callable[[str], str | None]  # an attempt's final answer, normalized; None = unparsable
    correct: Callable[[str, str], bool]  # (attempt, gold) -> right
    parse_gold: Callable[[str], str | None]  # a gold answer's normalized form; None = a broken record
    unparsable: float = -1.0  # the reward of an attempt without an answer


@dataclass(frozen=True)
class Task:
    """One task. ``score(answer, gold) -> (reward, info)`` scores an answer: a ``finish[...]`` argument, or
    ``answer_of(completion)`` for a whole completion (:meth:`verify`). ``info`` carries the agents' fields
    (``em``, ``f1`` where there is one, the normalized ``pred`` and ``gt``)."""

    name: str
    summary: str
    score: V.Score
    # The normalized final answer of a completion that majority voting compares (None: no answer).
    extract: Callable[[str], str | None]
    # The part of a whole completion that ``score`` reads: all of it (math tasks), or an agent's finish[...].
    answer_of: Callable[[str], str] = whole_completion
    # Keys of ``score``'s info that ``eval task`` averages and reports beside accuracy.
    reports: tuple[str, ...] = ()
    rise: RiseRule | None = None
    # Other RISE rules by name (``rise.rewards``), e.g. "anchor": the anchor's own checker where ours differs.
    rise_variants: dict[str, RiseRule] = field(default_factory=dict)
    # The tools an agent on this task gets when ``agent.tools`` is empty (selfplay.envs.tools.TOOLS).
    tools: tuple[str, ...] = ("finish",)
    default_data: DefaultData | None = None
    gold: Callable[[Record], str] = gold_answer
    # How finish's observation prints a reward: "True"/"False" (the anchor's HotpotQA em is a bool), "1"/"0"
    # for the tasks whose anchor scores with integers (StrategyQA, MMLU: generation.py:142 prints it).
    reward_text: Callable[[float], str] = lambda reward: str(bool(reward))

    def verify(self, completion: str, gold: str) -> float:
        """The verifier of this task: a whole completion's reward against ``gold`` (``verifier:NAME``)."""
        return self.score(self.answer_of(completion), gold)[0]


# The anchor's one-shot example (cmu-mind/RISE utils/template.py), used for GSM8K and MATH.
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
# The anchor's template wraps the instruction in newlines (its triple-quoted MATH_INSTRUCTION); the "anchor"
# rules keep them, so their prompts are the anchor's byte for byte.
ANCHOR_ONE_SHOT = (f"\n{MATH_INSTRUCTION}\n", MATH_EXAMPLE_ANSWER)

# A short example for the embedded task: its problems are one to three steps, and a long example would
# cost a small CPU model most of its time in prefill.
ARITH_INSTRUCTION = (
    "Solve the problem step by step, then give the final answer as \\boxed{answer}.\n\n"
    "Mia has 4 shells. She finds 3 more shells. How many shells does Mia have now?"
)
ARITH_EXAMPLE_ANSWER = "Mia starts with 4 shells and finds 3 more: 4 + 3 = 7. The answer is \\boxed{7}."

# The arithmetic task's test questions are generated; a seed away from `synth:arith`'s default keeps them
# apart from training data.
ARITH_EVAL_SEED = 12345
ARITH_EVAL_NUM = 200


def _arith_questions(limit: int | None) -> list[Record]:
    from selfplay.data.synth_arith import make_problems

    return make_problems(limit or ARITH_EVAL_NUM, ARITH_EVAL_SEED)


def _qa_answer_key(text: str) -> str | None:
    """The normalized answer of an agent's completion (its finish[...], else the whole text)."""
    answer = V.extract_finish_answer(text)
    return V.normalize_answer(answer if answer is not None else text) or None


def _anchor_math_gold(gold: str) -> str | None:
    """The anchor reads the gold with its own box regex from the solution's last box (one nesting level)."""
    return anchor_boxed(f"\\boxed{{{gold}}}")


# cmu-mind/RISE's own checkers (rise.rewards: anchor). GSM8K: int() of the last boxed{} (gsm8k.py:47-96; the
# gold is read as ours reads it: "#### 43,500" is 43500 where the anchor's regex reads 43). MATH: its string
# normalisation, and no box is 0, not -1 (math.py:50-66: is_equiv(None, gold) is False).
_ANCHOR_GSM8K = RiseRule(ANCHOR_ONE_SHOT, V.anchor_gsm8k_answer,
                         lambda answer, gold: V.numbers_equal(V.anchor_gsm8k_answer(answer), extract_gsm8k_answer(gold)),
                         extract_gsm8k_answer)
_ANCHOR_MATH = RiseRule(ANCHOR_ONE_SHOT, anchor_boxed,
                        lambda answer, gold: is_equiv(anchor_boxed(answer), _anchor_math_gold(gold)),
                        _anchor_math_gold, unparsable=0.0)

_MATH_TOOLS = ("calculator", "finish")
_QA_TOOLS = ("search", "finish")
_QA = {"score": V.qa_score, "extract": _qa_answer_key, "answer_of": V.predicted_answer, "reports": ("f1",),
       "tools": _QA_TOOLS}

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("arith", "the embedded arithmetic word problems (synth:arith): the final number",
         V.check_score(V.check_arith, extract_gsm8k_answer), extract_gsm8k_answer,
         rise=RiseRule((ARITH_INSTRUCTION, ARITH_EXAMPLE_ANSWER), V.arith_answer,
                       lambda answer, gold: V.numbers_equal(V.arith_answer(answer), extract_gsm8k_answer(gold)),
                       extract_gsm8k_answer),
         tools=_MATH_TOOLS, default_data=_arith_questions),
    Task("gsm8k", "GSM8K: the final number against '#### n'",
         V.check_score(V.check_gsm8k, extract_gsm8k_answer), extract_gsm8k_answer,
         rise=RiseRule((MATH_INSTRUCTION, MATH_EXAMPLE_ANSWER), V.boxed_number,
                       lambda answer, gold: V.numbers_equal(V.boxed_number(answer), extract_gsm8k_answer(gold)),
                       extract_gsm8k_answer),
         rise_variants={"anchor": _ANCHOR_GSM8K}, tools=_MATH_TOOLS, default_data=("openai/gsm8k:main", "test")),
    Task("math", "MATH: math-verify equivalence of the boxed answer",
         V.check_score(V.check_math, last_boxed), V.math_vote_key,
         rise=RiseRule((MATH_INSTRUCTION, MATH_EXAMPLE_ANSWER), V.math_answer,
                       lambda answer, gold: last_boxed(answer) is not None and V.check_math(answer, gold),
                       V.math_gold),
         rise_variants={"anchor": _ANCHOR_MATH}, tools=_MATH_TOOLS, default_data=("HuggingFaceH4/MATH-500", "test")),
    Task("hotpotqa", "HotpotQA: normalized exact match (F1 recorded)", **_QA,
         default_data=("hotpotqa/hotpot_qa:distractor", "validation")),
    Task("bamboogle", "Bamboogle: normalized exact match (F1 recorded)", **_QA),
    Task("strategyqa", "StrategyQA: the answer starts with yes or no (the anchor's rule)", V.yes_no_score,
         _qa_answer_key, V.yes_no_answer, tools=_QA_TOOLS, reward_text=lambda reward: str(int(reward))),
    Task("mmlu", "MMLU: the answer starts with the gold letter (the anchor's rule)", V.letter_score, _qa_answer_key,
         V.letter_answer, tools=_QA_TOOLS, reward_text=lambda reward: str(int(reward))),
)}


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name is a UserError suggesting the nearest."""
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'.{suggest(name, TASKS)} Available: {', '.join(TASKS)}.")
    return TASKS[name]


def records_task(records: list[Record]) -> Task | None:
    """The one registered task the records share (their ``meta.task``); None when mixed or unknown."""
    names = {(r.get("meta") or {}).get("task") for r in records}
    return TASKS.get(names.pop() or "") if len(names) == 1 else None


def verifier_names() -> list[str]:
    """What ``verifier:NAME`` accepts: every task, and the task-free em and f1."""
    return [*TASKS, *V.ANSWER_VERIFIERS]


def find_verifier(name: str) -> Verifier | None:
    """The verifier called ``name`` — a task's (:meth:`Task.verify`) or em/f1 — else None."""
    if name in TASKS:
        return TASKS[name].verify
    return V.ANSWER_VERIFIERS.get(name)


def get_verifier(name: str) -> Verifier:
    """:func:`find_verifier`, with an unknown name a UserError."""
    verifier = find_verifier(name)
    if verifier is None:
        raise UserError(f"unknown verifier '{name}'; choose one of {', '.join(verifier_names())}."
                        f"{suggest(name, verifier_names())}")
    return verifier
