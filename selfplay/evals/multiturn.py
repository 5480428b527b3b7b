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


def kept_attempts(answers: list[str], context_window: int) -> list[str]:
    """The earlier attempts a window of k turns shows: the last k−1 (all of them while there are fewer).

    The anchor (cmu-mind/RISE ``workflow_eval.py:84-87``) keeps the whole history while ``turn < k`` and
    ``history[-k + 1:]`` after, which is the same for k >= 2. For k = 1 its ``history[-0:]`` is the whole
    history (Python reads -0 as 0); here k = 1 shows no earlier attempt, which is what a one-turn window
    means (docs/anchor-differences.md)."""
    if context_window <= 1:
        return []
    return answers[max(0, len(answers) - (context_window - 1)):]


def sequential_prompt(env: AnswerEnv, record: dict[str, Any], answers: list[str], context_window: int) -> Messages:
    """The conversation turn ``len(answers) + 1`` answers: the question, then the last k−1 attempts, each
    followed by the oracle-free retry feedback."""
    kept = kept_attempts(answers, context_window)
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


def sequential_outcomes(env: AnswerEnv, record: dict[str, Any], result: dict[str, Any]) -> dict[str, list[float]]:
    """One problem's sequential episode, per turn t = 1..T (1.0 or 0.0): ``acc`` (turn t correct),
    ``oracle`` (some turn <= t correct), ``majority`` (the majority answer of turns <= t correct), and what
    RISE trains for, per turn against the turn before (0.0 at turn 1): ``fixed`` (wrong at t−1, right at t)
    and ``broken`` (right at t−1, wrong at t). acc[t] − acc[t−1] = fixed[t] − broken[t]."""
    turns = len(result["answers"])
    acc = [float(result["rewards"][t] == 1.0) for t in range(turns)]
    return {"acc": acc,
            "oracle": [float(any(x == 1.0 for x in result["rewards"][:t])) for t in range(1, turns + 1)],
            "majority": [float(majority_correct(env, result["answers"][:t], env.gold(record)))
                         for t in range(1, turns + 1)],
            "fixed": [0.0] + [float(acc[t - 1] == 0.0 and acc[t] == 1.0) for t in range(1, turns)],
            "broken": [0.0] + [float(acc[t - 1] == 1.0 and acc[t] == 0.0) for t in range(1, turns)]}


def parallel_outcomes(env: AnswerEnv, record: dict[str, Any], result: dict[str, Any]) -> dict[str, float]:
    """One problem's n parallel samples: ``pass`` (any correct) and ``majority`` (the majority answer correct)."""
    return {"pass": float(any(x == 1.0 for x in result["rewards"])),
            "majority": float(majority_correct(env, result["answers"], env.gold(record)))}


