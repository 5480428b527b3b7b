"""MT-Bench (Zheng et al. 2023, arXiv 2306.05685), following FastChat's ``llm_judge`` protocol.

1. Answers: two turns per question, turn 2 seeing turn 1, with the model's chat template and
   FastChat's per-category temperatures (0 = greedy).
2. Judgments: single-answer grading on 1-10 (reference-guided for math/reasoning/coding), or pairwise
   against a baseline's answers in both orders (a verdict that flips with the order is a tie).
3. Scores per category and turn; unparsable judgments are counted as errors, never scored.

Everything is appended to JSONL files in the output directory as it is produced, so a rerun continues
where a killed one stopped: answers by question, judgments by (question, turn) and judge.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfplay.errors import DataError, UserError
from selfplay.evals.generation import fingerprint
from selfplay.evals.judging import ChatJudge, combine_orders, judge_conversation, parse_rating, parse_verdict
from selfplay.evals.mt_bench_data import (Question, fill_pairwise, fill_single, judge_prompt_name,
                                          load_answer_file)
from selfplay.evals.mt_bench_prompts import JudgePrompt
from selfplay.io import JsonlAppender, iter_jsonl
from selfplay.progress import progress_bar

if TYPE_CHECKING:
    from selfplay.config import ModelConfig, RemoteConfig

ANSWERS_FILE = "answers.jsonl"
JUDGMENTS_FILE = {"single": "judgments_single.jsonl", "pairwise": "judgments_pairwise.jsonl"}
SUMMARY_FILE = "summary.json"


def _existing(path: Path) -> list[dict[str, Any]]:
    """Rows already written by an earlier (possibly killed) run."""
    return list(iter_jsonl(path, tolerate_torn_tail=True)) if path.is_file() else []


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + max(1, size)]


def generate_answers(questions: list[Question], sampler: Any, path: Path, model_id: str, *,
                     max_new_tokens: int = 1024, batch_size: int = 16, seed: int = 0) -> dict[str, list[str]]:
    """Answer every question's turns (resumable per question); returns answers by ``str(question_id)``.

    Rows are FastChat answer records, so ``path`` can serve as ``--baseline-answers`` of another run.
    ``model_id`` identifies the model: answers of another model in ``path`` are an error, not reused.
    """
    from selfplay.evals.generation import generate_chat

    done: dict[str, list[str]] = {}
    for row in _existing(path):
        if row.get("model_id") != model_id:
            raise UserError(f"{path} holds answers of model '{row.get('model_id')}', not '{model_id}'; "
                            "pass another --out directory.")
        done[str(row["question_id"])] = row["choices"][0]["turns"]
    todo = [q for q in questions if str(q.question_id) not in done]
    by_temperature: dict[float, list[Question]] = defaultdict(list)
    for q in todo:
        by_temperature[q.temperature].append(q)
    with progress_bar("MT-Bench answers", total=len(questions), completed=len(questions) - len(todo)) as bar, \
            JsonlAppender(path) as out:
        for temperature, group in by_temperature.items():
            for chunk in _chunks(group, batch_size):
                conversations = [[{"role": "user", "content": q.turns[0]}] for q in chunk]
                turn_1 = generate_chat(sampler, conversations, temperature=temperature,
                                       max_new_tokens=max_new_tokens, seed=seed, progress=False)
                two_turn = [i for i, q in enumerate(chunk) if len(q.turns) > 1]
                follow_ups = [conversations[i] + [{"role": "assistant", "content": turn_1[i]},
                                                  {"role": "user", "content": chunk[i].turns[1]}] for i in two_turn]
                turn_2 = dict(zip(two_turn, generate_chat(sampler, follow_ups, temperature=temperature,
                                                          max_new_tokens=max_new_tokens, seed=seed, progress=False)))
                for i, q in enumerate(chunk):
                    turns = [turn_1[i]] + ([turn_2[i]] if i in turn_2 else [])
                    done[str(q.question_id)] = turns
                    out.write({"question_id": q.question_id, "answer_id": f"{model_id}:{q.question_id}",
                               "model_id": model_id, "category": q.category,
                               "choices": [{"index": 0, "turns": turns}], "tstamp": time.time(),
                               "generation": {"temperature": temperature, "max_new_tokens": max_new_tokens}})
                    bar.advance()
    return done


def answers_for(questions: list[Question], answers: dict[str, list[str]], source: str | Path) -> None:
    """Check that ``answers`` (from ``source``) cover every turn of every question."""
    missing = [q.question_id for q in questions if len(answers.get(str(q.question_id), [])) < len(q.turns)]
    if missing:
        raise DataError(f"no answers (for every turn) to questions {missing}", path=source)


def _judge_items(questions: list[Question], done: set[tuple[str, int]]) -> list[tuple[Question, int]]:
    return [(q, turn) for q in questions for turn in range(1, len(q.turns) + 1)
            if (str(q.question_id), turn) not in done]


def _run_judgments(questions: list[Question], path: Path, judge: ChatJudge, description: str, *, batch_size: int,
                   answer_texts: Callable[[Question], list[str]],
                   make_rows: Callable[[list[tuple[Question, int]]], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Judge every (question, turn) that ``path`` holds no judgment for, by this judge of these answers.

    ``answer_texts(q)``: every answer text the judgments of ``q`` depend on (fingerprinted for resuming).
    Returns one row per (question, turn), in question order.
    """
    prints = {str(q.question_id): fingerprint(*answer_texts(q)) for q in questions}
    rows = {(str(r["question_id"]), int(r["turn"])): r for r in _existing(path)
            if r.get("judge") == judge.name and r.get("answers_fingerprint") == prints.get(str(r["question_id"]))}
    todo = _judge_items(questions, set(rows))
    total = sum(len(q.turns) for q in questions)
    with progress_bar(description, total=total, completed=total - len(todo)) as bar, \
            JsonlAppender(path, lazy=True) as out:
        for chunk in _chunks(todo, batch_size):
            for row in make_rows(chunk):
                row["answers_fingerprint"] = prints[str(row["question_id"])]
                out.write(row)
                rows[(str(row["question_id"]), int(row["turn"]))] = row
                bar.advance()
    return [rows[(str(q.question_id), turn)] for q in questions for turn in range(1, len(q.turns) + 1)]


