"""MT-Bench end to end through the CLI: the tiny model answers, a scripted HTTP judge grades."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from selfplay.evals.mt_bench_data import Question, judge_prompt_name
from selfplay.evals.mt_bench_prompts import JUDGE_PROMPTS
from selfplay.io import read_jsonl, write_jsonl

QUESTION_IDS = [81, 111, 101]  # writing (no reference), math and reasoning (reference-graded)


@pytest.fixture
def questions_file(shared_data: Path, tmp_path: Path) -> Path:
    rows = {r["question_id"]: r for r in read_jsonl(shared_data / "mt_bench" / "question.jsonl")}
    path = tmp_path / "questions.jsonl"
    write_jsonl(path, [rows[q] for q in QUESTION_IDS])
    return path


def test_builtin_judge_prompts_equal_fastchat_file(shared_data: Path) -> None:
    original = {r["name"]: r for r in read_jsonl(shared_data / "mt_bench" / "judge_prompts.jsonl")}
    assert {name: asdict(p) for name, p in JUDGE_PROMPTS.items()} == original


def test_template_choice_follows_fastchat() -> None:
    writing, math = Question(1, "writing", ["a", "b"]), Question(2, "math", ["a", "b"], ["r1", "r2"])
    assert judge_prompt_name("single", writing, 1) == "single-v1"
    assert judge_prompt_name("single", math, 2) == "single-math-v1-multi-turn"
    assert judge_prompt_name("pairwise", writing, 2) == "pair-v2-multi-turn"
    assert judge_prompt_name("pairwise", math, 1) == "pair-math-v1"
    assert math.temperature == 0.0 and writing.temperature == 0.7 and Question(3, "stem", ["x"]).temperature == 0.1


def single_script(number: int, messages: list[dict]) -> tuple[int, str]:
    """A 500 first; turn-1 math is unparsable; other turn-1 grades [[8]]; turn 2 grades with the [5] fallback."""
    text = messages[-1]["content"]
    if number == 0:
        return 500, "overloaded"
    if "### Assistant A:" in text:
        return 200, "Fine follow-up. Rating: [5]"
    if "Reference Answer" in text and "The vertices of a triangle" in text:
        return 200, "I refuse to give a number."
    return 200, "Solid. Rating: [[8]]"


def test_mt_bench_single_end_to_end_and_resume(cli, tiny_model: Path, questions_file: Path, shared_data: Path,
                                               tmp_path: Path, judge_server) -> None:
    server = judge_server(single_script)
    out = tmp_path / "mt"
    args = ["eval", "mt-bench", "--model", tiny_model, "--questions", questions_file, "--judge", server.url,
            "--reference-answers", shared_data / "mt_bench" / "reference_answer" / "gpt-4.jsonl",
            "--max-new-tokens", "8", "--out", out]
    result = cli(args)
    assert result.exit_code == 0, result.output

    answers = read_jsonl(out / "answers.jsonl")
    assert [a["question_id"] for a in answers] == QUESTION_IDS or sorted(a["question_id"] for a in answers) == \
        sorted(QUESTION_IDS)
    assert all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    temps = {a["category"]: a["generation"]["temperature"] for a in answers}
    assert temps == {"writing": 0.7, "math": 0.0, "reasoning": 0.0}

    judgments = read_jsonl(out / "judgments_single.jsonl")
    assert len(judgments) == 6
    by_key = {(j["question_id"], j["turn"]): j for j in judgments}
    assert by_key[(111, 1)]["error"] is True and by_key[(111, 1)]["score"] is None
    assert by_key[(81, 1)]["score"] == 8.0 and by_key[(81, 2)]["score"] == 5.0
    assert by_key[(111, 2)]["judge_prompt"] == "single-math-v1-multi-turn"
    # the math judge saw GPT-4's reference answer, the writing judge none
    math_turn1 = next(r for r in server.judged if "The vertices of a triangle" in r["body"]["messages"][-1]["content"]
                      and "### Assistant A:" not in r["body"]["messages"][-1]["content"])
    assert "[The Start of Reference Answer]" in math_turn1["body"]["messages"][-1]["content"]
    assert server.statuses.count(500) == 1

    summary = json.loads((out / "summary.json").read_text())
    assert summary["all"]["errors"] == 1 and summary["all"]["judged"] == 5
    assert summary["all"]["turn_1"] == 8.0 and summary["all"]["turn_2"] == 5.0
    assert summary["categories"]["math"] == {"turn_1": None, "turn_2": 5.0, "overall": 5.0, "judged": 1, "errors": 1}
    assert summary["categories"]["writing"]["overall"] == 6.5
    assert (out / "radar.png").stat().st_size > 1000
    assert "writing" in result.output and "6.50" in result.output

    # A rerun reuses the answers and judgments: no new judge call, no regenerated answer.
    before = (out / "answers.jsonl").read_text()
    requests = len(server.requests)
    again = cli(args)
    assert again.exit_code == 0, again.output
    assert len(server.requests) == requests and (out / "answers.jsonl").read_text() == before
    assert json.loads((out / "summary.json").read_text())["all"] == summary["all"]

    other = tmp_path / "other" / "model"
    other.parent.mkdir()
    shutil.copytree(tiny_model, other)
    clash = cli(["eval", "mt-bench", "--model", other, "--questions", questions_file, "--out", out])
    assert clash.exit_code == 2 and "holds answers of model" in clash.output


def test_mt_bench_pairwise_counts_flipping_verdicts_as_ties(cli, questions_file: Path, shared_data: Path,
                                                            tmp_path: Path, judge_server) -> None:
    answers = tmp_path / "model_answers.jsonl"
    write_jsonl(answers, [{"question_id": q, "model_id": "m", "choices": [{"index": 0, "turns": ["long " * 9, "x"]}]}
                          for q in QUESTION_IDS])
    baseline = tmp_path / "baseline_answers.jsonl"
    write_jsonl(baseline, [{"question_id": q, "model_id": "b", "choices": [{"index": 0, "turns": ["short", "y"]}]}
                           for q in QUESTION_IDS])

    def script(number: int, messages: list[dict]) -> tuple[int, str]:
        text = messages[-1]["content"]
        if "### Assistant A:" in text:
            return 200, "Position bias: [[A]]"  # turn 2: always the first shown -> tie after both orders
        # turn 1: the longer answer wins, whichever side it is on
        a_part = text.split("[The Start of Assistant A's Answer]")[1].split("[The End of Assistant A's Answer]")[0]
        return 200, "[[A]]" if "long" in a_part else "[[B]]"

    server = judge_server(script)
    out = tmp_path / "pair"
    result = cli(["eval", "mt-bench", "--model", answers, "--questions", questions_file, "--judge", server.url,
                  "--mode", "pairwise", "--baseline-answers", baseline, "--out", out,
                  "--judge-prompts", shared_data / "mt_bench" / "judge_prompts.jsonl"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "pairwise"
    assert summary["all"] == {"turn_1": 100.0, "turn_2": 50.0, "overall": 75.0, "wins": 3, "losses": 0,
                              "ties": 3, "errors": 0}
    assert len(server.requests) == 12  # 3 questions x 2 turns x 2 orders
    assert not (out / "answers.jsonl").exists()  # answers came from the file


def test_mt_bench_local_judge_errors_are_counted(cli, tiny_model: Path, questions_file: Path, tmp_path: Path) -> None:
    answers = tmp_path / "answers.jsonl"
    write_jsonl(answers, [{"question_id": 81, "model_id": "m", "choices": [{"index": 0, "turns": ["a", "b"]}]}])
    out = tmp_path / "local"
    result = cli(["eval", "mt-bench", "--model", answers, "--questions", questions_file, "--limit", "1",
                  "--judge", tiny_model, "--judge-max-tokens", "6", "--out", out])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judge"] == str(tiny_model)
    assert summary["all"]["judged"] + summary["all"]["errors"] == 2
    rows = read_jsonl(out / "judgments_single.jsonl")
    assert all((r["score"] is None) == r["error"] for r in rows)


def test_mt_bench_user_errors(cli, tiny_model: Path, questions_file: Path, shared_data: Path, tmp_path: Path) -> None:
    offline = cli(["eval", "mt-bench", "--model", tiny_model, "--questions", "HuggingFaceH4/mt_bench_prompts",
                   "--out", tmp_path / "o1"])
    assert offline.exit_code == 2 and "could not load 'HuggingFaceH4/mt_bench_prompts'" in offline.output

    rows = {r["question_id"]: r for r in read_jsonl(shared_data / "mt_bench" / "question.jsonl")}
    coding = tmp_path / "coding.jsonl"
    write_jsonl(coding, [rows[123]])  # a coding question whose reference lives only in the reference file
    missing_ref = cli(["eval", "mt-bench", "--model", tiny_model, "--questions", coding,
                       "--judge", "http://127.0.0.1:9/v1", "--out", tmp_path / "o2"])
    assert missing_ref.exit_code == 2 and "--reference-answers" in missing_ref.output

    no_baseline = cli(["eval", "mt-bench", "--model", tiny_model, "--questions", questions_file,
                       "--mode", "pairwise", "--judge", "http://127.0.0.1:9/v1", "--out", tmp_path / "o3"])
    assert no_baseline.exit_code == 2 and "--baseline-answers" in no_baseline.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "category": "writing", "turns": ["a", 2]}\n')
    malformed = cli(["eval", "mt-bench", "--model", tiny_model, "--questions", bad, "--out", tmp_path / "o4"])
    assert malformed.exit_code == 2 and "line 1" in malformed.output and "turns[1]" in malformed.output
