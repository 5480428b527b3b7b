"""Open LLM Leaderboard (v1) style evaluation through lm-evaluation-harness's Python API.

The v1 leaderboard ran six tasks, each with its own few-shot count and metric, and ranked models by the
plain mean of the six scores in percent. Any other lm-eval task (built in, or a YAML task directory
given with ``--include-path`` for offline use) can be run the same way; its metric is picked from
``acc_norm``/``acc``/``exact_match``/... in that order.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfplay.errors import MissingExtraError, UserError, suggest


@dataclass(frozen=True)
class LeaderboardTask:
    name: str
    num_fewshot: int | None  # None: the task's own default
    metric: str | None  # lm-eval result key such as "acc_norm,none"; None: pick the first known one


OPENLLM_V1 = [
    LeaderboardTask("arc_challenge", 25, "acc_norm,none"),
    LeaderboardTask("hellaswag", 10, "acc_norm,none"),
    LeaderboardTask("truthfulqa_mc2", 0, "acc,none"),
    LeaderboardTask("mmlu", 5, "acc,none"),
    LeaderboardTask("winogrande", 5, "acc,none"),
    LeaderboardTask("gsm8k", 5, "exact_match,strict-match"),
]
SUITES = {"openllm": OPENLLM_V1}
# Metric preference for tasks outside the suite.
METRIC_ORDER = ("acc_norm,none", "acc,none", "exact_match,strict-match", "exact_match,none", "f1,none",
                "mc2,none")
RESULTS_FILE = "leaderboard.json"


def parse_tasks(spec: str, num_fewshot: int | None = None) -> list[LeaderboardTask]:
    """``openllm`` or a comma list of task names; ``num_fewshot`` overrides every task's shot count."""
    tasks: list[LeaderboardTask] = []
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        suite = SUITES.get(name)
        tasks += suite if suite else [next((t for t in OPENLLM_V1 if t.name == name),
                                           LeaderboardTask(name, None, None))]
    if not tasks:
        raise UserError("--tasks is empty; pass 'openllm' or a comma-separated list of lm-eval task names.")
    if num_fewshot is not None:
        tasks = [LeaderboardTask(t.name, num_fewshot, t.metric) for t in tasks]
    return tasks


def _task_manager(names: list[str], include_path: list[str] | None) -> Any:
    """An lm-eval TaskManager that knows ``names``.

    Indexing lm-eval's ~15k built-in task configs takes seconds, so when every task is found in the
    ``include_path`` directories alone, only those are indexed.
    """
    from lm_eval.tasks import TaskManager

    paths = [str(Path(p).expanduser()) for p in include_path or []]
    for p in paths:
        if not Path(p).is_dir():
            raise UserError(f"--include-path {p} is not a directory of lm-eval task YAML files.")
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(n in local.all_tasks for n in names):
            return local
    manager = TaskManager(include_path=paths or None)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise UserError(f"unknown lm-eval task '{unknown[0]}'.{suggest(unknown[0], manager.all_tasks)} "
                        "(`lm-eval ls tasks` lists them; local YAML tasks need --include-path DIR)")
    return manager


def _pick_metric(task: LeaderboardTask, scores: dict[str, Any]) -> tuple[str, float, float | None]:
    """(metric key, value, stderr) of one task's lm-eval result block."""
    candidates = [task.metric] if task.metric else [*METRIC_ORDER, *sorted(scores)]
    for key in candidates:
        value = scores.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "_stderr" not in key:
            name, _, flt = key.partition(",")
            stderr = scores.get(f"{name}_stderr,{flt}")
            return key, float(value), float(stderr) if isinstance(stderr, (int, float)) else None
    raise UserError(f"lm-eval reported no metric {task.metric or ''} for task '{task.name}' "
                    f"(got {sorted(scores)})")


