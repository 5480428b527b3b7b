"""RISE's multi-turn evaluation (cmu-mind/RISE ``workflow_eval.py``), sequential and parallel.

* **Sequential**: T turns, one sample each. Whatever the answer, the feedback is the same "The answer is
  incorrect. Please try again." (no oracle leaks into the prompt) and the episode never stops early; the
  prompt keeps only the most recent k turns (``context_window``: the question plus the last k−1 attempts)
  so long episodes do not drift from what the model was trained on. Reported per turn t:
  ``acc`` (turn t's answer is correct), ``oracle`` (some answer of turns 1..t is correct: an oracle would
  have stopped there) and ``majority`` (the most frequent final answer of turns 1..t is correct, without
  an oracle; ties go to the answer seen first).
* **Parallel**: n independent samples of turn 1, the same budget spent without feedback: ``pass@n``
  (any correct) and ``maj@n`` (majority vote).

Everything is computed from per-problem results, which are saved, so the numbers can be recomputed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfplay.envs.answer_envs import AnswerEnv

Messages = list[dict[str, str]]
# A turn model: (conversations, n, seed, ids) -> n answers per conversation (see selfplay.stages.rollout).
Respond = Callable[[list[Messages], int, int, list[str]], list[list[str]]]


def sequential_prompt(env: AnswerEnv, record: dict[str, Any], answers: list[str], context_window: int) -> Messages:
    """The conversation turn ``len(answers) + 1`` answers: the question, then the last k−1 attempts, each
    followed by the oracle-free retry feedback."""
    kept = answers[len(answers) - (context_window - 1):] if context_window > 1 else []
    messages = env.reset(record)
    for answer in kept:
        messages = messages + [{"role": "assistant", "content": answer}, {"role": "user", "content": env.retry(record)}]
    return messages


def run_sequential(env: AnswerEnv, respond: Respond, records: list[dict[str, Any]], turns: int,
                   context_window: int, seed: int) -> list[dict[str, Any]]:
    """T answers per problem, all problems stepping together: ``{id, answers, rewards}`` per problem."""
    answers: list[list[str]] = [[] for _ in records]
    ids = [r["id"] for r in records]
    for _ in range(turns):
        prompts = [sequential_prompt(env, r, a, context_window) for r, a in zip(records, answers)]
        for history, (text,) in zip(answers, respond(prompts, 1, seed, ids)):
            history.append(text)
    return [{"id": r["id"], "answers": a, "rewards": [env.reward(x, env.gold(r)) for x in a]}
            for r, a in zip(records, answers)]


def run_parallel(env: AnswerEnv, respond: Respond, records: list[dict[str, Any]], n: int,
                 seed: int) -> list[dict[str, Any]]:
    """n independent first-turn answers per problem."""
    drawn = respond([env.reset(r) for r in records], n, seed, [r["id"] for r in records])
    return [{"id": r["id"], "answers": a, "rewards": [env.reward(x, env.gold(r)) for x in a]}
            for r, a in zip(records, drawn)]


def majority_correct(env: AnswerEnv, answers: list[str], gold: str) -> bool:
    """Whether the most frequent extracted final answer among ``answers`` is correct (ties: first seen)."""
    extracted = [(env.extract(a), a) for a in answers]
    votes = Counter(e for e, _ in extracted if e is not None)
    if not votes:
        return False
    winner = votes.most_common(1)[0][0]  # Counter keeps first-seen order among equal counts
    text = next(a for e, a in extracted if e == winner)
    return env.reward(text, gold) == 1.0


def sequential_metrics(env: AnswerEnv, records: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict:
    """Per turn t = 1..T: ``acc``, ``oracle``, ``majority`` over the problems (lists of length T)."""
    turns = len(results[0]["answers"]) if results else 0
    n = max(1, len(results))
    acc, oracle, majority = [], [], []
    for t in range(1, turns + 1):
        acc.append(sum(r["rewards"][t - 1] == 1.0 for r in results) / n)
        oracle.append(sum(any(x == 1.0 for x in r["rewards"][:t]) for r in results) / n)
        majority.append(sum(majority_correct(env, r["answers"][:t], env.gold(rec))
                            for r, rec in zip(results, records)) / n)
    return {"acc": acc, "oracle": oracle, "majority": majority}


def parallel_metrics(env: AnswerEnv, records: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict:
    """pass@n and maj@n over the problems."""
    n = max(1, len(results))
    return {"pass": sum(any(x == 1.0 for x in r["rewards"]) for r in results) / n,
            "majority": sum(majority_correct(env, r["answers"], env.gold(rec)) for r, rec in zip(results, records)) / n,
            "samples": len(results[0]["answers"]) if results else 0}


def evaluate_multiturn(env: AnswerEnv, respond: Respond, records: list[dict[str, Any]], *, turns: int,
                       context_window: int, parallel: int, seed: int, out_dir: Path | None = None) -> dict[str, Any]:
    """Both evaluations; per-problem results go to ``out_dir/multiturn.jsonl`` and the per-turn plot to
    ``out_dir/multiturn.png`` when ``out_dir`` is given."""
    from selfplay.io import write_json, write_jsonl

    sequential = run_sequential(env, respond, records, turns, context_window, seed)
    metrics: dict[str, Any] = {"env": env.name, "problems": len(records), "turns": turns,
                               "context_window": context_window,
                               "sequential": sequential_metrics(env, records, sequential)}
    rows = [{"id": s["id"], "sequential": s} for s in sequential]
    if parallel > 0:
        par = run_parallel(env, respond, records, parallel, seed + 1)
        metrics["parallel"] = parallel_metrics(env, records, par)
        for row, p in zip(rows, par):
            row["parallel"] = p
    if out_dir is not None:
        write_jsonl(Path(out_dir) / "multiturn.jsonl", rows)
        write_json(Path(out_dir) / "multiturn.json", metrics)
        plot_multiturn(metrics, Path(out_dir) / "multiturn.png")
    return metrics


def table_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The iteration-table columns of a RISE run (see ``selfplay.methods.rise``)."""
    seq = metrics["sequential"]
    row = {"mt_acc_t1": seq["acc"][0], "mt_acc_tlast": seq["acc"][-1], "mt_oracle": seq["oracle"][-1],
           "mt_majority": seq["majority"][-1], "mt_problems": metrics["problems"]}
    if "parallel" in metrics:
        row.update(mt_pass_parallel=metrics["parallel"]["pass"], mt_maj_parallel=metrics["parallel"]["majority"])
    return row


