"""The embedded task: multi-step arithmetic word problems with GSM8K-style step-by-step solutions.

Each problem is a short templated story about one person's collection of items; every step adds,
subtracts or multiplies with integers and no intermediate count is negative. Solutions list one
line per step and end with ``#### <answer>``, so :func:`selfplay.envs.verifiers.check_arith`
(the GSM8K checker) scores them. Generation is deterministic for a given seed and settings.

With ``react=True`` (the ``synth:arith-calc`` source) the same problems come with the trajectory a scripted
solver writes for a tool-using agent instead: one ``Thought: / Action: calculator[expression] /
Observation: value`` step per operation, then ``Action: finish[answer]`` — the real trajectories SPIN for
agents plays against (the agent's ``calculator`` tool computes the observations the same way).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from selfplay.errors import UserError

NAMES = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farah", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena",
         "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "shells", "pencils", "cookies", "stamps",
         "cards", "beads", "toy cars"]
CONTAINERS = ["boxes", "bags", "packs", "jars"]

# (story sentence, solution line); {cur} is the count before the step, {new} after it.
ADD = [("{name} buys {n} more {items}.", "{name} buys {n} more: {cur} + {n} = {new}."),
       ("A friend gives {name} {n} {items}.", "A friend gives {n}: {cur} + {n} = {new}."),
       ("{name} finds {n} more {items}.", "{name} finds {n} more: {cur} + {n} = {new}.")]
SUBTRACT = [("{name} gives away {n} {items}.", "{name} gives away {n}: {cur} - {n} = {new}."),
            ("{name} loses {n} {items}.", "{name} loses {n}: {cur} - {n} = {new}."),
            ("{name} sells {n} of the {items}.", "{name} sells {n}: {cur} - {n} = {new}.")]
MULTIPLY = [("Then the number of {items} {name} has becomes {k} times as large.",
             "{k} times as many: {cur} * {k} = {new}."),
            ("{name} ends up with {k} times as many {items} as before.",
             "{k} times as many: {cur} * {k} = {new}.")]
GROUPS = [("{name} buys {g} {container} with {k} {items} in each.",
           "{g} {container} of {k} is {g} * {k} = {gk}, so {cur} + {gk} = {new}.")]
START = [("{name} has {a} {items}.", "{name} starts with {a} {items}."),
         ("{name} starts the day with {a} {items}.", "{name} starts with {a} {items}."),
         ("{name} collects {a} {items}.", "{name} starts with {a} {items}.")]
# Consecutive duplicate draws after which the settings are taken to allow no more distinct problems.
_MAX_MISSES = 2000
QUESTIONS = ["How many {items} does {name} have now?", "How many {items} does {name} have at the end?"]


# What the scripted solver thinks before each operation's calculator call ({cur}: the count so far).
THOUGHTS = {"add": "{name} gets {n} more, so I add {n} to {cur}.",
            "subtract": "{name} has {n} fewer, so I subtract {n} from {cur}.",
            "multiply": "{name} ends up with {k} times as many, so I multiply {cur} by {k}.",
            "groups": "{g} {container} of {k} is {g} * {k} more, so I add that to {cur}."}
EXPRESSIONS = {"add": "{cur} + {n}", "subtract": "{cur} - {n}", "multiply": "{cur} * {k}",
               "groups": "{cur} + {g} * {k}"}
FINISHED = "Episode finished, reward = True"


@dataclass
class _Story:
    sentences: list[str]
    solution: list[str]
    count: int
    calls: list[tuple[str, str, int]] = field(default_factory=list)  # (thought, calculator expression, value)


def _step(rng: random.Random, story: _Story, words: dict[str, str], max_value: int) -> None:
    """Append one operation to ``story``, keeping the count a non-negative integer."""
    cur = story.count
    small = min(5, max_value)  # multipliers and group counts; max_value >= 2 keeps this >= 2
    ops = ["add", "groups"]
    if cur >= 1:
        ops.append("subtract")
    if 1 <= cur <= max_value:  # bound products so numbers stay readable
        ops.append("multiply")
    op = rng.choice(ops)
    if op == "add":
        n = rng.randint(1, max_value)
        new, (story_t, solution_t), values = cur + n, rng.choice(ADD), {"n": n}
    elif op == "subtract":
        n = rng.randint(1, min(cur, max_value))
        new, (story_t, solution_t), values = cur - n, rng.choice(SUBTRACT), {"n": n}
    elif op == "multiply":
        k = rng.randint(2, small)
        new, (story_t, solution_t), values = cur * k, rng.choice(MULTIPLY), {"k": k}
    else:
        g, k = rng.randint(2, small), rng.randint(2, min(10, max_value))
        new, (story_t, solution_t) = cur + g * k, rng.choice(GROUPS)
        values = {"g": g, "k": k, "gk": g * k, "container": rng.choice(CONTAINERS)}
    fill = {**words, **values, "cur": cur, "new": new}
    story.sentences.append(story_t.format(**fill))
    story.solution.append(solution_t.format(**fill))
    story.calls.append((THOUGHTS[op].format(**fill), EXPRESSIONS[op].format(**fill), new))
    story.count = new


def _trajectory(story: _Story, words: dict[str, str]) -> str:
    """The scripted solver's ReAct trajectory: a calculator call per operation, then finish[answer]."""
    steps = [f"Thought: {thought}\nAction: calculator[{expression}]\nObservation: {value}\n"
             for thought, expression, value in story.calls]
    final = f"Thought: {words['name']} has {story.count} {words['items']} now.\nAction: finish[{story.count}]\n"
    return "".join(steps) + final + f"Observation: {FINISHED}\n"


