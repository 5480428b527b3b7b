"""``selfplay loop``: iterate generate → (rank) → pairs → train → eval, resumably."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from selfplay.cli.common import ConfigOpt, SetOpt, console, resolve

app = typer.Typer(help="Run self-play iterations (SPIN, SPPO, GPO, DPO, SFT, ...) into a resumable run directory.")


@app.callback(invoke_without_command=True)
def loop(
    method: Annotated[Optional[str], typer.Option(help="A registered method: spin | sppo | gpo | dpo | sft | ...")] = None,
    iters: Annotated[Optional[int], typer.Option(
        help="Number of iterations (0: evaluate the base model only).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Starting model: HF id, local path or alias.")] = None,
    data: Annotated[Optional[str], typer.Option(help="SFT data: prepared dir, file, hub id or synth:arith.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Run directory (resumes if it exists).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run (or resume) the self-play loop; prints a table per iteration and writes eval/report.md.

    One loop at a time per run directory: a second one on it is refused, naming the first's PID.
    """
    cfg = resolve(config, set_, method=method, loop__iters=iters, model__name_or_path=model, data__source=data,
                  run_dir=str(run_dir) if run_dir else None)
    from selfplay.stages.loop import run_loop

    rows = run_loop(cfg)
    console.print(f"[green]done[/green]: {len(rows) - 1} iteration(s); report in {Path(cfg.run_dir) / 'eval' / 'report.md'}")
