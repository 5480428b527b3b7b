"""Win rate: the length-controlled logistic fit on synthetic data, and the CLI with a scripted HTTP judge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from selfplay.evals.winrate_stats import fit_logistic, length_feature, summarize_preferences
from selfplay.io import read_jsonl, write_jsonl


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_logistic_fit_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(0)
    n, intercept, slope = 20000, 0.4, 1.5
    diff = rng.normal(0, 300, n)
    x = length_feature(diff)
    y = (rng.random(n) < 1 / (1 + np.exp(-(intercept + slope * x)))).astype(float)
    fit = fit_logistic(x, y)
    assert abs(fit.intercept - intercept) < 0.06 and abs(fit.slope - slope) < 0.1
    assert abs(fit.win_rate_at_equal_length - sigmoid(intercept)) < 0.015


def test_logistic_fit_soft_targets_match_the_closed_form() -> None:
    # One binary feature: the MLE reproduces each group's mean preference exactly (ties as 1/2).
    x = np.array([0.0] * 4 + [1.0] * 4)
    y = np.array([1, 0, 0.5, 0.5, 1, 1, 1, 0.5])
    fit = fit_logistic(x, y, l2=0.0)
    assert fit.win_rate_at_equal_length == pytest.approx(0.5, abs=1e-9)
    assert sigmoid(fit.intercept + fit.slope) == pytest.approx(0.875, abs=1e-9)


def test_length_control_removes_a_pure_length_preference() -> None:
    # The judge prefers the longer answer 80% of the time, whoever wrote it; the model is longer on 70% of
    # prompts. Raw win rate 0.7*0.8 + 0.3*0.2 = 62%; at equal length the model is no better: 50%.
    len_model = [600] * 70 + [400] * 30
    prefs = [1.0] * 56 + [0.0] * 14 + [1.0] * 6 + [0.0] * 24
    stats = summarize_preferences(prefs, len_model, [500] * 100, bootstrap=200)
    assert stats["win_rate"] == pytest.approx(62.0)
    assert stats["win_rate_se"] == pytest.approx(100 * math.sqrt(0.62 * 0.38 / 99), rel=1e-6)  # ddof=1 sem
    assert stats["lc_win_rate"] == pytest.approx(50.0, abs=0.1) and stats["length_slope"] > 0
    assert 0 < stats["lc_win_rate_se"] < 15 and "bootstrap" in stats["se_method"]
    assert (stats["wins"], stats["losses"], stats["ties"]) == (62, 38, 0)


def prefer_longer(number: int, messages: list[dict]) -> tuple[int, str]:
    """A judge that prefers the longer answer; malformed for the prompt that mentions 'unjudgeable'."""
    text = messages[-1]["content"]
    if "unjudgeable" in text:
        return 200, "no verdict here"
    a = text.split("[The Start of Assistant A's Answer]\n")[1].split("\n[The End of Assistant A's Answer]")[0]
    b = text.split("[The Start of Assistant B's Answer]\n")[1].split("\n[The End of Assistant B's Answer]")[0]
    return 200, "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"


def test_winrate_cli_with_answer_files(cli, tmp_path: Path, judge_server) -> None:
    server = judge_server(prefer_longer)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"instruction": f"question {i}"} for i in range(9)]
                                  + [{"instruction": "an unjudgeable question"}]))
    model = tmp_path / "model.json"  # AlpacaEval outputs, matched by instruction
    model.write_text(json.dumps([{"instruction": f"question {i}", "output": "x" * (50 if i < 6 else 10)}
                                 for i in range(9)] + [{"instruction": "an unjudgeable question", "output": "y"}]))
    baseline = tmp_path / "baseline.jsonl"  # our own format, matched by id
    write_jsonl(baseline, [{"id": str(i), "output": "z" * (30 if i != 8 else 10)} for i in range(10)])
    out = tmp_path / "wr"
    result = cli(["eval", "winrate", "--model", model, "--baseline", baseline, "--prompts", prompts,
                  "--judge", server.url, "--out", out, "--bootstrap", "50"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "winrate.json").read_text())
    # 6 longer (win), 2 shorter (loss), 1 equal length (tie), 1 unparsable (error, excluded)
    assert (summary["wins"], summary["losses"], summary["ties"], summary["errors"]) == (6, 2, 1, 1)
    assert summary["win_rate"] == pytest.approx(100 * 6.5 / 9)
    assert len(server.requests) == 20  # both orders of every prompt
    rows = read_jsonl(out / "judgments.jsonl")
    assert {r["outcome"] for r in rows} == {"model", "baseline", "tie", "error"}
    assert "length-controlled" in result.output

    again = cli(["eval", "winrate", "--model", model, "--baseline", baseline, "--prompts", prompts,
                 "--judge", server.url, "--out", out, "--bootstrap", "50"])
    assert again.exit_code == 0 and len(server.requests) == 20  # judgments reused

    changed = json.loads(model.read_text())
    changed[0]["output"] = "a different answer"
    model.write_text(json.dumps(changed))
    third = cli(["eval", "winrate", "--model", model, "--baseline", baseline, "--prompts", prompts,
                 "--judge", server.url, "--out", out, "--bootstrap", "50"])
    assert third.exit_code == 0 and len(server.requests) == 22  # only the changed answer is judged again


def test_winrate_cli_generates_with_a_model(cli, tiny_model: Path, tmp_path: Path, judge_server) -> None:
    server = judge_server(prefer_longer)
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": f"p{i}", "messages": [{"role": "user", "content": f"Say {i}."}],
                           "reference": "ok"} for i in range(3)])
    baseline = tmp_path / "base.jsonl"
    write_jsonl(baseline, [{"id": f"p{i}", "output": ""} for i in range(3)])
    out = tmp_path / "gen"
    result = cli(["eval", "winrate", "--model", tiny_model, "--baseline", baseline, "--prompts", prompts,
                  "--judge", server.url, "--max-new-tokens", "6", "--out", out, "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    generated = read_jsonl(out / "answers_model.jsonl")
    assert [g["id"] for g in generated] == ["p0", "p1", "p2"] and all("output" in g for g in generated)
    summary = json.loads((out / "winrate.json").read_text())
    assert summary["prompts"] == 3 and summary["errors"] == 0


def test_model_labels_tell_loop_iterations_apart(tmp_path: Path) -> None:
    from selfplay.evals.generation import model_identity, model_label

    for k in (0, 1):
        (tmp_path / f"iter_{k}" / "model").mkdir(parents=True)
    assert model_label(str(tmp_path / "iter_1" / "model")) == "iter_1-model"
    assert model_label("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert model_identity(str(tmp_path / "iter_0" / "model")) != model_identity(str(tmp_path / "iter_1" / "model"))


def test_winrate_needs_a_judge_and_matching_answers(cli, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"id": "a", "instruction": "hi"}])
    answers = tmp_path / "m.jsonl"
    write_jsonl(answers, [{"id": "other", "output": "x"}])
    no_judge = cli(["eval", "winrate", "--model", answers, "--baseline", answers, "--prompts", prompts,
                    "--out", tmp_path / "o"])
    assert no_judge.exit_code == 2 and "judge" in no_judge.output
    unmatched = cli(["eval", "winrate", "--model", answers, "--baseline", answers, "--prompts", prompts,
                     "--judge", "http://127.0.0.1:9/v1", "--out", tmp_path / "o"])
    assert unmatched.exit_code == 2 and "no answers for prompts ['a']" in unmatched.output
