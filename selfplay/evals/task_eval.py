"""Task accuracy on verifiable tasks: the embedded arithmetic task, GSM8K, MATH, HotpotQA, ... — every task
of the registry (:mod:`selfplay.envs.tasks`).

Answers are checked by the task's verifier (GSM8K ``####``/last number, MATH by math-verify, HotpotQA
normalized exact match, with F1 reported too). With ``n`` samples per prompt the result also reports the
majority vote (maj@n: the most common extracted final answer) and pass@n (any sample correct).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfplay.envs.tasks import TASKS, get_task
from selfplay.errors import UserError

if TYPE_CHECKING:
    from selfplay.config import ModelConfig

RESULTS_FILE = "task_eval.json"


def majority_vote(samples: list[str], key: Callable[[str], str | None]) -> int:
    """Index of a sample carrying the most common final answer (ties: the answer seen first).

    Samples without an extractable answer do not vote; if none has one, sample 0 stands.
    """
    keys = [key(s) for s in samples]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return 0
    winner = counts.most_common(1)[0][0]  # most_common keeps first-seen order among equal counts
    return keys.index(winner)


def score_samples(records: list[dict[str, Any]], samples: list[list[str]], task: str) -> dict[str, Any]:
    """Accuracy metrics of ``samples[i]`` (n completions) for ``records[i]``, plus per-example rows.

    ``accuracy``: mean correctness over all samples (greedy accuracy when n = 1, else a pass@1 estimate);
    ``majority_accuracy``: the majority-vote answer's correctness; ``pass@n``: any sample correct.
    A task's ``reports`` join them (HotpotQA's ``f1``: mean token F1 over samples; its ``accuracy`` is
    normalized exact match).
    """
    t = get_task(task)
    examples, acc, maj, any_ok = [], 0.0, 0.0, 0.0
    reported = dict.fromkeys(t.reports, 0.0)
    per_example: dict[str, list[float]] = {"accuracy": [], "majority_accuracy": [], "pass": [],
                                           **{key: [] for key in t.reports}}
    for record, outs in zip(records, samples, strict=True):
        gold = t.gold(record)
        scored = [t.score(t.answer_of(o), gold) for o in outs]
        scores = [reward for reward, _ in scored]
        voted = majority_vote(outs, t.extract)
        acc += sum(scores) / len(scores)
        maj += scores[voted]
        any_ok += float(max(scores) >= 1.0)
        row: dict[str, Any] = {"id": record["id"], "gold": gold, "samples": outs, "correct": scores,
                               "voted_answer": t.extract(outs[voted])}
        per_example["accuracy"].append(sum(scores) / len(scores))
        per_example["majority_accuracy"].append(scores[voted])
        per_example["pass"].append(float(max(scores) >= 1.0))
        for key in t.reports:
            row[key] = [info[key] for _, info in scored]
            reported[key] += sum(row[key]) / len(outs)
            per_example[key].append(sum(row[key]) / len(outs))
        examples.append(row)
    total = max(1, len(records))
    n = len(samples[0]) if samples else 0
    metrics: dict[str, Any] = {"task": task, "num_examples": len(records), "n": n, "accuracy": acc / total,
                               "majority_accuracy": maj / total, f"pass@{n}": any_ok / total}
    metrics.update({key: value / total for key, value in reported.items()})
    per_example[f"pass@{n}"] = per_example.pop("pass")
    metrics["stats"] = example_intervals(per_example, averaged=t.reports)
    metrics["examples"] = examples
    return metrics


def example_intervals(per_example: dict[str, list[float]],
                      averaged: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """95% interval of each metric over the examples: Wilson where every example scores 0 or 1 (greedy
    accuracy, majority vote, pass@n), else (the ``averaged`` keys: a task's reports, such as F1) the
    bootstrap over examples."""
    from selfplay.evals.stats import bootstrap_mean, proportion_interval

    return {key: (bootstrap_mean(values) if key in averaged else proportion_interval(values)).as_dict()
            for key, values in per_example.items() if values}


def _as_sampler(sampler_or_model: Any, batch_size: int, model_cfg: ModelConfig | None) -> Any:
    if hasattr(sampler_or_model, "generate") and hasattr(sampler_or_model, "tokenizer"):
        return sampler_or_model
    if isinstance(sampler_or_model, tuple) and len(sampler_or_model) == 2:
        from selfplay.core.samplers import HFSampler

        return HFSampler.from_loaded(*sampler_or_model, batch_size=batch_size)
    if isinstance(sampler_or_model, (str, Path)):
        from selfplay.core.samplers import make_sampler

        return make_sampler("hf", str(sampler_or_model), batch_size=batch_size, model_cfg=model_cfg)
    raise TypeError(f"expected a Sampler, a (model, tokenizer) pair or a model path, got {type(sampler_or_model)}")


def evaluate_task(sampler_or_model: Any, records: list[dict[str, Any]], task: str, *, n: int = 1,
                  temperature: float = 0.0, max_new_tokens: int = 256, top_p: float = 1.0, seed: int = 0,
                  batch_size: int = 16, model_cfg: ModelConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate ``n`` answers per record (chat template) and score them; see :func:`score_samples`.

    ``sampler_or_model``: a Sampler, a loaded (model, tokenizer) pair, or a model path/alias.
    ``records``: canonical SFT records (``messages``, ``reference``, ``meta.answer``). Greedy by default;
    ``n`` > 1 needs ``temperature`` > 0 (greedy samples would all be the same).
    """
    from selfplay.core.samplers import format_prompt

    get_task(task)
    if n > 1 and temperature == 0:
        raise UserError(f"--n {n} samples need --temperature > 0: greedy decoding gives {n} identical answers.")
    if not records:
        raise UserError("no records to evaluate")
    sampler = _as_sampler(sampler_or_model, batch_size, model_cfg)
    prompts = [format_prompt(sampler.tokenizer, r["messages"], "chat") for r in records]
    samples = sampler.generate(prompts, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                               seed=seed, progress=progress)
    metrics = score_samples(records, samples, task)
    metrics.update({"temperature": temperature, "max_new_tokens": max_new_tokens})
    return metrics


def load_task_records(task: str, data: str | None, *, limit: int | None = None,
                      split: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """(task, canonical records): from ``data`` (prepared dir, .jsonl of records, or a raw GSM8K/MATH/
    HotpotQA file or hub id), else the task's default test set (generated for ``arith``).

    ``task`` may be ``auto``: it is then read from the records' ``meta.task``.
    """
    from selfplay.data.records import convert_rows, is_prepared_dir, load_sft
    from selfplay.data.sources import read_rows

    if data is None and task == "auto":
        raise UserError(f"--task is needed without --data: one of {', '.join(TASKS)}.")
    default = get_task(task).default_data if task != "auto" else None
    if data is None:
        if default is None:
            raise UserError(f"task '{task}' has no default test data: pass --data.")
        if callable(default):  # generated questions
            return task, default(limit)
        data, split = default[0], split or default[1]
    if is_prepared_dir(data):
        chosen = split or ("test" if (Path(data) / "test.jsonl").is_file() else "train")
        records = load_sft(data, chosen)
    else:
        converted = convert_rows(read_rows(data, split or "test"), "auto", show_progress=False)
        records = [r for group in converted.groups for r in group]
    found = {(r.get("meta") or {}).get("task") for r in records}
    if task == "auto":
        known = found & set(TASKS)
        if len(found) != 1 or not known:
            raise UserError(f"cannot tell the task of {data} (its records say {sorted(map(str, found))}); "
                            f"pass --task, one of {', '.join(TASKS)}.")
        task = known.pop()
    other = found - {task, None}
    if other:
        raise UserError(f"{data} holds {sorted(other)} records, not '{task}'; pass the matching --task.")
    return task, records[:limit] if limit is not None else records


def run_task_eval(model: str, task: str, records: list[dict[str, Any]], out_dir: str | Path, *, n: int = 1,
                  temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 256, batch_size: int = 16,
                  model_cfg: ModelConfig | None = None, seed: int = 0) -> dict[str, Any]:
    """Evaluate ``model`` on ``records``; writes ``task_eval.json`` (metrics) and ``task_samples.jsonl``
    (every answer with its verdict), prints the table and returns the metrics (without the examples)."""
    from selfplay.evals.report import print_table
    from selfplay.io import write_json, write_jsonl

    result = evaluate_task(model, records, task, n=n, temperature=temperature, top_p=top_p,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, model_cfg=model_cfg, seed=seed)
    examples = result.pop("examples")
    result["model"] = model
    out = Path(out_dir).expanduser()
    write_jsonl(out / "task_samples.jsonl", examples)
    write_json(out / RESULTS_FILE, result)
    shown = ["accuracy", "f1"] + (["majority_accuracy", f"pass@{n}"] if n > 1 else [])
    stats = result.get("stats", {})
    rows = [[key, f"{100 * result[key]:.1f}", _percent_interval(stats.get(key)), stats.get(key, {}).get("method", "–")]
            for key in shown if key in result]
    print_table(f"{task}: {Path(model).name or model} on n = {len(records)} examples "
                f"({'greedy' if temperature == 0 else f'T={temperature}, n={n} samples each'})",
                ["metric", "%", "95% interval (%)", "interval"], rows)
    return result


def _percent_interval(stats: dict[str, Any] | None) -> str:
    return f"[{100 * stats['lo']:.1f}, {100 * stats['hi']:.1f}]" if stats else "–"
