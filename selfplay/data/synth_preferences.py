"""Built-in preference data for training and checking judges, generated on the spot (deterministic by seed).

* **arith-prefs** — pairs over answers to the embedded arithmetic task (:mod:`selfplay.data.synth_arith`). Per
  problem four answers, all showing the work: correct with a closing sentence "The answer is N." (CS), correct
  without it (CP), wrong in the last step with the sentence (WS) and without (WP). The preference is one total
  order, CS > CP > WS > WP: correctness first (``subset: correctness``), then the closing sentence
  (``subset: style``) — a preference the arith verifier cannot see (it reads the last number either way).
* **cyclic** — intransitive preferences over the answers to one prompt: a cycle r0 > r1 > ... > r(c-1) > r0. A
  scalar (Bradley-Terry) reward orders the answers, so it gets at most c - 1 of a cycle's c pairs right
  (2/3 for c = 3, 3/4 for c = 4); a GPM with 2 dimensions can get them all (arXiv 2410.02197, Sec. 6.1).

Both write pair records ``{id, prompt, chosen, rejected, subset}`` (what ``selfplay train --method gpm`` and
``selfplay eval preference`` read) into ``train.jsonl`` (+ ``test.jsonl`` of held-out problems) and
``metadata.json``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from selfplay.data.synth_arith import make_problems
from selfplay.errors import UserError
from selfplay.io import write_json, write_jsonl

# (answer name, correct?, closing sentence?) in preference order: each beats every later one.
ARITH_ANSWERS = (("CS", True, True), ("CP", True, False), ("WS", False, True), ("WP", False, False))
CHOICES = ["rock", "paper", "scissors", "lizard", "spock", "apple", "river", "candle", "violin", "desert",
           "comet", "garden", "harbor", "lantern", "meadow", "pepper", "saddle", "tunnel", "walnut", "zebra"]


def _answers(solution: str, answer: int, rng: random.Random) -> dict[str, str]:
    """The four answers of one problem; the wrong ones miscompute the last step by a small amount."""
    lines = solution.splitlines()[:-1]  # drop "#### N"
    wrong = answer + rng.choice([d for d in range(-3, 4) if d and answer + d >= 0])
    last = lines[-1]
    cut = last.rfind(f"= {answer}.")
    if cut < 0:  # every solution line of synth_arith ends "= N." (the start line never is the last)
        raise ValueError(f"unexpected solution line {last!r}")
    wrong_lines = [*lines[:-1], f"{last[:cut]}= {wrong}."]
    texts = {}
    for name, correct, closing in ARITH_ANSWERS:
        body, value = (lines, answer) if correct else (wrong_lines, wrong)
        texts[name] = "\n".join(body) + (f"\nThe answer is {value}." if closing else "")
    return texts


def arith_preference_pairs(num: int, seed: int, *, min_steps: int = 1, max_steps: int = 1,
                           max_value: int = 10) -> list[dict[str, Any]]:
    """All 6 pairs of the 4 answers of each of ``num`` distinct problems (ids ``arith-<seed>-<k>:<w>><l>``)."""
    rng = random.Random(seed + 1)  # the problems use `seed`; the wrong answers their own stream
    pairs = []
    for problem in make_problems(num, seed, min_steps, max_steps, max_value):
        texts = _answers(problem["reference"], int(problem["meta"]["answer"]), rng)
        for i, (w, w_correct, _) in enumerate(ARITH_ANSWERS):
            for l, l_correct, _ in ARITH_ANSWERS[i + 1:]:
                pairs.append({"id": f"{problem['id']}:{w}>{l}", "prompt": problem["messages"],
                              "chosen": texts[w], "rejected": texts[l],
                              "subset": "correctness" if w_correct != l_correct else "style"})
    return pairs


def cyclic_preference_pairs(num: int, seed: int, *, cycle: int = 4) -> list[dict[str, Any]]:
    """``num`` prompts, each with ``cycle`` answers preferred in a cycle (``cycle`` pairs per prompt)."""
    if not 3 <= cycle <= len(CHOICES):
        raise UserError(f"a preference cycle needs 3 to {len(CHOICES)} answers, got {cycle}")
    if num < 1:
        raise UserError(f"the number of prompts must be at least 1, got {num}")
    rng = random.Random(seed)
    pairs = []
    for p in range(num):
        options = rng.sample(CHOICES, cycle)  # the cycle's order; the prompt lists them sorted
        prompt = [{"role": "user", "content": f"Pick one: {', '.join(sorted(options))}."}]
        for i in range(cycle):
            w, l = options[i], options[(i + 1) % cycle]
            pairs.append({"id": f"cycle{cycle}-{seed}-{p}:{w}>{l}", "prompt": prompt, "chosen": f"I pick {w}.",
                          "rejected": f"I pick {l}.", "subset": f"cycle-{cycle}"})
    return pairs


def write_pair_splits(out: Path, pairs: list[dict[str, Any]], *, test_groups: int, meta: dict[str, Any],
                      overwrite: bool = False) -> dict[str, int]:
    """``train.jsonl`` (+ ``test.jsonl`` holding every pair of the first ``test_groups`` prompts, so no held-out
    prompt is trained on) and ``metadata.json`` in ``out``; refuses a non-empty ``out`` unless ``overwrite``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty; pass --overwrite to replace it")
    prompts: list[str] = []
    for p in pairs:
        key = p["prompt"][-1]["content"]
        if key not in prompts:
            prompts.append(key)
    if test_groups >= len(prompts):
        raise UserError(f"--test-size {test_groups} leaves no training prompts (there are {len(prompts)})")
    held_out = set(prompts[:test_groups])
    splits = {"train": [p for p in pairs if p["prompt"][-1]["content"] not in held_out]}
    if test_groups:
        splits["test"] = [p for p in pairs if p["prompt"][-1]["content"] in held_out]
    counts = {name: write_jsonl(out / f"{name}.jsonl", rows) for name, rows in splits.items()}
    write_json(out / "metadata.json", {**meta, "counts": counts, "prompts": {"train": len(prompts) - test_groups,
                                                                             "test": test_groups}})
    return counts
