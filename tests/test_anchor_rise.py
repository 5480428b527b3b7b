"""RISE against its anchor's code (cmu-mind/RISE), on ports of the anchor's own functions: the sequential
evaluation's context window (``workflow_eval.py``), the conversion into ``finetune.json``
(``workflow_convert.py``) and its weights reaching training, and a RISE log in the anchor's format built
from real GSM8K rows."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from selfplay.envs.answer_envs import ENVS, FIRST_OBSERVATION, RETRY_FEEDBACK
from selfplay.io import read_jsonl


# --------------------------------------------------------------------------- workflow_eval.py: the context window


def anchor_eval_dialogue(one_shot: list[dict], init_observation: str, best_observations: list[str],
                         best_actions: list[str], turn: int, context_window: int) -> list[dict]:
    """workflow_eval.py:84-87 (the slicing) and :63-70 (construct_policy_dialogue), roles as ours."""
    if turn < context_window:
        observations, actions = [init_observation] + best_observations, best_actions
    else:
        observations = [init_observation] + best_observations[-context_window + 1:]
        actions = best_actions[-context_window + 1:]
    dialogue = copy.deepcopy(one_shot)
    for i in range(len(actions)):
        dialogue.append({"role": "user", "content": observations[i]})
        dialogue.append({"role": "assistant", "content": actions[i]})
    dialogue.append({"role": "user", "content": observations[-1]})
    return dialogue


def window_prompts(context_window: int, turns: int = 6) -> list[tuple[list[dict], list[dict]]]:
    """(ours, the anchor's) prompt of every turn of a sequential episode answering a0, a1, ..."""
    from selfplay.evals.multiturn import sequential_prompt

    env = ENVS["gsm8k"]
    rec = {"id": "q", "messages": [{"role": "user", "content": "Q?"}], "reference": "#### 1", "meta": {}}
    one_shot = env.reset(rec)[:2]
    answers = [f"a{i}" for i in range(turns)]
    out = []
    for t in range(turns):
        ours = sequential_prompt(env, rec, answers[:t], context_window)
        anchor = anchor_eval_dialogue(one_shot, FIRST_OBSERVATION.format(question="Q?"),
                                      [RETRY_FEEDBACK.format(question="Q?")] * t, answers[:t], t, context_window)
        out.append((ours, anchor))
    return out


def attempts(prompt: list[dict]) -> list[str]:
    return [m["content"] for m in prompt[3:] if m["role"] == "assistant"]


@pytest.mark.parametrize("window", [2, 3, 4, 5])
def test_sequential_prompt_is_the_anchors_for_windows_2_to_5(window: int) -> None:
    for t, (ours, anchor) in enumerate(window_prompts(window)):
        assert ours == anchor, (window, t)
        assert attempts(ours) == [f"a{i}" for i in range(max(0, t - (window - 1)), t)]


def test_window_4_keeps_both_earlier_attempts_at_turn_3() -> None:
    """The bug of issue 22: window 4 at the third turn kept [a1] (a negative slice start), not [a0, a1]."""
    ours, anchor = window_prompts(4)[2]
    assert attempts(ours) == attempts(anchor) == ["a0", "a1"]


def test_window_1_shows_no_earlier_attempt_where_the_anchor_shows_all() -> None:
    """A deliberate difference: the anchor's history[-1 + 1:] is history[0:] (all of it)."""
    for t, (ours, anchor) in enumerate(window_prompts(1)):
        assert attempts(ours) == []
        assert attempts(anchor) == [f"a{i}" for i in range(t)]
