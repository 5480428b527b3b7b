"""``selfplay status RUN_DIR``: iteration and stage, units done / in progress / stale, what a rerun will do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from selfplay.cli.common import ConfigOpt, SetOpt

STYLE = {"done": "green", "resume": "yellow", "running": "cyan", "stale": "red", "todo": "white", "unused": "dim"}


def status(
    run_dir: Annotated[Path, typer.Argument(help="A `selfplay loop` run directory.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show a run's status. Fingerprints are computed as the loop computes them, from the run's saved
    config.yaml, or from --config/--set as a rerun would be given them (then "stale" = what that rerun redoes)."""
    from selfplay.stages.status import run_status

    cfg = None
    if config is not None or set_:
        from selfplay.cli.common import resolve

        cfg = resolve(config or run_dir / "config.yaml", set_, run_dir=str(run_dir))
    info = run_status(run_dir, cfg)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    _print(info)


def _print(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from selfplay.stages.status import cost_text

    out = Console()  # stdout: the status is the command's output
    lock = info["lock"]
    held = (f"[cyan]in use[/cyan] by PID {lock.get('pid')} ({lock.get('command', '?')}, since {lock.get('since', '?')})"
            if lock else "not in use (no process holds the run)")
    cur = info["current"]
    where = ("finished: every unit done" if cur is None else
             f"{cur['stage']} ({cur['state']})" if cur["iteration"] is None else
             f"iteration {cur['iteration']}, {cur['stage']} ({cur['state']})")
    out.print(f"[bold]{info['run_dir']}[/bold] · method {info['method']} · {info['iterations']} iteration(s) "
              f"· fingerprints from {info['config']}")
    out.print(f"lock: {held}")
    out.print(f"at: {where}")
    table = Table(title="units")
    for col in ("unit", "state", "on disk", "time, peak RSS", "a rerun"):
        table.add_column(col, overflow="fold")
    for u in info["units"]:
        style = STYLE.get(u["state"], "")
        table.add_row(u["unit"], f"[{style}]{u['state']}[/{style}]", u.get("detail", ""),
                      cost_text(u.get("resources") or {}), u["rerun"])
    out.print(table)
    if info.get("peak_unit"):
        top = info["peak_unit"]
        out.print(f"peak memory: {top['peak_rss_mb'] / 1024:.2f} GiB, in {top['unit']}")
    out.print(f"a rerun with this config: {info['rerun']}")
    row = info["last_row"]
    if row:
        shown = {k: v for k, v in row.items() if isinstance(v, (int, float, str)) and k not in ("model",)}
        out.print("last metrics row: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in shown.items()))
