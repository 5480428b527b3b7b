"""``selfplay rollout``: RISE's multi-turn self-correction episodes; ``rollout convert`` makes training turns."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from selfplay.cli.common import ConfigOpt, SetOpt, comma_list, console, resolve
from selfplay.errors import UserError

app = typer.Typer(help="Multi-turn episodes in an answer environment (RISE); `rollout convert` builds "
                       "reward-weighted training turns from them.", no_args_is_help=True)


@app.callback(invoke_without_command=True)
def rollout(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The policy: directory, hub id or alias.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Prepared data directory or SFT JSONL.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory of episode shards.")] = None,
    env: Annotated[Optional[str], typer.Option(help="gsm8k | math | arith | auto (from the data).")] = None,
    max_turns: Annotated[Optional[int], typer.Option(help="Turns per episode at most (stops when correct).")] = None,
    num_samples: Annotated[Optional[str], typer.Option(help="Candidates per turn, e.g. 1,16 (the last repeats).")] = None,
    models: Annotated[Optional[str], typer.Option(
        help="Model per turn, e.g. policy,http://127.0.0.1:8000/v1#gpt-3.5-turbo (policy | path | alias | URL).")] = None,
    temperature: Annotated[Optional[float], typer.Option()] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option()] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    split: Annotated[Optional[str], typer.Option(help="Split of a prepared data directory.")] = None,
    data_frac: Annotated[Optional[int], typer.Option(help="Only slice K (0-based) of the shuffled problems.")] = None,
    num_fracs: Annotated[Optional[int], typer.Option(help="With --data-frac: number of near-equal slices.")] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Drop problems whose reference has no parsable answer.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Play RISE episodes for every problem of DATA into OUT/shard-K-of-F.jsonl (rerun resumes)."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = resolve(config, set_, method="rise", model__name_or_path=model, data__source=data, data__split=split,
                  rise__env=env, rise__max_turns=max_turns, rise__num_samples=comma_list(num_samples, int),
                  rise__models=comma_list(models, str), generate__temperature=temperature,
                  generate__max_new_tokens=max_new_tokens, generate__seed=seed, generate__data_frac=data_frac,
                  generate__num_fracs=num_fracs)
    if out is None:
        raise UserError("--out is required: the directory to write the episode shards into.")
    if data is None and config is None:
        raise UserError("--data is required: a prepared data directory or a canonical SFT JSONL file.")
    from selfplay.stages.parallel import run_stage
    from selfplay.stages.shards import ShardJob

    # Shards over launch's workers; an explicit --data-frac plays that one slice here.
    job = ShardJob(Path(cfg.data.source), out, cfg.model.name_or_path, cfg.data.split, skip_invalid)
    run_stage("rollout", cfg, job)


@app.command()
def convert(
    episodes: Annotated[Path, typer.Argument(help="Episodes: our rollout JSONL/directory, or the RISE anchor's log JSON.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Training records JSONL {id, prompt, response, reward}.")],
    env: Annotated[Optional[str], typer.Option(help="The environment of the episodes (anchor logs do not say).")] = None,
    criteria: Annotated[Optional[str], typer.Option(help="all | better | best | success")] = None,
    remove_duplicates: Annotated[Optional[bool], typer.Option("--remove-duplicates/--keep-duplicates")] = None,
    shuffle: Annotated[Optional[bool], typer.Option("--shuffle/--no-shuffle")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Turn episodes into reward-weighted training turns for `selfplay train --method rise`."""
    cfg = resolve(config, set_, method="rise", rise__env=env, rise__criteria=criteria,
                  rise__remove_duplicates=remove_duplicates, rise__shuffle=shuffle)
    from selfplay.io import write_jsonl
    from selfplay.methods.rise import build_rise_examples, read_episodes

    path = episodes
    if path.is_dir():
        from selfplay.stages.shards import merge_shards

        path = merge_shards(path)
    rows = read_episodes(path)
    if cfg.rise.env == "auto" and not all(r.get("env") or r.get("prompt") for r in rows):
        raise UserError("these episodes do not name their environment (an anchor log): pass --env gsm8k|math|arith")
    records, stats = build_rise_examples(rows, 0, cfg)
    if not records:
        raise UserError(f"no training turns under criteria '{cfg.rise.criteria}' ({stats})")
    write_jsonl(out, records)
    console.print(f"{stats['episodes']} episodes ({stats['solved']} solved) -> {len(records)} training turns "
                  f"(per turn {stats['kept_per_turn']}), criteria {cfg.rise.criteria} -> {out}")


@app.command("agent")
def agent(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The agent: directory, hub id or alias.")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Questions: prepared data directory or SFT JSONL.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory of trajectory shards.")] = None,
    task: Annotated[Optional[str], typer.Option(
        help="hotpotqa | bamboogle | strategyqa | mmlu | arith | gsm8k | math")] = None,
    tools: Annotated[Optional[str], typer.Option(
        help="The agent's tools, comma-separated: search, finish, calculator (default: the task's).")] = None,
    search: Annotated[Optional[str], typer.Option(help="replay (offline) | serpapi (SERPAPI_API_KEY)")] = None,
    search_sources: Annotated[Optional[str], typer.Option(
        help="Replay sources, comma-separated: FireAct trajectory files, query -> result caches.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Steps per episode at most (anchor: 11).")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Trajectories per question.")] = None,
    prompt_format: Annotated[Optional[str], typer.Option(help="alpaca (the anchor's) | chat")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split of a prepared data directory.")] = None,
    data_frac: Annotated[Optional[int], typer.Option(help="Only slice K (0-based) of the shuffled questions.")] = None,
    num_fracs: Annotated[Optional[int], typer.Option(help="With --data-frac: number of near-equal slices.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Play ReAct trajectories with tools for every question of DATA into OUT/shard-K-of-F.jsonl (FireAct fields)."""
    cfg = resolve(config, set_, method="spin-agent", model__name_or_path=model, data__source=data,
                  data__split=split, agent__task=task, agent__tools=comma_list(tools, str), agent__search=search,
                  agent__search_sources=comma_list(search_sources, str), agent__max_steps=max_steps,
                  agent__samples=samples, generate__prompt_format=prompt_format, generate__data_frac=data_frac,
                  generate__num_fracs=num_fracs)
    if out is None:
        raise UserError("--out is required: the directory to write the trajectory shards into.")
    if data is None and config is None:
        raise UserError("--data is required: a prepared data directory or a canonical SFT JSONL file.")
    from selfplay.stages.parallel import run_stage
    from selfplay.stages.shards import ShardJob

    # Shards over launch's workers; an explicit --data-frac plays that one slice here.
    run_stage("agent-rollout", cfg, ShardJob(Path(cfg.data.source), out, cfg.model.name_or_path, cfg.data.split))


@app.command("agent-pairs")
def agent_pairs(
    first: Annotated[Path, typer.Argument(help="Trajectories (FireAct/anchor JSON or our JSONL).")],
    second: Annotated[Path, typer.Argument(help="Trajectories of the same questions from another run.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Pairs JSONL for `selfplay train --method agent-dpo`.")],
) -> None:
    """DPO pairs between two trajectory files: per question whose rewards differ, the rewarded one is chosen."""
    from selfplay.io import write_jsonl
    from selfplay.methods.agent import dpo_pairs_from_files

    pairs, stats = dpo_pairs_from_files(first, second)
    if not pairs:
        raise UserError(f"no question has trajectories with different rewards in both files ({stats})")
    write_jsonl(out, pairs)
    console.print(f"{stats['common_questions']} common questions -> {len(pairs)} pairs -> {out}")
