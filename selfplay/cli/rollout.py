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


CONVERT_FORMATS = ("selfplay", "rise")
EXPORT_FORMATS = ("rise", "fireact")


def _rows_file(path: Path) -> Path:
    """A directory of rollout shards merged into one file, or the file itself."""
    if path.is_dir():
        from selfplay.stages.shards import merge_shards

        return merge_shards(path)
    return path


def _check_choice(value: str, choices: tuple[str, ...], option: str) -> None:
    from selfplay.errors import suggest

    if value not in choices:
        raise UserError(f"{option} must be one of {', '.join(choices)}, got '{value}'.{suggest(value, choices)}")


@app.command()
def convert(
    episodes: Annotated[Path, typer.Argument(help="Episodes: our rollout JSONL/directory, or the RISE anchor's log JSON.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Training records JSONL {id, prompt, response, reward}.")],
    env: Annotated[Optional[str], typer.Option(help="The environment of the episodes (anchor logs do not say).")] = None,
    criteria: Annotated[Optional[str], typer.Option(help="all | better | best | success")] = None,
    remove_duplicates: Annotated[Optional[bool], typer.Option("--remove-duplicates/--keep-duplicates")] = None,
    only_success: Annotated[Optional[bool], typer.Option(
        "--only-success/--all-episodes", help="Keep only episodes that end correct (the anchor's --only_success).")] = None,
    shuffle: Annotated[Optional[bool], typer.Option("--shuffle/--no-shuffle")] = None,
    format_: Annotated[str, typer.Option("--format", help=(
        "selfplay (our JSONL) | rise (the anchor's finetune.json: ShareGPT with a per-message loss weight "
        "exp(reward / train.rwr_temperature))"))] = "selfplay",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Turn episodes into reward-weighted training turns for `selfplay train --method rise`."""
    _check_choice(format_, CONVERT_FORMATS, "--format")
    cfg = resolve(config, set_, method="rise", rise__env=env, rise__criteria=criteria,
                  rise__remove_duplicates=remove_duplicates, rise__only_success=only_success, rise__shuffle=shuffle)
    from selfplay.io import write_json, write_jsonl
    from selfplay.methods.rise import anchor_finetune_rows, build_rise_examples, read_episodes

    rows = read_episodes(_rows_file(episodes))
    if cfg.rise.env == "auto" and not all(r.get("env") or r.get("prompt") for r in rows):
        raise UserError("these episodes do not name their environment (an anchor log): pass --env gsm8k|math|arith")
    records, stats = build_rise_examples(rows, 0, cfg)
    if not records:
        raise UserError(f"no training turns under criteria '{cfg.rise.criteria}' ({stats})")
    if format_ == "rise":
        write_json(out, anchor_finetune_rows(records, cfg.train.rwr_temperature))
    else:
        write_jsonl(out, records)
    skipped = f", {stats['skipped_unsolved']} unsolved skipped" if cfg.rise.only_success else ""
    blank = f", {stats['blank_answers_not_trained']} blank answers not trained" if stats["blank_answers_not_trained"] else ""
    console.print(f"{stats['episodes']} episodes ({stats['solved']} solved{skipped}) -> {len(records)} training turns "
                  f"(per turn {stats['kept_per_turn']}{blank}), criteria {cfg.rise.criteria} -> {out}")


@app.command()
def export(
    rollouts: Annotated[Path, typer.Argument(help="Our rollout output: a directory of shards or a merged JSONL.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The JSON file to write.")],
    format_: Annotated[str, typer.Option("--format", help=(
        "rise: RISE episodes as the anchor's rollout log (workflow_convert.py reads it) | fireact: agent "
        "trajectories as FireAct's output (its convert_alpaca.py / convert_dpo_data.py read it)"))],
    sample: Annotated[int, typer.Option(help="fireact: which trajectory of a question played several times.")] = 0,
) -> None:
    """Write our episodes or trajectories in an anchor's own file format."""
    _check_choice(format_, EXPORT_FORMATS, "--format")
    from selfplay.io import write_json

    path = _rows_file(rollouts)
    if format_ == "rise":
        from selfplay.methods.rise import anchor_log, read_episodes

        write_json(out, anchor_log(read_episodes(path)))
        console.print(f"episodes -> the anchor's log {out}")
        return
    from selfplay.methods.agent import fireact_export

    if path.suffix != ".jsonl":
        raise UserError(f"{path}: expected our agent rollout JSONL (or its shard directory)")
    exported, stats = fireact_export(path, sample)
    if not exported:
        raise UserError(f"no finished trajectory to export ({stats})")
    write_json(out, exported)
    note = (f"; {stats['question_not_on_line_4']} have their question elsewhere than traj_by_line[3], where the "
            "anchor's convert scripts read it") if stats["question_not_on_line_4"] else ""
    console.print(f"{stats['exported']} finished trajectories ({stats['unfinished_skipped']} unfinished skipped) "
                  f"-> {out}{note}")


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
