"""``selfplay eval``: MT-Bench, the Open LLM Leaderboard tasks (lm-eval), pairwise win rate, task accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from selfplay.cli import eval_compare
from selfplay.cli.common import ConfigOpt, SetOpt, at_least, comma_list, console, resolve
from selfplay.errors import UserError

app = typer.Typer(help="Evaluate a model: mt-bench, leaderboard, winrate, task, ...; a judge: preference.",
                  no_args_is_help=True)

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m",
                                                 help="Local directory, hub id or alias (default: config model).")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o",
                                                help="Output directory (default: evals/<model>/<eval>).")]
JudgeModelOpt = Annotated[str, typer.Option(help="Model name sent to an OpenAI-compatible judge.")]
KeyEnvOpt = Annotated[str, typer.Option(help="Environment variable holding the judge API key.")]
MaxTokensOpt = Annotated[Optional[int], typer.Option(help="Answer length limit (config eval.max_new_tokens).")]
BatchOpt = Annotated[Optional[int], typer.Option(help="Generation batch size (config eval.batch_size).")]


def _out_dir(out: Path | None, model: str, name: str) -> Path:
    from selfplay.evals.generation import model_label

    return out if out is not None else Path("evals") / model_label(model) / name


def _save(cfg: object, out: Path, *models: str) -> None:
    """Check the models (a missing one is refused before any output exists), then create ``out`` with the
    resolved config. Answer files (winrate's ``--model``/``--baseline``) are read later, not models."""
    from selfplay.config import save_config
    from selfplay.evals.generation import is_answer_file
    from selfplay.models import resolve_model

    for model in models:
        if not is_answer_file(model):
            resolve_model(model, cfg.model.revision)  # type: ignore[attr-defined]
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")


@app.command("mt-bench")
def mt_bench(
    model: ModelOpt = None,
    judge: Annotated[Optional[str], typer.Option(
        help="http(s):// OpenAI-compatible API root, or a local judge model. Without one, only answers.")] = None,
    judge_model: JudgeModelOpt = "default",
    judge_api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    questions: Annotated[Optional[str], typer.Option(
        help="MT-Bench question.jsonl or a hub dataset id (default: HuggingFaceH4/mt_bench_prompts).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N questions.", callback=at_least(1))] = None,
    mode: Annotated[str, typer.Option(help="single (1-10 grades) | pairwise (vs --baseline-answers)")] = "single",
    baseline_answers: Annotated[Optional[Path], typer.Option(help="Baseline's FastChat answer JSONL.")] = None,
    reference_answers: Annotated[Optional[Path], typer.Option(
        help="FastChat reference answers (reference_answer/gpt-4.jsonl) for math/reasoning/coding.")] = None,
    judge_prompts: Annotated[Optional[Path], typer.Option(
        help="judge_prompts.jsonl overriding the built-in FastChat templates.")] = None,
    out: OutOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit per turn.", callback=at_least(1))] = 1024,
    judge_max_tokens: Annotated[int, typer.Option(help="Judgment length limit.", callback=at_least(1))] = 2048,
    batch_size: BatchOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """MT-Bench: two-turn answers, graded by an LLM judge per category (FastChat's protocol)."""
    cfg = resolve(config, set_, model__name_or_path=model, eval__judge=judge, eval__batch_size=batch_size)
    from selfplay.evals.mt_bench import run_mt_bench
    from selfplay.evals.mt_bench_data import DEFAULT_QUESTIONS

    out_dir = _out_dir(out, cfg.model.name_or_path, "mt_bench")
    _save(cfg, out_dir, cfg.model.name_or_path)
    result = run_mt_bench(cfg.model.name_or_path, out_dir, questions=questions or DEFAULT_QUESTIONS,
                          judge=cfg.eval.judge, judge_model=judge_model, judge_api_key_env=judge_api_key_env,
                          judge_prompts=judge_prompts, reference_answers=reference_answers, mode=mode,
                          baseline_answers=baseline_answers, limit=limit, max_new_tokens=max_new_tokens,
                          judge_max_tokens=judge_max_tokens, batch_size=cfg.eval.batch_size, model_cfg=cfg.model,
                          seed=cfg.seed, remote=cfg.remote)
    if cfg.eval.judge is None:
        console.print(f"answers: {result['answers']} (pass --judge URL_or_model to grade them)")
    else:
        console.print(f"results: {out_dir / 'summary.json'}" + (f", plot: {result['plot']}" if result["plot"] else ""))


@app.command("leaderboard")
def leaderboard(
    model: ModelOpt = None,
    tasks: Annotated[str, typer.Option(
        help="'openllm' (the six v1 tasks) or comma-separated lm-eval tasks.")] = "openllm",
    limit: Annotated[Optional[float], typer.Option(help="Examples per task (below 1: a fraction).",
                                                   callback=at_least(0, above=True))] = None,
    include_path: Annotated[Optional[list[Path]], typer.Option(
        help="Directory of lm-eval task YAML files (repeatable), e.g. for offline tasks.")] = None,
    peft: Annotated[Optional[Path], typer.Option(help="A PEFT (LoRA) adapter directory on top of --model.")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option(help="Override every task's few-shot count.",
                                                       callback=at_least(0))] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    batch_size: BatchOpt = None,
    out: OutOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Open LLM Leaderboard v1 tasks (or any lm-eval tasks) through lm-evaluation-harness."""
    cfg = resolve(config, set_, model__name_or_path=model, eval__batch_size=batch_size)
    from selfplay.evals.leaderboard import run_leaderboard

    if limit is not None and limit >= 1 and limit != int(limit):
        raise UserError(f"--limit must be a whole number of examples or a fraction below 1, got {limit}")
    out_dir = _out_dir(out, cfg.model.name_or_path, "leaderboard")
    _save(cfg, out_dir, cfg.model.name_or_path)
    run_leaderboard(cfg.model.name_or_path, out_dir, tasks=tasks,
                    limit=int(limit) if limit is not None and limit >= 1 else limit,
                    include_path=[str(p) for p in include_path or []], peft=str(peft) if peft else None,
                    batch_size=cfg.eval.batch_size, num_fewshot=num_fewshot, dtype=cfg.model.dtype, device=device,
                    trust_remote_code=cfg.model.trust_remote_code, seed=cfg.seed, revision=cfg.model.revision)
    console.print(f"results: {out_dir / 'leaderboard.json'}")


@app.command("winrate")
def winrate(
    baseline: Annotated[str, typer.Option(help="Baseline model, or a JSONL/JSON file of its answers.")],
    prompts: Annotated[str, typer.Option(help="Prompts: JSON/JSONL (instruction|messages|prompt|question), "
                                              "a prepared data dir or a hub id.")],
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Model, or a JSONL/JSON file of its answers (default: config model).")] = None,
    judge: Annotated[Optional[str], typer.Option(
        help="http(s):// OpenAI-compatible API root, or a local judge model (config eval.judge).")] = None,
    judge_model: JudgeModelOpt = "default",
    judge_api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    limit: Annotated[Optional[int], typer.Option(help="Only the first N prompts.", callback=at_least(1))] = None,
    max_new_tokens: MaxTokensOpt = None,
    judge_max_tokens: Annotated[int, typer.Option(help="Judgment length limit.", callback=at_least(1))] = 1024,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the length-controlled error.",
                                           callback=at_least(1))] = 500,
    batch_size: BatchOpt = None,
    out: OutOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """AlpacaEval-style win rate vs a baseline: both orders, raw and length-controlled, with errors."""
    cfg = resolve(config, set_, model__name_or_path=model, eval__judge=judge, eval__batch_size=batch_size,
                  eval__max_new_tokens=max_new_tokens)
    if cfg.eval.judge is None:
        raise UserError("a judge is needed: --judge http://host:port/v1 (OpenAI-compatible) or a local model.")
    from selfplay.evals.generation import model_label
    from selfplay.evals.winrate import run_winrate

    out_dir = _out_dir(out, cfg.model.name_or_path, f"winrate-vs-{model_label(baseline)}")
    _save(cfg, out_dir, cfg.model.name_or_path, baseline)
    run_winrate(cfg.model.name_or_path, baseline, prompts, cfg.eval.judge, out_dir, judge_model=judge_model,
                judge_api_key_env=judge_api_key_env, limit=limit, max_new_tokens=cfg.eval.max_new_tokens,
                judge_max_tokens=judge_max_tokens, batch_size=cfg.eval.batch_size, bootstrap=bootstrap,
                model_cfg=cfg.model, seed=cfg.seed, remote=cfg.remote)
    console.print(f"results: {out_dir / 'winrate.json'}")


@app.command("task")
def task(
    model: ModelOpt = None,
    task_name: Annotated[Optional[str], typer.Option(
        "--task", "-t",
        help="A task of selfplay.envs.tasks: arith | gsm8k | math | hotpotqa | bamboogle | strategyqa | mmlu "
             "(default: config eval.task, 'auto' = from --data).")] = None,
    data: Annotated[Optional[str], typer.Option(
        help="Prepared data dir, records .jsonl, or a raw GSM8K/MATH/HotpotQA file or hub id.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split of --data (default: test, else train).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N examples.", callback=at_least(1))] = None,
    n: Annotated[int, typer.Option("--n", help="Samples per prompt (majority vote and pass@n).",
                                   callback=at_least(1))] = 1,
    temperature: Annotated[float, typer.Option(help="0 = greedy.", callback=at_least(0))] = 0.0,
    top_p: Annotated[float, typer.Option(callback=at_least(0, above=True, at_most=1))] = 1.0,
    max_new_tokens: MaxTokensOpt = None,
    batch_size: BatchOpt = None,
    out: OutOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Accuracy on a verifiable task (greedy by default; --n K adds majority vote and pass@K)."""
    cfg = resolve(config, set_, model__name_or_path=model, eval__task=task_name, eval__batch_size=batch_size,
                  eval__max_new_tokens=max_new_tokens)
    from selfplay.evals.task_eval import load_task_records, run_task_eval

    chosen, records = load_task_records(cfg.eval.task, data, limit=limit, split=split)
    out_dir = _out_dir(out, cfg.model.name_or_path, f"task-{chosen}")
    _save(cfg, out_dir, cfg.model.name_or_path)
    run_task_eval(cfg.model.name_or_path, chosen, records, out_dir, n=n, temperature=temperature, top_p=top_p,
                  max_new_tokens=cfg.eval.max_new_tokens,
                  batch_size=cfg.eval.batch_size, model_cfg=cfg.model, seed=cfg.seed)
    console.print(f"results: {out_dir / 'task_eval.json'}")


@app.command("multiturn")
def multiturn(
    model: ModelOpt = None,
    data: Annotated[Optional[str], typer.Option(help="Prepared data dir or records .jsonl with reference answers.")] = None,
    env: Annotated[Optional[str], typer.Option(help="gsm8k | math | arith | auto (from the data).")] = None,
    mode: Annotated[str, typer.Option(help="sequential | parallel | both")] = "both",
    turns: Annotated[Optional[int], typer.Option(help="Sequential turns (config rise.eval_turns).")] = None,
    context_window: Annotated[Optional[int], typer.Option(help="Most recent turns kept in the prompt.")] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Parallel samples of turn 1 (config rise.eval_parallel).")] = None,
    split: Annotated[str, typer.Option(help="Split of --data.")] = "test",
    limit: Annotated[Optional[int], typer.Option(help="Only the first N problems.", callback=at_least(1))] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature (config generate.temperature).")] = None,
    max_new_tokens: MaxTokensOpt = None,
    batch_size: BatchOpt = None,
    out: OutOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """RISE's multi-turn evaluation: accuracy per turn, with an oracle and by majority vote (sequential), and
    pass@n / maj@n of n first-turn samples (parallel)."""
    if mode not in ("sequential", "parallel", "both"):
        raise UserError(f"--mode must be sequential, parallel or both, got {mode!r}")
    cfg = resolve(config, set_, method="rise", model__name_or_path=model, rise__env=env, rise__eval_turns=turns,
                  rise__context_window=context_window, rise__eval_parallel=n, generate__temperature=temperature,
                  eval__max_new_tokens=max_new_tokens, eval__batch_size=batch_size)
    if data is None:
        raise UserError("--data is required: problems with reference answers (a prepared directory or .jsonl).")
    import dataclasses

    from selfplay.data.records import load_sft
    from selfplay.core.samplers import make_sampler
    from selfplay.evals.multiturn import print_multiturn
    from selfplay.stages.evaluate import multiturn_evaluation

    records = load_sft(data, split) if Path(data).is_dir() else load_sft(data)
    records = records[:limit] if limit is not None else records
    r = cfg.rise
    rise = dataclasses.replace(r, eval_turns=1 if mode == "parallel" else r.eval_turns,
                               eval_parallel=0 if mode == "sequential" else r.eval_parallel)
    cfg = dataclasses.replace(cfg, rise=rise)
    out_dir = _out_dir(out, cfg.model.name_or_path, "multiturn")
    _save(cfg, out_dir, cfg.model.name_or_path)
    sampler = make_sampler("hf", cfg.model.name_or_path, batch_size=cfg.eval.batch_size, model_cfg=cfg.model)
    metrics = multiturn_evaluation(cfg, sampler, records, out_dir)["multiturn"]
    print_multiturn(metrics)
    console.print(f"results: {out_dir / 'multiturn.json'}, plot: {out_dir / 'multiturn.png'}")


@app.command("agent")
def agent(
    model: ModelOpt = None,
    data: Annotated[Optional[str], typer.Option(help="Questions: prepared data dir, SFT .jsonl, or a HotpotQA/FireAct file.")] = None,
    task: Annotated[Optional[str], typer.Option(
        help="hotpotqa | bamboogle | strategyqa | mmlu | arith | gsm8k | math")] = None,
    tools: Annotated[Optional[str], typer.Option(
        help="The agent's tools, comma-separated: search, finish, calculator (default: the task's).")] = None,
    search: Annotated[Optional[str], typer.Option(help="replay (offline) | serpapi (SERPAPI_API_KEY)")] = None,
    search_sources: Annotated[Optional[str], typer.Option(
        help="Replay sources, comma-separated: FireAct trajectory files, query -> result caches.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Steps per episode at most (anchor: 11).")] = None,
    prompt_format: Annotated[Optional[str], typer.Option(help="alpaca (the anchor's) | chat")] = None,
    split: Annotated[str, typer.Option(help="Split of --data.")] = "test",
    limit: Annotated[Optional[int], typer.Option(help="Only the first N questions.", callback=at_least(1))] = None,
    ids_from: Annotated[Optional[Path], typer.Option(
        help="Only the questions that have a trajectory in this FireAct file (matched by question text).")] = None,
    max_new_tokens: MaxTokensOpt = None,
    batch_size: BatchOpt = None,
    out: OutOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """A tool-using agent on a QA task: EM, F1, steps per episode, share finished, tool errors (greedy)."""
    cfg = resolve(config, set_, method="spin-agent", model__name_or_path=model, agent__task=task,
                  agent__tools=comma_list(tools), agent__search=search,
                  agent__search_sources=comma_list(search_sources), agent__max_steps=max_steps,
                  generate__prompt_format=prompt_format, generate__max_new_tokens=max_new_tokens,
                  eval__batch_size=batch_size)
    if data is None:
        raise UserError("--data is required: the questions (a prepared directory, .jsonl, or a HotpotQA file).")
    from selfplay.data.records import convert_rows, is_prepared_dir, load_sft
    from selfplay.data.sources import read_rows
    from selfplay.evals.agent_eval import evaluate_agent, print_agent_metrics
    from selfplay.core.samplers import make_sampler

    if is_prepared_dir(data):
        records = load_sft(data, split if (Path(data) / f"{split}.jsonl").is_file() else "train")
    else:  # a raw file (HotpotQA, FireAct, ...) or a canonical .jsonl
        converted = convert_rows(read_rows(data, split), "auto", show_progress=False)
        records = [r for group in converted.groups for r in group]
    if ids_from is not None:
        from selfplay.methods.agent import read_trajectories

        asked = {t["prompt"][-1]["content"].strip() for t in read_trajectories(ids_from).values()}
        records = [r for r in records if r["messages"][-1]["content"].strip() in asked]
        if not records:
            raise UserError(f"no question of {data} has a trajectory in {ids_from}")
    records = records[:limit] if limit is not None else records
    out_dir = _out_dir(out, cfg.model.name_or_path, f"agent-{cfg.agent.task}")
    _save(cfg, out_dir)
    sampler = make_sampler("hf", cfg.model.name_or_path, batch_size=cfg.eval.batch_size, model_cfg=cfg.model)
    metrics = evaluate_agent(cfg, sampler, records, out_dir)
    print_agent_metrics(metrics)
    console.print(f"results: {out_dir / 'agent.json'}, trajectories: {out_dir / 'agent.jsonl'}")


# `selfplay eval compare RUN_DIR` lives with the loop's report (selfplay/cli/eval_compare.py).
eval_compare.register(app)

# `selfplay eval preference -m JUDGE --data PAIRS` (selfplay/cli/eval_preference.py).
from selfplay.cli import eval_preference  # noqa: E402

eval_preference.register(app)
