"""Answer checkers: GSM8K/arith numbers, MATH via math-verify, HotpotQA EM/F1, the verifier table."""

from __future__ import annotations

import threading

import pytest

from selfplay.data.answers import extract_gsm8k_answer, last_boxed
from selfplay.envs.tasks import find_verifier, get_verifier, verifier_names
from selfplay.envs.verifiers import (check_gsm8k, check_math, exact_match, extract_finish_answer, f1_score,
                                     normalize_answer)
from selfplay.errors import UserError
from selfplay.io import read_jsonl


@pytest.mark.parametrize(("text", "expected"), [
    ("so 4*3 = 12\n#### 12", "12"),
    ("#### 1,234", "1234"),
    ("#### $18.", "18"),
    ("#### 12.50", "12.5"),
    ("#### -3", "-3"),
    ("The total is $1,000,000. Then 7 - 2 = 5 apples.", "5"),
    ("He pays 5-3 dollars", "3"),
    ("It costs 3.00 dollars.", "3"),
    ("no digits at all", None),
    ("#### twelve, but earlier 9", "9"),
])
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_check_gsm8k_numeric_equality():
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert check_gsm8k("So the answer is 72.", solution)
    assert check_gsm8k("#### 72.0", "72")
    assert check_gsm8k("... so $72", solution)
    assert not check_gsm8k("#### 71", solution)
    assert not check_gsm8k("I don't know", solution)
    assert not check_gsm8k("#### 72", "no number in the reference")


def test_every_gsm8k_reference_checks_against_itself(shared_data):
    rows = read_jsonl(shared_data / "gsm8k/test_200.jsonl")
    assert len(rows) == 200
    assert sum(check_gsm8k(r["answer"], r["answer"]) for r in rows) == 200
    assert sum(check_gsm8k(f"The answer is {r['answer'].split('####')[1].strip()}", r["answer"]) for r in rows) == 200


def test_math_references_check_against_themselves(shared_data):
    rows = read_jsonl(shared_data / "math/test_200.jsonl")
    correct = sum(check_math(r["solution"], r["solution"]) for r in rows)
    assert correct >= 0.95 * len(rows)
    # A different problem's answer must not pass: shift the answers by one.
    wrong = sum(check_math(b["solution"], a["solution"]) for a, b in zip(rows, rows[1:], strict=False)
                if last_boxed(a["solution"]) != last_boxed(b["solution"]))
    assert wrong <= 0.05 * len(rows)


def test_check_math_equivalences_and_failures():
    reference = "Thus the probability is $\\boxed{\\frac{7}{20}}$."
    assert check_math("The answer is $\\boxed{0.35}$", reference)
    assert check_math("$\\boxed{\\dfrac{7}{20}}$", reference)
    assert check_math("so it is $\\frac{7}{20}$", "\\frac{7}{20}")  # bare reference answer
    assert not check_math("$\\boxed{\\frac{7}{21}}$", reference)
    assert not check_math("", reference)
    assert not check_math("\\boxed{\\frac{", reference)  # unparsable: wrong, not an exception


def test_check_math_works_off_the_main_thread():
    results = []
    worker = threading.Thread(target=lambda: results.append(check_math("$\\boxed{4}$", "$\\boxed{2+2}$")))
    worker.start()
    worker.join()
    assert results == [True]


def test_last_boxed_handles_nesting():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{\\sqrt{2}}} c") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("$\\boxed 5$") == "5"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{unclosed") is None


def test_hotpotqa_exact_match_and_f1_on_known_pairs():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    assert f1_score("Eiffel", "Eiffel Tower") == pytest.approx(2 / 3)
    assert f1_score("Cheshire County", "Cheshire County, New Hampshire") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert f1_score("yes", "no") == 0.0
    assert f1_score("yes it is", "yes") == 0.0  # yes/no answers score only on an exact match
    assert f1_score("Paris", "London") == 0.0
    assert f1_score("Melanie Owen", "Melanie Owen") == 1.0


def test_verifier_table_and_agent_answers():
    # every task is a verifier name (verifier:gsm8k), and the task-free em and f1
    assert {"arith", "gsm8k", "math", "hotpotqa", "em", "f1"} <= set(verifier_names())
    trajectory = "Thought: found it.\nAction: search[x]\nObservation: ...\nAction: finish[Las Vegas Sands]"
    assert extract_finish_answer(trajectory) == "Las Vegas Sands"
    assert get_verifier("em")(trajectory, "Las Vegas Sands") == 1.0
    assert get_verifier("f1")(trajectory, "The Las Vegas Sands Corp") == pytest.approx(0.75 * 2 * 1 / 1.75)
    assert get_verifier("em")("Antrim", "antrim") == 1.0
    assert get_verifier("gsm8k")("#### 4", "2+2\n#### 4") == 1.0
    assert get_verifier("arith")("#### 5", "#### 4") == 0.0
    assert get_verifier("math")("$\\boxed{4}$", "\\boxed{4}") == 1.0
    # HotpotQA's verifier is exact match on the trajectory's finish answer; open-ended tasks have none
    for completion, gold in ((trajectory, "Las Vegas Sands"), (trajectory, "Las Vegas"), ("Antrim", "antrim")):
        assert find_verifier("hotpotqa")(completion, gold) == get_verifier("em")(completion, gold)
    assert find_verifier("hotpotqa")(trajectory, "Las Vegas") == 0.0
    assert find_verifier("chat") is None
    with pytest.raises(UserError, match="Did you mean 'gsm8k'"):
        get_verifier("gsm8")
