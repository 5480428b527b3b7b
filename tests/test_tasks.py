"""The task registry: every entry scores a known right and a known wrong answer, reads gold answers from
records one way, and is what verifiers, RISE environments, agents and `eval task` look up."""

from __future__ import annotations

import pytest

from selfplay.envs.answer_envs import ENVS
from selfplay.envs.tasks import TASKS, find_verifier, get_task, gold_answer, records_task
from selfplay.errors import UserError

# (task, completion that is right, completion that is wrong, gold as a record's reference gives it)
CASES = [
    ("arith", "4 + 3 = 7, so #### 7", "4 + 3 = 8, so #### 8", "Mia has 4 + 3 = 7 shells.\n#### 7"),
    ("gsm8k", "She sold 72 clips. #### 72", "#### 71", "48 + 24 = 72\n#### 72"),
    ("math", "so $x = \\boxed{\\frac{1}{2}}$", "$\\boxed{2}$", "Hence \\boxed{\\frac12}."),
    ("hotpotqa", "Thought: done\nAction: finish[The Las Vegas Sands]", "Action: finish[Macau]", "Las Vegas Sands"),
    ("bamboogle", "Action: finish[george washington]", "Action: finish[Lincoln]", "George Washington"),
    ("strategyqa", "Action: finish[Yes, it could]", "Action: finish[no]", "yes"),
    ("mmlu", "Action: finish[B. the ring]", "Action: finish[(B) the ring]", "B"),  # the anchor's startswith
]


def test_registry_holds_the_seven_tasks():
    assert set(TASKS) == {"arith", "gsm8k", "math", "hotpotqa", "bamboogle", "strategyqa", "mmlu"}
    assert set(ENVS) == {"arith", "gsm8k", "math"}  # the tasks with a RISE rule
    with pytest.raises(UserError, match="Did you mean 'gsm8k'"):
        get_task("gsm9k")


@pytest.mark.parametrize(("name", "right", "wrong", "gold"), CASES)
def test_every_task_scores_a_right_and_a_wrong_answer(name, right, wrong, gold):
    if name == "math":
        pytest.importorskip("math_verify")
    task = TASKS[name]
    assert task.verify(right, gold) == 1.0
    assert task.verify(wrong, gold) == 0.0
    assert find_verifier(name)(right, gold) == 1.0  # verifier:NAME is the task's verify
    reward, info = task.score(task.answer_of(right), gold)
    assert reward == 1.0 and info["em"] == 1.0


def test_scores_and_info_as_the_agents_record_them():
    # HotpotQA: exact match after normalisation is the reward, F1 and the normalized answers are recorded
    reward, info = TASKS["hotpotqa"].score("the Las Vegas Sands Corp", "Las Vegas Sands")
    assert reward == 0.0 and info["f1"] == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert info["pred"] == "las vegas sands corp" and info["gt"] == "las vegas sands"
    # StrategyQA and MMLU by the anchor's startswith rules, its info (pred lower-cased, StrategyQA's gt a bool)
    assert TASKS["strategyqa"].score("No, never", "no")[1] == {"em": 1, "f1": 1.0, "pred": "no, never", "gt": False}
    assert TASKS["mmlu"].score("C", "B")[1] == {"em": 0, "f1": 0.0, "pred": "c", "gt": "b"}
    # a whole completion: its finish[...] argument, else its first yes/no word or standalone letter
    assert TASKS["strategyqa"].answer_of("I think the answer is yes.") == "yes"
    assert TASKS["mmlu"].answer_of("The answer is (B) the ring.") == "B"
    # a finish[...] argument is scored as it is; a whole completion through answer_of (its finish[...])
    assert TASKS["hotpotqa"].answer_of("Thought: x\nAction: finish[ Paris ]") == "Paris"
    assert TASKS["hotpotqa"].answer_of("  Paris ") == "Paris"
    assert TASKS["gsm8k"].answer_of("  #### 4 ") == "  #### 4 "


def test_majority_vote_keys():
    assert TASKS["gsm8k"].extract("so 1,234 apples") == "1234"
    assert TASKS["math"].extract("x = \\boxed{ \\frac{1}{2} }") == "\\frac{1}{2}"
    assert TASKS["math"].extract("no box, last number 7") == "7"
    assert TASKS["hotpotqa"].extract("Action: finish[The Eiffel Tower!]") == "eiffel tower"
    assert TASKS["hotpotqa"].extract("...") is None


def test_rise_rules_keep_the_anchors_rewards():
    gsm8k, arith = ENVS["gsm8k"], ENVS["arith"]
    assert gsm8k.reward("the answer is \\boxed{72}", "72") == 1.0
    assert gsm8k.reward("the answer is 72", "72") == -1.0  # RISE's GSM8K wants a boxed number
    assert gsm8k.reward("\\boxed{71}", "72") == 0.0
    assert arith.reward("the answer is 72", "72") == 1.0  # the embedded task takes the last number
    assert arith.reward("no number", "72") == -1.0
    assert ENVS["math"].parse_gold("so \\boxed{5}, \\boxed{11}") == "5,11"


def test_gold_answer_reads_meta_answer_then_the_reference():
    assert gold_answer({"reference": "48 + 24\n#### 72", "meta": {"answer": "72"}}) == "72"
    assert gold_answer({"reference": "48 + 24\n#### 72", "meta": {"answer": "  "}}) == "48 + 24\n#### 72"
    assert gold_answer({"reference": "Paris", "meta": {}}) == "Paris"
    trajectory = "Thought: look\nAction: search[x]\nObservation: y\nThought: ok\nAction: finish[Antrim]\n"
    assert gold_answer({"reference": trajectory}) == "Antrim"  # a ReAct reference: its finish answer
    assert gold_answer({"reference": "Action: search[x]\nObservation: y\n"}) == ""


def test_records_task():
    assert records_task([{"meta": {"task": "gsm8k"}}, {"meta": {"task": "gsm8k"}}]) is TASKS["gsm8k"]
    assert records_task([{"meta": {"task": "gsm8k"}}, {"meta": {"task": "math"}}]) is None
    assert records_task([{"meta": {"task": "chat"}}]) is None
    assert records_task([{"meta": {}}]) is None


def test_default_data():
    arith = TASKS["arith"].default_data
    assert callable(arith) and len(arith(5)) == 5 and arith(5)[0]["meta"]["task"] == "arith"
    assert TASKS["gsm8k"].default_data == ("openai/gsm8k:main", "test")
    assert TASKS["bamboogle"].default_data is None
