"""Per-iteration evaluation on held-out prompts: did self-play help?

For the model of iteration k (or the base model) on held-out SFT records:
- ``real_loglik``: mean per-token log-likelihood of the real answers (SPIN's target distribution);
- ``spin_margin``: mean SPIN log-ratio margin against the previous iterate,
  [log π_k(y_real) − log π_{k−1}(y_real)] − [log π_k(y_prev) − log π_{k−1}(y_prev)],
  where y_prev are the previous iterate's own greedy answers (positive: the new model moved toward the
  real answers and away from its predecessor's);
- ``accuracy``: greedy answers checked by the task's verifier (arith / gsm8k / math), when records carry one;
- with ``eval.num_samples = n > 0``, n fresh samples per prompt at the generation temperature/top_p:
  ``sample_accuracy`` (verifier) and ``sample_score`` (judge) average over all of them. This is what
  SPPO optimizes (the expected win of the policy's samples), and with n samples per prompt it resolves
  changes that greedy accuracy on a few dozen prompts cannot.
Own answers and their log-probs are saved so the next iteration's margin can be computed without
reloading this model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from selfplay.config import Config
from selfplay.core.examples import Segment, TokenizedExample, tokenize_segments, truncate
from selfplay.core.logprobs import sequence_logps, training_batch
from selfplay.core.memory import release_memory
from selfplay.evals.per_prompt import PER_PROMPT_FILE, write_per_prompt
from selfplay.hardware import resolve_dtype_name
from selfplay.io import read_jsonl, write_json, write_jsonl
from selfplay.progress import console


def task_verifier(records: list[dict[str, Any]],
                  configured: str) -> tuple[Callable[[str, str], float], Callable[[dict[str, Any]], str]] | None:
    """(verifier, gold reader) that check answers to these records: ``eval.task`` when set (a task or a
    verifier name, see :func:`selfplay.envs.tasks.find_verifier`), else the task the records share
    (``meta.task``); None when there is none (open-ended prompts)."""
    from selfplay.envs.tasks import TASKS, find_verifier, gold_answer, records_task

    task = records_task(records) if configured == "auto" else TASKS.get(configured)
    if task is not None:
        return task.verify, task.gold
    verifier = find_verifier(configured)  # the task-free em / f1
    return (verifier, gold_answer) if verifier is not None else None


def reference_segments(text: str) -> list[Segment]:
    """A response as training segments: a ReAct trajectory's tool observations are context (not scored),
    as in training; any other text is scored whole."""
    from selfplay.envs.react import is_react_trajectory, parse_trajectory
    from selfplay.methods.agent import trajectory_segments

    if is_react_trajectory(text):
        segments = trajectory_segments(parse_trajectory(text))
        if any(s.train for s in segments):
            return segments
    return [Segment(text)]


def response_logps(model: Any, tok: Any, prompts: list[str], responses: list[str], *, batch_size: int,
                   max_length: int) -> tuple[list[float], list[int]]:
    """Summed log-prob and scored-token count of each response given its (already formatted) prompt."""
    scored = prompt_responses_logps(model, tok, prompts, [[r] for r in responses], batch_size=batch_size,
                                    max_length=max_length)
    return [s[0][0] for s in scored], [s[0][1] for s in scored]


def prompt_responses_logps(model: Any, tok: Any, prompts: list[str], responses: list[list[str]], *,
                           batch_size: int, max_length: int) -> list[list[tuple[float, int]]]:
    """(summed log-prob, scored-token count) of every response in ``responses[i]`` given ``prompts[i]``.

    Each (prompt, response) is truncated on its own, as if scored alone; the responses that share a prompt are
    one record of :func:`selfplay.core.logprobs.training_batch`, so where the model takes the packed layout the
    prompt is encoded once, with no padding: an evaluation's real answer, own answer and the
    previous iterate's answer take 17,100 token positions instead of 32,704 in three left-padded passes (SPIN
    quickstart, iteration 1, 100 prompts of ~58 tokens). ``batch_size`` bounds the sequences per forward.
    """
    from selfplay.core.samplers import encode_prompt

    # One record per prompt and truncated prompt (a long response cuts its prompt, and goes apart from its
    # siblings); ``where`` says which (prompt, response) each of a record's responses is.
    records: list[TokenizedExample] = []
    where: list[list[tuple[int, int]]] = []
    for i, (prompt, texts) in enumerate(zip(prompts, responses)):
        if not texts:
            continue
        prompt_ids = encode_prompt(tok, prompt)
        by_prompt: dict[tuple[int, ...], int] = {}
        for j, text in enumerate(texts):
            ids, mask = tokenize_segments(tok, reference_segments(text))
            pid, (rid,), _ = truncate(prompt_ids, [ids], max_length, max_length // 2)
            if tuple(pid) not in by_prompt:
                by_prompt[tuple(pid)] = len(records)
                records.append(TokenizedExample(f"{i}", pid, [], []))
                where.append([])
            r = by_prompt[tuple(pid)]
            records[r].responses.append(rid)
            records[r].masks.append(mask[:len(rid)])
            where[r].append((i, j))
    out: list[list[tuple[float, int]]] = [[(0.0, 0)] * len(texts) for texts in responses]
    # A batch takes records with the same number of responses (both layouts need it), batch_size sequences.
    by_count: dict[int, list[int]] = {}
    for r, rec in enumerate(records):
        by_count.setdefault(len(rec.responses), []).append(r)
    for k, idx in by_count.items():
        per_batch = max(1, batch_size // k)
        for s in range(0, len(idx), per_batch):
            chosen = idx[s:s + per_batch]
            batch = training_batch(model, [records[r] for r in chosen], tok.pad_token_id)
            with torch.no_grad():
                logps, ntok = sequence_logps(model, {key: v.to(model.device) for key, v in batch.items()})
            # Rows are response-major (row j * len(chosen) + b is response j of record b), in either layout.
            for row, (lp, n) in enumerate(zip(logps.tolist(), ntok.tolist())):
                i, j = where[chosen[row % len(chosen)]][row // len(chosen)]
                out[i][j] = (lp, n)
    return out


# A method's extra per-iteration evaluations (``Method.evaluations``), by name:
# (config, sampler over the evaluated model, held-out records, output directory) -> metrics for the table,
# with their per-prompt values under "per_prompt" ({id: {column: value}}, see selfplay.evals.per_prompt).
Evaluation = Callable[[Config, Any, list[dict[str, Any]], Path], dict[str, Any]]


def multiturn_evaluation(cfg: Config, sampler: Any, records: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """RISE's sequential and parallel multi-turn evaluation of the held-out problems (selfplay.evals.multiturn)."""
    import dataclasses

    from selfplay.envs.answer_envs import env_for_records
    from selfplay.evals.multiturn import evaluate_multiturn, table_metrics
    from selfplay.stages.rollout import LocalTurnModel

    r = cfg.rise
    env = env_for_records(r.env, records, r.rewards)
    usable = [rec for rec in records if env.parse_gold(env.gold(rec)) is not None]
    sampling = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, max_new_tokens=cfg.eval.max_new_tokens))
    console.print(f"eval: multi-turn, {len(usable)} problems x {r.eval_turns} turns"
                  + (f" + {r.eval_parallel} parallel samples" if r.eval_parallel else ""))
    model = LocalTurnModel(sampler, sampling)
    metrics = evaluate_multiturn(env, model.respond, usable, turns=r.eval_turns, context_window=r.context_window,
                                 parallel=r.eval_parallel, seed=cfg.seed + 7919, out_dir=out_dir, release=model.release)
    per_prompt = metrics.pop("outcomes")
    return {**table_metrics(metrics), "multiturn": metrics, "per_prompt": per_prompt}