def print_multiturn(metrics: dict[str, Any], title: str = "multi-turn evaluation") -> None:
    """The per-turn table: turn, accuracy, with oracle, majority (and the parallel line)."""
    from rich.table import Table

    from selfplay.progress import console

    seq = metrics["sequential"]
    table = Table(title=f"{title} ({metrics['env']}, {metrics['problems']} problems, context window "
                        f"{metrics['context_window']})")
    for name in ("turn", "accuracy", "with oracle", "majority (no oracle)"):
        table.add_column(name, justify="right")
    for t, (a, o, m) in enumerate(zip(seq["acc"], seq["oracle"], seq["majority"]), start=1):
        table.add_row(str(t), f"{a:.3f}", f"{o:.3f}", f"{m:.3f}")
    console.print(table)
    if "parallel" in metrics:
        p = metrics["parallel"]
        console.print(f"parallel, {p['samples']} samples of turn 1: pass@{p['samples']} {p['pass']:.3f}, "
                      f"maj@{p['samples']} {p['majority']:.3f}")


def plot_multiturn(metrics: dict[str, Any], path: Path) -> Path:
    """Accuracy, with-oracle and majority accuracy per turn (parallel pass@n / maj@n as dashed lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from selfplay.io import save_figure

    seq = metrics["sequential"]
    xs = list(range(1, len(seq["acc"]) + 1))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("acc", "accuracy at turn t"), ("oracle", "with oracle (any turn <= t)"),
                       ("majority", "majority vote (turns <= t)")):
        ax.plot(xs, seq[key], marker="o", label=label)
    if "parallel" in metrics:
        p = metrics["parallel"]
        ax.axhline(p["pass"], linestyle="--", color="grey", label=f"parallel pass@{p['samples']}")
        ax.axhline(p["majority"], linestyle=":", color="grey", label=f"parallel maj@{p['samples']}")
    ax.set_xlabel("turn")
    ax.set_ylabel("accuracy")
    ax.set_xticks(xs)
    ax.set_title(f"{metrics['env']}: {metrics['problems']} problems", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)  # atomic: a full disk leaves the previous plot, not half a PNG
    finally:
        plt.close(fig)
    return path