def judge_single(questions: list[Question], answers: dict[str, list[str]], judge: ChatJudge,
                 prompts: dict[str, JudgePrompt], path: Path, *, max_tokens: int = 2048,
                 batch_size: int = 8) -> list[dict[str, Any]]:
    """Grade each turn 1-10 (resumable); rows hold the judgment text and ``score`` (None = unparsable)."""

    def make_rows(chunk: list[tuple[Question, int]]) -> list[dict[str, Any]]:
        names = [judge_prompt_name("single", q, turn) for q, turn in chunk]
        conversations = [judge_conversation(prompts[name].system_prompt,
                                            fill_single(prompts[name], q, answers[str(q.question_id)], turn))
                         for name, (q, turn) in zip(names, chunk)]
        replies = judge.complete(conversations, max_tokens=max_tokens,
                                 labels=[f"question {q.question_id} turn {turn}" for q, turn in chunk])
        rows = []
        for name, (q, turn), reply in zip(names, chunk, replies):
            score = parse_rating(reply)
            rows.append({"question_id": q.question_id, "turn": turn, "category": q.category, "judge": judge.name,
                         "judge_prompt": name, "judgment": reply, "score": score, "error": score is None})
        return rows

    return _run_judgments(questions, path, judge, "MT-Bench judging", batch_size=batch_size,
                          answer_texts=lambda q: answers[str(q.question_id)], make_rows=make_rows)


