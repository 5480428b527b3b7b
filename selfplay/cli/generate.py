"""``selfplay generate``: sample completions for SFT prompts into resumable shards; ``merge`` joins them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from selfplay.cli.common import ConfigOpt, SetOpt, console, resolve
from selfplay.errors import UserError

app = typer.Typer(
    help="Sample completions for every prompt (resumable, shardable); `generate merge` joins shards.",
    no_args_is_help=True,
)


@app.callback(invoke_without_command=True)
def generate(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Local HF directory, hub id, or the offline alias smollm2-135m-instruct.")] = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", "-d", help="Prepared data directory or canonical SFT JSONL.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory of shard files.")] = None,
    n: Annotated[Optional[int], typer.Option(help="Samples per prompt.")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature (0 = greedy).")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling mass.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="New tokens per sample at most.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the prompt shuffle and of every sample.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Prompts per batch (hf backend; n rows each).")] = None,
    prompt_format: Annotated[Optional[str], typer.Option(help="chat | spin-instruct | alpaca")] = None,
    backend: Annotated[Optional[str], typer.Option(help="hf | vllm")] = None,
    data_frac: Annotated[Optional[int], typer.Option(
        help="Generate only slice K (0-based) of the shuffled prompts.")] = None,
    frac_len: Annotated[Optional[int], typer.Option(help="With --data-frac: prompts per slice.")] = None,
    num_fracs: Annotated[Optional[int], typer.Option(help="With --data-frac: number of near-equal slices.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split of a prepared data directory.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Generate N samples per prompt of DATA with MODEL into OUT/shard-K-of-F.jsonl (rerun resumes)."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = resolve(config, set_, model__name_or_path=model, data__source=data, data__split=split,
                  generate__n=n, generate__temperature=temperature, generate__top_p=top_p,
                  generate__max_new_tokens=max_new_tokens, generate__seed=seed, generate__batch_size=batch_size,
                  generate__prompt_format=prompt_format, generate__backend=backend, generate__data_frac=data_frac,
                  generate__frac_len=frac_len, generate__num_fracs=num_fracs)
    if out is None:
        raise UserError("--out is required: the directory to write the shard files into.")
    if data is None and config is None:
        raise UserError("--data is required: a prepared data directory or a canonical SFT JSONL file.")
    from selfplay.stages.parallel import run_stage
    from selfplay.stages.shards import ShardJob

    # Shards over launch's workers; an explicit --data-frac generates that one slice here.
    run_stage("generate", cfg, ShardJob(Path(cfg.data.source), out, cfg.model.name_or_path, cfg.data.split))


@app.command()
def merge(
    gen_dir: Annotated[Path, typer.Argument(help="A `selfplay generate --out` directory.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Merged JSONL (default: <GEN_DIR>.jsonl).")] = None,
) -> None:
    """Join all shards of GEN_DIR into one JSONL in data order (fails if a shard is missing or incomplete)."""
    from selfplay.stages.shards import merge_shards

    dest = merge_shards(gen_dir, out)
    console.print(f"merged {gen_dir} into {dest}")
    typer.echo(str(dest))
