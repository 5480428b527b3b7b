"""``selfplay rank``: score the K samples of each prompt with a judge (win-probability matrices)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from selfplay.cli.common import ConfigOpt, SetOpt, resolve
from selfplay.errors import UserError

app = typer.Typer(help="Judge the samples of each prompt: scores and K×K win matrices.", no_args_is_help=True)


@app.callback(invoke_without_command=True)
def rank(
    data: Annotated[Path, typer.Option("--data", "-d", help="Sample-set JSONL, or a generate directory of shards.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Scored JSONL (a directory when sharded).")],
    judge: Annotated[Optional[str], typer.Option(
        help="pairrm[:PATH] | gpm:PATH | reward-model:PATH | verifier:TASK|em|f1 (TASK: arith, gsm8k, math, "
             "hotpotqa, ...) | llm-judge:URL\\[#MODEL]"
    )] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per forward pass (LLM judge: parallel requests).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    data_frac: Annotated[Optional[int], typer.Option(help="Rank only shard K (0-based) of --num-fracs.")] = None,
    num_fracs: Annotated[Optional[int], typer.Option(help="Number of contiguous prompt shards.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Judge every prompt's samples in DATA and write scored records to OUT (resumable per prompt)."""
    if (data_frac is None) != (num_fracs is None):
        raise UserError("--data-frac and --num-fracs go together (e.g. --data-frac 0 --num-fracs 4)")
    cfg = resolve(config, set_, rank__judge=judge, rank__batch_size=batch_size, rank__device=device)
    from selfplay.core.launchers import several_processes

    if several_processes(cfg.launch) and data_frac is None:
        from selfplay.stages.parallel import produce
        from selfplay.stages.shards import ShardJob

        # Data-parallel judges: shards in OUT.shards/, merged into OUT by the main machine.
        dest = out / "rank.jsonl" if out.is_dir() else out
        produce("rank", cfg, ShardJob(data, Path(f"{dest}.shards")), dest)
        return
    from selfplay.stages.rank import run_rank

    shard = (data_frac, num_fracs) if data_frac is not None and num_fracs is not None else None
    run_rank(cfg, data, out, shard=shard)