def _make_one(rng: random.Random, min_steps: int, max_steps: int, max_value: int,
              react: bool = False) -> tuple[str, str, int, int]:
    """(question, solution, answer, steps) for one problem; the solution is a ReAct trajectory with ``react``."""
    words = {"name": rng.choice(NAMES), "items": rng.choice(ITEMS)}
    start = rng.randint(1, max_value)
    story_t, solution_t = rng.choice(START)
    story = _Story([story_t.format(a=start, **words)], [solution_t.format(a=start, **words)], start)
    steps = rng.randint(min_steps, max_steps)
    for _ in range(steps):
        _step(rng, story, words, max_value)
    question = " ".join([*story.sentences, rng.choice(QUESTIONS).format(**words)])
    solution = _trajectory(story, words) if react else "\n".join([*story.solution, f"#### {story.count}"])
    return question, solution, story.count, steps


def make_problems(num: int, seed: int, min_steps: int = 2, max_steps: int = 3,
                  max_value: int = 50, react: bool = False) -> list[dict[str, Any]]:
    """``num`` distinct arithmetic word problems as canonical SFT records (deterministic by ``seed``).

    ``min_steps``..``max_steps`` operations follow the starting count; every number written in the
    story is at most ``max_value`` (products may exceed it). Records carry
    ``meta = {"task": "arith", "answer": "<n>", "steps": s}``. ``react``: the reference is the scripted
    solver's ReAct trajectory (calculator calls, then finish) instead of the written solution; the problems
    are the same ones.
    """
    if num < 1:
        raise UserError(f"the number of problems must be at least 1, got {num}")
    if not 1 <= min_steps <= max_steps:
        raise UserError(f"need 1 <= min_steps <= max_steps, got min_steps={min_steps}, max_steps={max_steps}")
    if max_value < 2:
        raise UserError(f"max_value must be at least 2, got {max_value}")
    rng = random.Random(seed)
    seen: set[str] = set()
    records: list[dict[str, Any]] = []
    misses = 0
    # Distinct questions keep a held-out split honest; give up once the settings stop yielding new ones.
    while len(records) < num:
        question, solution, answer, steps = _make_one(rng, min_steps, max_steps, max_value, react)
        if question in seen:
            misses += 1
            if misses > _MAX_MISSES:
                raise UserError(f"could only make {len(records)} distinct problems with these settings; "
                                "raise max_value or max_steps, or ask for fewer")
            continue
        misses = 0
        seen.add(question)
        records.append({"id": f"arith-{seed}-{len(records)}",
                        "messages": [{"role": "user", "content": question}],
                        "reference": solution,
                        "meta": {"task": "arith", "answer": str(answer), "steps": steps}})
    return records
