"""The embedded arithmetic task: determinism, well-formed solutions, settings and the CLI."""

from __future__ import annotations

import re

import pytest

from selfplay.data import synth_arith
from selfplay.data.synth_arith import make_problems
from selfplay.data.answers import extract_gsm8k_answer
from selfplay.envs.verifiers import check_arith
from selfplay.errors import UserError
from selfplay.io import read_json, read_jsonl


def test_cli_is_deterministic_by_seed(cli, tmp_path):
    def run(name: str, seed: int) -> bytes:
        args = ["data", "synth", "arith", "--num", "40", "--seed", seed, "--out", tmp_path / name, "--test-size", "8"]
        assert cli(args).exit_code == 0
        return (tmp_path / name / "train.jsonl").read_bytes() + (tmp_path / name / "test.jsonl").read_bytes()

    first = run("a", 7)
    assert first == run("b", 7)
    assert first != run("c", 8)
    assert (tmp_path / "a/metadata.json").read_bytes() == (tmp_path / "b/metadata.json").read_bytes()
    meta = read_json(tmp_path / "a/metadata.json")
    assert meta["format"] == "arith" and meta["counts"] == {"train": 32, "test": 8}


def test_verifier_accepts_every_reference():
    problems = make_problems(500, seed=0, min_steps=1, max_steps=5, max_value=30)
    for p in problems:
        assert check_arith(p["reference"], p["reference"])
        assert check_arith(f"The answer is {p['meta']['answer']}.", p["reference"])
        assert extract_gsm8k_answer(p["reference"]) == p["meta"]["answer"]
        assert not check_arith(f"#### {int(p['meta']['answer']) + 1}", p["reference"])


def test_solutions_are_correct_step_by_step():
    for p in make_problems(300, seed=1, min_steps=2, max_steps=4, max_value=50):
        lines = p["reference"].splitlines()
        assert lines[-1] == f"#### {p['meta']['answer']}"
        assert len(lines) == p["meta"]["steps"] + 2  # start line + one per step + the answer
        assert 2 <= p["meta"]["steps"] <= 4
        for a, op, b, result in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", p["reference"]):
            assert eval(f"{a} {op} {b}") == int(result) >= 0  # noqa: S307 (digits and one operator)
        numbers_in_story = [int(n) for n in re.findall(r"\d+", p["messages"][0]["content"])]
        assert max(numbers_in_story) <= 50 and p["meta"]["task"] == "arith"
        assert int(p["meta"]["answer"]) >= 0


def test_problems_are_distinct_and_settings_checked(monkeypatch):
    problems = make_problems(200, seed=2)
    assert len({p["messages"][0]["content"] for p in problems}) == 200
    assert len({p["id"] for p in problems}) == 200
    with pytest.raises(UserError, match="min_steps"):
        make_problems(5, seed=0, min_steps=3, max_steps=2)
    with pytest.raises(UserError, match="max_value"):
        make_problems(5, seed=0, max_value=1)
    # One name and one item leave only a few hundred distinct one-step stories.
    monkeypatch.setattr(synth_arith, "NAMES", ["Ava"])
    monkeypatch.setattr(synth_arith, "ITEMS", ["apples"])
    with pytest.raises(UserError, match="could only make"):
        make_problems(5000, seed=0, min_steps=1, max_steps=1, max_value=2)


def test_cli_rejects_bad_settings(cli, tmp_path):
    result = cli(["data", "synth", "arith", "--num", "5", "--min-steps", "4", "--max-steps", "2", "--out", tmp_path / "o"])
    assert result.exit_code == 2 and "min_steps" in result.stderr
    assert not (tmp_path / "o").exists()
    assert cli(["data", "synth", "arith", "--num", "5", "--out", tmp_path / "p"]).exit_code == 0
    assert [r["id"] for r in read_jsonl(tmp_path / "p/train.jsonl")] == [f"arith-0-{i}" for i in range(5)]


def test_calculator_trajectories_solve_the_same_problems(tmp_path):
    """synth:arith-calc: the same problems as synth:arith, each with the scripted solver's ReAct trajectory —
    every calculator call's observation is what the agent's calculator tool returns, and finish[...] scores 1."""
    from selfplay.data.records import prepare_source, load_sft
    from selfplay.envs.calculator import evaluate, format_number
    from selfplay.envs.react import parse_action, parse_trajectory
    from selfplay.envs.tasks import get_task, gold_answer

    plain = make_problems(30, 3, min_steps=1, max_steps=3, max_value=20)
    react = make_problems(30, 3, min_steps=1, max_steps=3, max_value=20, react=True)
    task = get_task("arith")
    for p, r in zip(plain, react, strict=True):
        assert (p["id"], p["messages"], p["meta"]) == (r["id"], r["messages"], r["meta"])
        steps = parse_trajectory(r["reference"])
        assert len(steps) == r["meta"]["steps"] + 1  # a calculator call per operation, then finish
        for step in steps[:-1]:
            tool, expression = parse_action(step.action)
            assert tool == "calculator" and step.observation == format_number(evaluate(expression))
        tool, answer = parse_action(steps[-1].action)
        assert tool == "finish" and answer == r["meta"]["answer"] == gold_answer(r)
        assert task.score(answer, gold_answer(r))[0] == 1.0
    out = prepare_source("synth:arith-calc?num=12&seed=3&max_steps=2", tmp_path / "calc", test_size=4)
    assert len(load_sft(out, "train")) == 8 and "Action: calculator[" in load_sft(out, "test")[0]["reference"]