def judge_pairwise(questions: list[Question], answers: dict[str, list[str]], baseline: dict[str, list[str]],
                   judge: ChatJudge, prompts: dict[str, JudgePrompt], path: Path, *, max_tokens: int = 2048,
                   batch_size: int = 8) -> list[dict[str, Any]]:
    """Compare each turn with the baseline's, in both orders (resumable); ``outcome`` is
    model/baseline/tie/error (see :func:`selfplay.evals.judging.combine_orders`)."""

    def make_rows(chunk: list[tuple[Question, int]]) -> list[dict[str, Any]]:
        conversations, names, labels = [], [], []
        for q, turn in chunk:
            name = judge_prompt_name("pairwise", q, turn)
            mine, theirs = answers[str(q.question_id)], baseline[str(q.question_id)]
            names.append(name)
            for a, b, first in ((mine, theirs, "model"), (theirs, mine, "baseline")):
                conversations.append(judge_conversation(prompts[name].system_prompt,
                                                        fill_pairwise(prompts[name], q, a, b, turn)))
                labels.append(f"question {q.question_id} turn {turn} ({first} as A)")
        replies = judge.complete(conversations, max_tokens=max_tokens, labels=labels)
        rows = []
        for i, (name, (q, turn)) in enumerate(zip(names, chunk)):
            first, second = replies[2 * i], replies[2 * i + 1]
            verdicts = parse_verdict(first), parse_verdict(second)
            rows.append({"question_id": q.question_id, "turn": turn, "category": q.category, "judge": judge.name,
                         "judge_prompt": name, "g1_judgment": first, "g2_judgment": second,
                         "g1_verdict": verdicts[0], "g2_verdict": verdicts[1],
                         "outcome": combine_orders(*verdicts)})
        return rows

    return _run_judgments(questions, path, judge, "MT-Bench pairwise judging", batch_size=batch_size,
                          answer_texts=lambda q: answers[str(q.question_id)] + baseline[str(q.question_id)],
                          make_rows=make_rows)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_single(rows: list[dict[str, Any]], categories: list[str]) -> dict[str, Any]:
    """Mean score per category for turn 1, turn 2 and overall (errors excluded and counted)."""

    def block(selected: list[dict[str, Any]]) -> dict[str, Any]:
        scored = [r for r in selected if r["score"] is not None]
        return {"turn_1": _mean([r["score"] for r in scored if r["turn"] == 1]),
                "turn_2": _mean([r["score"] for r in scored if r["turn"] == 2]),
                "overall": _mean([r["score"] for r in scored]),
                "judged": len(scored), "errors": len(selected) - len(scored)}

    per_category = {c: block([r for r in rows if r["category"] == c]) for c in categories}
    return {"mode": "single", "categories": per_category, "all": block(rows)}


def summarize_pairwise(rows: list[dict[str, Any]], categories: list[str]) -> dict[str, Any]:
    """Win rate against the baseline (ties count half) per category and turn, with win/loss/tie counts."""

    def rate(selected: list[dict[str, Any]]) -> float | None:
        valid = [r["outcome"] for r in selected if r["outcome"] != "error"]
        if not valid:
            return None
        return 100 * (valid.count("model") + 0.5 * valid.count("tie")) / len(valid)

    def block(selected: list[dict[str, Any]]) -> dict[str, Any]:
        outcomes = [r["outcome"] for r in selected]
        return {"turn_1": rate([r for r in selected if r["turn"] == 1]),
                "turn_2": rate([r for r in selected if r["turn"] == 2]),
                "overall": rate(selected), "wins": outcomes.count("model"),
                "losses": outcomes.count("baseline"), "ties": outcomes.count("tie"),
                "errors": outcomes.count("error")}

    per_category = {c: block([r for r in rows if r["category"] == c]) for c in categories}
    return {"mode": "pairwise", "categories": per_category, "all": block(rows)}