def agent_evaluation(cfg: Config, sampler: Any, records: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """Greedy ReAct episodes with the tools on the held-out questions (selfplay.evals.agent_eval)."""
    from selfplay.evals.agent_eval import evaluate_agent

    console.print(f"eval: agent, {len(records)} questions, search {cfg.agent.search}")
    metrics = evaluate_agent(cfg, sampler, records, out_dir)
    per_prompt = {key: {f"agent_{k}": v for k, v in o.items()} for key, o in metrics.pop("outcomes").items()}
    return {"agent_em": metrics["em"], "agent_f1": metrics["f1"], "agent_steps": metrics["steps"],
            "agent_finished": metrics["finished"], "agent": metrics, "per_prompt": per_prompt}


EVALUATIONS: dict[str, Evaluation] = {"multiturn": multiturn_evaluation, "agent": agent_evaluation}


def evaluate_model(cfg: Config, model_path: str | Path, records: list[dict[str, Any]], out_dir: Path,
                   previous: Path | None = None, judge: str | None = None,
                   evaluations: tuple[str, ...] = (), margin: bool = True) -> dict[str, Any]:
    """Evaluate one model on held-out records; writes ``out_dir/samples.jsonl``, ``per_prompt.jsonl`` (every
    metric's value per prompt, :mod:`selfplay.evals.per_prompt`) and ``metrics.json`` (the means).

    ``previous``: the previous evaluation's ``samples.jsonl`` (for the SPIN margin), or None for the base.
    ``judge``: a scoring judge spec (reward model, ...) whose mean score of the answers is reported (SPPO).
    ``evaluations``: names in :data:`EVALUATIONS` whose metrics join the row (e.g. RISE's multi-turn).
    ``margin``: also score the model's own answers and ``previous``'s for the SPIN margin; without it only the
    real answers are scored (the answers are the longer texts: the SPPO quickstart's evaluations took 326 s
    instead of 442 s without them, one run).
    """
    from selfplay.core.samplers import HFSampler, format_prompt
    from selfplay.models import load_model, resolve_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = resolve_model(str(model_path), cfg.model.revision)
    model, tok = load_model(path, dtype="float32", device=device)
    model.eval()
    sample_dtype = resolve_dtype_name(cfg.model.dtype, device)
    console.print(f"eval: log-probs in float32, answers sampled in {sample_dtype}")
    prompts = [format_prompt(tok, r["messages"], cfg.generate.prompt_format) for r in records]
    # Log-probs are scored in fp32; answers are generated in model.dtype when it asks for half precision
    # (about 2x faster sampling on CPUs with bf16 units), from a second copy loaded in that dtype (the same
    # rounding as converting the fp32 weights; a deepcopy would first hold a second fp32 copy).
    gen_model = model
    if sample_dtype.name != "float32":
        gen_model, _ = load_model(path, dtype=sample_dtype.name, device=device)
    sampler = HFSampler.from_loaded(gen_model, tok, batch_size=cfg.eval.batch_size)
    answers = [s[0] for s in sampler.generate(prompts, n=1, temperature=0.0, top_p=1.0,
                                              max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.seed)]
    prev = ({p["id"]: p for p in read_jsonl(previous)} if margin and previous is not None and Path(previous).exists()
            else None)
    # An evaluation written without the margin has no answer log-probs: the next one has nothing to compare with.
    have = [i for i, r in enumerate(records) if prev is not None and "answer_logp" in prev.get(r["id"], {})]
    # Per prompt, in one pass: the real answer and, for the margin, the model's own answer and the previous
    # iterate's.
    responses = [[r["reference"], a] if margin else [r["reference"]] for r, a in zip(records, answers)]
    for i in have:
        responses[i].append(prev[records[i]["id"]]["answer"])
    scored = prompt_responses_logps(model, tok, prompts, responses, batch_size=cfg.eval.batch_size,
                                    max_length=cfg.train.max_length)
    real_sum, real_n = [s[0][0] for s in scored], [s[0][1] for s in scored]
    own_sum = [s[1][0] for s in scored] if margin else None
    prev_sum = [scored[i][2][0] for i in have]
    if gen_model is not model:
        # Every log-prob is computed: what follows only samples, so one copy of the model stays (not fp32 + bf16).
        model = None
        release_memory()
    metrics: dict[str, Any] = {
        "model": str(model_path), "n": len(records),
        "real_loglik": sum(real_sum) / max(1, sum(real_n)),
        "answer_tokens": sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers) / max(1, len(answers)),
    }
    verifier = task_verifier(records, cfg.eval.task)
    tasks = {r.get("meta", {}).get("task") for r in records}
    if len(tasks) == 1 and tasks != {None}:
        metrics["task"] = tasks.pop()
    # (accuracy key, judge-score key, answers per record): greedy answers, then fresh samples if asked for.
    answer_sets = [("accuracy", "mean_score", [[a] for a in answers])]
    if cfg.eval.num_samples > 0:
        # A seed apart from generation's, so held-out samples never replay the training draws.
        samples = sampler.generate(prompts, n=cfg.eval.num_samples, temperature=cfg.generate.temperature,
                                   top_p=cfg.generate.top_p, max_new_tokens=cfg.eval.max_new_tokens,
                                   seed=cfg.seed + 7919)
        metrics["samples_per_prompt"] = cfg.eval.num_samples
        answer_sets.append(("sample_accuracy", "sample_score", samples))
    scorer = _scoring_judge(judge, cfg) if judge else None
    # Per-prompt values (selfplay.evals.per_prompt): the table's intervals and paired changes come from them.
    per_prompt: dict[str, dict[str, Any]] = {r["id"]: {"real_logp": s, "real_tokens": n}
                                             for r, s, n in zip(records, real_sum, real_n)}
    for accuracy_key, score_key, texts in answer_sets:
        if verifier is not None:
            check, gold = verifier
            hits = [[check(t, gold(r)) for t in ts] for ts, r in zip(texts, records)]
            metrics[accuracy_key] = sum(map(sum, hits)) / max(1, sum(map(len, hits)))
            for r, h in zip(records, hits):
                per_prompt[r["id"]][accuracy_key] = sum(h) / len(h)
        if judge:
            scores = _judge_scores(scorer, records, texts)
            metrics[score_key] = sum(map(sum, scores)) / max(1, sum(map(len, scores))) if scores else None
            for r, s in zip(records, scores or []):
                per_prompt[r["id"]][score_key] = sum(s) / len(s) if s else None
    rows = [{"id": r["id"], "answer": a, "real_logp": rl} for r, a, rl in zip(records, answers, real_sum)]
    for row, own in zip(rows, own_sum or []):
        row["answer_logp"] = own
    if have:
        margins = [(real_sum[i] - prev[records[i]["id"]]["real_logp"]) - (ps - prev[records[i]["id"]]["answer_logp"])
                   for i, ps in zip(have, prev_sum)]
        metrics["spin_margin"] = sum(margins) / max(1, len(margins))
        for i, value in zip(have, margins):
            per_prompt[records[i]["id"]]["spin_margin"] = value
    for name in evaluations:
        extra = EVALUATIONS[name](cfg, sampler, records, out_dir)
        for key, values in extra.pop("per_prompt", {}).items():
            per_prompt.setdefault(key, {}).update(values)
        metrics.update(extra)
    write_jsonl(out_dir / "samples.jsonl", rows)
    write_per_prompt(out_dir / PER_PROMPT_FILE, per_prompt)
    write_json(out_dir / "metrics.json", metrics)
    del model, gen_model, sampler, scorer
    release_memory()
    return metrics


def _scoring_judge(spec: str, cfg: Config) -> Any | None:
    """The judge of ``spec`` when it gives per-sample scores; None for pairwise-only judges (nothing to average)."""
    from selfplay.judges import make_judge

    j = make_judge(spec, batch_size=cfg.rank.batch_size, device=cfg.rank.device, remote=cfg.remote)
    return j if j.kind == "scores" else None


def _judge_scores(scorer: Any | None, records: list[dict[str, Any]], answers: list[list[str]]) -> list[list[float]] | None:
    """The scores ``scorer`` gives each record's answers (a list of samples per record); None without a scorer."""
    if scorer is None:
        return None
    items = [{"id": r["id"], "prompt_messages": r["messages"], "samples": a, "reference": r.get("reference"),
              "meta": r.get("meta", {})} for r, a in zip(records, answers)]
    return [list(res["scores"]) for res in scorer.score(items)]