def _scores_of(results: dict[str, Any], name: str) -> dict[str, Any]:
    # Group tasks (mmlu) carry their aggregate under "groups" in some lm-eval versions, "results" in others.
    for section in ("groups", "results"):
        block = (results.get(section) or {}).get(name)
        if block and any(isinstance(v, (int, float)) for k, v in block.items() if "," in k):
            return block
    raise UserError(f"lm-eval returned no results for task '{name}'")


def run_leaderboard(model: str, out_dir: str | Path, *, tasks: str = "openllm", limit: float | None = None,
                    include_path: list[str] | None = None, peft: str | None = None, batch_size: int | str = 8,
                    num_fewshot: int | None = None, dtype: str = "auto", device: str = "auto",
                    trust_remote_code: bool = False, seed: int = 0, revision: str | None = None) -> dict[str, Any]:
    """Run the tasks with lm-eval's HF backend; write ``leaderboard.json``, print a table, return the summary.

    The model is loaded once and shared by all tasks; tasks with the same few-shot count run in one
    ``simple_evaluate`` call. ``limit``: examples per task (a fraction below 1 is a share).
    """
    if importlib.util.find_spec("lm_eval") is None:
        raise MissingExtraError("lm-eval", "eval", "The leaderboard evaluation")
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from selfplay.evals.report import print_table
    from selfplay.io import write_json
    from selfplay.models import resolve_device, resolve_model

    wanted = parse_tasks(tasks, num_fewshot)
    if peft is not None and not Path(peft).expanduser().is_dir():
        raise UserError(f"--peft {peft} is not a PEFT adapter directory.")
    manager = _task_manager([t.name for t in wanted], include_path)
    lm = HFLM(pretrained=resolve_model(model, revision), peft=str(Path(peft).expanduser()) if peft else None,
              batch_size=batch_size, device=resolve_device(device), dtype=dtype,
              trust_remote_code=trust_remote_code)
    by_shots: dict[int | None, list[LeaderboardTask]] = {}
    for t in wanted:
        by_shots.setdefault(t.num_fewshot, []).append(t)
    raw: dict[str, Any] = {}
    rows = []
    for shots, group in by_shots.items():
        try:
            result = lm_eval.simple_evaluate(model=lm, tasks=[t.name for t in group], num_fewshot=shots,
                                             limit=limit, task_manager=manager, log_samples=False,
                                             bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed,
                                             torch_random_seed=seed, fewshot_random_seed=seed)
        except ValueError as e:  # lm-eval's way to reject a task selection (e.g. a task and its group)
            raise UserError(f"lm-eval could not run {[t.name for t in group]}: {e}") from None
        if result is None:  # only a non-zero rank of a distributed run gets None
            raise UserError("lm-eval returned no results (is this a distributed worker process?)")
        for t in group:
            scores = _scores_of(result, t.name)
            metric, value, stderr = _pick_metric(t, scores)
            rows.append({"task": t.name, "num_fewshot": result.get("n-shot", {}).get(t.name, shots),
                         "metric": metric, "score": 100 * value,
                         "stderr": 100 * stderr if stderr is not None else None,
                         "samples": (result.get("n-samples", {}).get(t.name) or {}).get("effective")})
            raw[t.name] = scores
    average = sum(r["score"] for r in rows) / len(rows)
    summary = {"model": model, "peft": peft, "tasks": rows, "average": average, "limit": limit,
               "suite": tasks, "lm_eval_version": getattr(lm_eval, "__version__", None), "raw": raw}
    out = Path(out_dir).expanduser()
    write_json(out / RESULTS_FILE, summary)
    table = [[r["task"], str(r["num_fewshot"]), r["metric"], f"{r['score']:.2f}",
              "–" if r["stderr"] is None or math.isnan(r["stderr"]) else f"± {r['stderr']:.2f}"] for r in rows]
    table.append(["average", "", "", f"{average:.2f}", ""])
    print_table(f"Leaderboard: {Path(model).name or model}{' + ' + peft if peft else ''}",
                ["task", "shots", "metric", "score %", "stderr"], table)
    return summary
