"""Task accuracy: the scoring math on known answers, and the pipeline with the tiny model via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfplay.errors import UserError
from selfplay.evals.task_eval import evaluate_task, load_task_records, majority_vote, score_samples


def record(rid: str, reference: str, answer: str, task: str) -> dict:
    return {"id": rid, "messages": [{"role": "user", "content": "q"}], "reference": reference,
            "meta": {"task": task, "answer": answer}}


def test_gsm8k_scoring_majority_vote_and_pass_at_n() -> None:
    records = [record("a", "6 + 1 = 7\n#### 7", "7", "gsm8k"), record("b", "so #### 1,200", "1200", "gsm8k")]
    samples = [
        ["The answer is 7.", "I think 8", "#### 7.00"],  # 2 of 3 correct; majority 7 (7 and 7.00 vote together)
        ["It is $1,200.", "12", "maybe 13 or 12"],  # 1 of 3; majority 12 (wrong); pass@3 yes
    ]
    m = score_samples(records, samples, "gsm8k")
    assert m["accuracy"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert m["majority_accuracy"] == pytest.approx(0.5)
    assert m["pass@3"] == 1.0 and m["n"] == 3 and m["num_examples"] == 2
    assert [e["voted_answer"] for e in m["examples"]] == ["7", "12"]
    # Intervals over the 2 problems: majority and pass@n are 0/1 per problem (Wilson), the accuracy of
    # 3 samples per problem is not (bootstrap over problems).
    assert {k: v["method"] for k, v in m["stats"].items()} == {
        "accuracy": "bootstrap", "majority_accuracy": "wilson", "pass@3": "wilson"}
    assert m["stats"]["majority_accuracy"]["n"] == 2 and m["stats"]["pass@3"]["lo"] == pytest.approx(2 / (2 + 1.959964**2), abs=1e-6)


def test_math_scoring_uses_math_verify() -> None:
    records = [record("m", "so the answer is $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}", "math")]
    m = score_samples(records, [["Thus $\\boxed{0.5}$.", "We get \\boxed{1/3}", "\\boxed{\\dfrac{1}{2}}"]], "math")
    assert m["examples"][0]["correct"] == [1.0, 0.0, 1.0]
    assert m["pass@3"] == 1.0


def test_hotpotqa_scoring_normalized_em_and_f1() -> None:
    records = [record("h", "The Eiffel Tower", "the Eiffel Tower", "hotpotqa"),
               record("y", "yes", "yes", "hotpotqa")]
    m = score_samples(records, [["Eiffel tower."], ["Thought: done.\nAction: finish[no]"]], "hotpotqa")
    assert m["accuracy"] == 0.5 and m["f1"] == 0.5
    partial = score_samples(records[:1], [["the tower"]], "hotpotqa")
    assert partial["accuracy"] == 0.0 and partial["f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_majority_vote_ties_and_no_answers() -> None:
    key = {"a": "1", "b": "2", "c": None}.get
    assert majority_vote(["b", "a", "a", "b"], key) == 0  # tie: the answer seen first
    assert majority_vote(["c", "a"], key) == 1  # no answer does not vote
    assert majority_vote(["c", "c"], key) == 0


def test_task_cli_with_tiny_model_on_gsm8k(cli, tiny_model: Path, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "gsm"
    result = cli(["eval", "task", "--model", tiny_model, "--data", shared_data / "gsm8k" / "test_200.jsonl",
                  "--limit", "3", "--max-new-tokens", "6", "--out", out])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "task_eval.json").read_text())
    assert metrics["task"] == "gsm8k" and metrics["num_examples"] == 3 and 0.0 <= metrics["accuracy"] <= 1.0
    samples = [json.loads(line) for line in (out / "task_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(len(s["samples"]) == 1 for s in samples)
    assert "accuracy" in result.output and "n = 3 examples" in result.output and "95% interval" in result.output
    assert metrics["stats"]["accuracy"]["method"] == "wilson" and metrics["stats"]["accuracy"]["n"] == 3


def test_evaluate_task_api_samples_n_for_arith(tiny_model: Path) -> None:
    from selfplay.core.samplers import make_sampler

    task, records = load_task_records("arith", None, limit=2)
    assert task == "arith" and len(records) == 2
    m = evaluate_task(make_sampler("hf", str(tiny_model)), records, "arith", n=3, temperature=1.0, max_new_tokens=4,
                      progress=False)
    assert m["n"] == 3 and set(m) >= {"accuracy", "majority_accuracy", "pass@3", "examples"}
    assert all(len(e["samples"]) == 3 for e in m["examples"])
    with pytest.raises(UserError, match="temperature"):
        evaluate_task(tiny_model, records, "arith", n=2, temperature=0.0)


def test_task_cli_user_errors(cli, tiny_model: Path, shared_data: Path, tmp_path: Path) -> None:
    wrong = cli(["eval", "task", "--model", tiny_model, "--task", "math", "--data",
                 shared_data / "gsm8k" / "test_200.jsonl", "--out", tmp_path / "o"])
    assert wrong.exit_code == 2 and "not 'math'" in wrong.output
    unknown = cli(["eval", "task", "--model", tiny_model, "--task", "gsm9k", "--out", tmp_path / "o"])
    assert unknown.exit_code == 2 and "gsm8k" in unknown.output
    offline = cli(["eval", "task", "--model", tiny_model, "--task", "math", "--out", tmp_path / "o"])
    assert offline.exit_code == 2 and "could not load" in offline.output