def sequential_metrics(env: AnswerEnv, records: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict:
    """Per turn t = 1..T, shares of the problems (lists of length T): ``acc``, ``oracle``, ``majority``,
    ``fixed``, ``broken`` (:func:`sequential_outcomes`); and ``first_to_last``: the shares wrong at turn 1 and
    right at turn T (``fixed``) and right at turn 1 and wrong at turn T (``broken``) — whether later turns
    correct answers without an oracle, or only churn them."""
    outcomes = [sequential_outcomes(env, rec, r) for r, rec in zip(results, records)]
    turns = len(results[0]["answers"]) if results else 0
    n = max(1, len(results))
    metrics: dict[str, Any] = {key: [sum(o[key][t] for o in outcomes) / n for t in range(turns)]
                               for key in ("acc", "oracle", "majority", "fixed", "broken")}
    if turns:
        moves = [first_to_last(o["acc"]) for o in outcomes]
        metrics["first_to_last"] = {"fixed": sum(f for f, _ in moves) / n, "broken": sum(b for _, b in moves) / n}
    return metrics


def first_to_last(acc: list[float]) -> tuple[float, float]:
    """(wrong at turn 1 and right at turn T, right at turn 1 and wrong at turn T), each 1.0 or 0.0."""
    return float(acc[0] == 0.0 and acc[-1] == 1.0), float(acc[0] == 1.0 and acc[-1] == 0.0)


def parallel_metrics(env: AnswerEnv, records: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict:
    """pass@n and maj@n over the problems."""
    outcomes = [parallel_outcomes(env, rec, r) for r, rec in zip(results, records)]
    n = max(1, len(results))
    return {"pass": sum(o["pass"] for o in outcomes) / n, "majority": sum(o["majority"] for o in outcomes) / n,
            "samples": len(results[0]["answers"]) if results else 0}


def evaluate_multiturn(env: AnswerEnv, respond: Respond, records: list[dict[str, Any]], *, turns: int,
                       context_window: int, parallel: int, seed: int, out_dir: Path | None = None,
                       release: Callable[[list[str]], None] | None = None) -> dict[str, Any]:
    """Both evaluations; per-problem results go to ``out_dir/multiturn.jsonl`` and the per-turn plot to
    ``out_dir/multiturn.png`` when ``out_dir`` is given. ``respond`` gets the problem ids as episode ids (a
    model may keep each problem's cache from turn to turn: a turn's prompt extends the question the previous
    one answered); ``release(ids)`` is called once both evaluations are done."""
    from selfplay.io import write_json, write_jsonl

    sequential = run_sequential(env, respond, records, turns, context_window, seed)
    metrics: dict[str, Any] = {"env": env.name, "problems": len(records), "turns": turns,
                               "context_window": context_window,
                               "sequential": sequential_metrics(env, records, sequential)}
    rows = [{"id": s["id"], "sequential": s, "outcomes": sequential_outcomes(env, rec, s)}
            for s, rec in zip(sequential, records)]
    if parallel > 0:
        par = run_parallel(env, respond, records, parallel, seed + 1)
        metrics["parallel"] = parallel_metrics(env, records, par)
        for row, p, rec in zip(rows, par, records):
            row["parallel"] = p
            row["outcomes"]["parallel"] = parallel_outcomes(env, rec, p)
    if release is not None:
        release([r["id"] for r in records])
    if out_dir is not None:
        write_jsonl(Path(out_dir) / "multiturn.jsonl", rows)
        write_json(Path(out_dir) / "multiturn.json", metrics)
        plot_multiturn(metrics, Path(out_dir) / "multiturn.png")
    # Per problem, the table columns' 0/1 values (not saved in multiturn.json: multiturn.jsonl has them).
    return {**metrics, "outcomes": {row["id"]: table_outcomes(row["outcomes"]) for row in rows}}


def table_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The iteration-table columns of a RISE run (see ``selfplay.methods.rise``)."""
    seq = metrics["sequential"]
    row = {"mt_acc_t1": seq["acc"][0], "mt_acc_tlast": seq["acc"][-1], "mt_oracle": seq["oracle"][-1],
           "mt_majority": seq["majority"][-1], "mt_problems": metrics["problems"]}
    if "first_to_last" in seq:
        row.update(mt_fixed=seq["first_to_last"]["fixed"], mt_broken=seq["first_to_last"]["broken"])
    if "parallel" in metrics:
        row.update(mt_pass_parallel=metrics["parallel"]["pass"], mt_maj_parallel=metrics["parallel"]["majority"])
    return row


def table_outcomes(outcomes: dict[str, Any]) -> dict[str, float]:
    """One problem's values of the iteration-table columns (:func:`table_metrics`), from its ``outcomes``."""
    row = {"mt_acc_t1": outcomes["acc"][0], "mt_acc_tlast": outcomes["acc"][-1], "mt_oracle": outcomes["oracle"][-1],
           "mt_majority": outcomes["majority"][-1]}
    row["mt_fixed"], row["mt_broken"] = first_to_last(outcomes["acc"])
    if "parallel" in outcomes:
        row.update(mt_pass_parallel=outcomes["parallel"]["pass"], mt_maj_parallel=outcomes["parallel"]["majority"])
    return row


def _wilson_cell(p: float, n: int) -> str:
    """``0.312 [0.20, 0.45]``: a proportion over n problems with its Wilson interval (0/1 per problem)."""
    from selfplay.evals.stats import wilson_interval
    from selfplay.evals.stats_format import with_interval

    if n <= 0:
        return f"{p:.3f}"
    return with_interval(p, wilson_interval(round(p * n), n).as_dict(), "{:.3f}")


def _share(p: float, n: int) -> str:
    """``0.125 (8)``: a share of n problems with its count."""
    return f"{p:.3f} ({round(p * n)})"


def print_multiturn(metrics: dict[str, Any], title: str = "multi-turn evaluation") -> None:
    """The per-turn table: turn, accuracy, with oracle, majority (and the parallel line)."""
    from rich.table import Table

    from selfplay.progress import console

    seq, n = metrics["sequential"], metrics["problems"]
    # The title on its own line: as a Table title rich wraps it to the table's width.
    console.print(f"{title} ({metrics['env']}, n = {n} problems, context window {metrics['context_window']}; "
                  "95% Wilson intervals)", style="bold", highlight=False)
    table = Table()
    for name in ("turn", "accuracy", "with oracle", "majority (no oracle)", "wrong→right", "right→wrong"):
        table.add_column(name, justify="right")
    # Runs written before the transitions were counted have no fixed/broken lists.
    fixed, broken = seq.get("fixed", [None] * len(seq["acc"])), seq.get("broken", [None] * len(seq["acc"]))
    for t, (a, o, m, f, b) in enumerate(zip(seq["acc"], seq["oracle"], seq["majority"], fixed, broken), start=1):
        moves = ("", "") if t == 1 or f is None else (_share(f, n), _share(b, n))
        table.add_row(str(t), _wilson_cell(a, n), _wilson_cell(o, n), _wilson_cell(m, n), *moves)
    console.print(table)
    if "first_to_last" in seq and len(seq["acc"]) > 1:
        moved = seq["first_to_last"]
        console.print(f"turn 1 → turn {len(seq['acc'])}: {_share(moved['fixed'], n)} of the problems went from wrong "
                      f"to right, {_share(moved['broken'], n)} from right to wrong", highlight=False)
    if "parallel" in metrics:
        p = metrics["parallel"]
        console.print(f"parallel, {p['samples']} samples of turn 1 (n = {n} problems): pass@{p['samples']} "
                      f"{_wilson_cell(p['pass'], n)}, maj@{p['samples']} {_wilson_cell(p['majority'], n)}")


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