def load_baseline(questions: list[Question], path: str | Path) -> dict[str, list[str]]:
    """The baseline's FastChat answer file, checked to cover every question and turn."""
    baseline = load_answer_file(path)
    answers_for(questions, baseline, path)
    return baseline


def run_mt_bench(model: str, out_dir: str | Path, *, questions: str, judge: str | None = None,
                 judge_model: str = "default", judge_api_key_env: str = "OPENAI_API_KEY",
                 judge_prompts: str | Path | None = None,
                 reference_answers: str | Path | None = None, mode: str = "single",
                 baseline_answers: str | Path | None = None, limit: int | None = None,
                 max_new_tokens: int = 1024, judge_max_tokens: int = 2048, batch_size: int = 16,
                 judge_batch_size: int = 8, model_cfg: ModelConfig | None = None, seed: int = 0,
                 remote: RemoteConfig | None = None) -> dict[str, Any]:
    """Generate answers with ``model`` (or read a FastChat answer file) and, given a judge, score them.

    Writes ``answers.jsonl``, ``judgments_<mode>.jsonl``, ``summary.json`` and ``radar.png`` in
    ``out_dir`` and prints the per-category table. Returns the summary (or only the answers' path when
    no judge is given).
    """
    from selfplay.core.samplers import make_sampler
    from selfplay.evals.generation import is_answer_file, model_identity, model_label
    from selfplay.evals.judging import make_chat_judge
    from selfplay.evals.mt_bench_data import attach_references, load_judge_prompts, load_questions
    from selfplay.evals.report import print_mt_bench_table, radar_plot
    from selfplay.io import write_json

    if mode not in JUDGMENTS_FILE:
        raise UserError(f"--mode must be 'single' or 'pairwise', got '{mode}'")
    if mode == "pairwise" and baseline_answers is None:
        raise UserError("--mode pairwise needs --baseline-answers FILE (a FastChat answer file of the baseline).")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    qs = load_questions(questions, limit=limit)
    prompts = load_judge_prompts(judge_prompts)
    if judge is not None:
        attach_references(qs, reference_answers)
    baseline = load_baseline(qs, baseline_answers) if mode == "pairwise" and baseline_answers else None
    if is_answer_file(model):
        answers = load_answer_file(model)
        answers_for(qs, answers, model)
        answers_path = Path(model)
    else:
        sampler = make_sampler("hf", model, batch_size=batch_size, model_cfg=model_cfg)
        answers_path = out / ANSWERS_FILE
        answers = generate_answers(qs, sampler, answers_path, model_identity(model),
                                   max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
        del sampler  # free the model before a local judge is loaded
    if judge is None:
        return {"answers": str(answers_path), "questions": len(qs)}
    the_judge = make_chat_judge(judge, judge_model=judge_model, api_key_env=judge_api_key_env,
                                batch_size=judge_batch_size, remote=remote)
    path = out / JUDGMENTS_FILE[mode]
    kw = {"max_tokens": judge_max_tokens, "batch_size": judge_batch_size}
    if baseline is not None:
        rows = judge_pairwise(qs, answers, baseline, the_judge, prompts, path, **kw)
    else:
        rows = judge_single(qs, answers, the_judge, prompts, path, **kw)
    categories = list(dict.fromkeys(q.category for q in qs))
    summary = (summarize_pairwise if mode == "pairwise" else summarize_single)(rows, categories)
    summary.update({"model": model_label(model), "judge": the_judge.name, "questions": len(qs),
                    "baseline": str(baseline_answers) if baseline_answers else None,
                    "answers": str(answers_path), "judgments": str(path)})
    plot = radar_plot({c: v["overall"] for c, v in summary["categories"].items()}, out / "radar.png",
                      title=f"MT-Bench: {summary['model']}",
                      max_value=100.0 if mode == "pairwise" else 10.0)
    summary["plot"] = str(plot) if plot else None
    write_json(out / SUMMARY_FILE, summary)
    print_mt_bench_table(summary)
    return summary
