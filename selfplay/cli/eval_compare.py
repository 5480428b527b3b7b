"""``selfplay eval compare RUN_DIR [RUN_DIR ...]``: loop runs' metrics across iterations, as tables and one plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def _load(run_dir: Path) -> tuple[list[dict[str, Any]], tuple]:
    """A run's iteration rows and its method's extra table columns."""
    import yaml

    from selfplay.errors import UserError
    from selfplay.io import read_jsonl
    from selfplay.methods import METHODS

    path = run_dir / "eval" / "iterations.jsonl"
    if not path.exists():
        raise UserError(f"{run_dir}: no eval/iterations.jsonl — is this a `selfplay loop` run directory that "
                        "evaluated at least its base model?")
    config = run_dir / "config.yaml"
    method = (yaml.safe_load(config.read_text()) or {}).get("method") if config.exists() else None
    return read_jsonl(path), (METHODS[method].columns if method in METHODS else ())


def register(app: typer.Typer) -> None:
    """Add the ``compare`` command to the ``eval`` sub-app."""

    @app.command("compare")
    def compare(
        run_dirs: Annotated[list[Path], typer.Argument(help="One or more `selfplay loop` run directories.")],
        out: Annotated[Optional[Path], typer.Option(
            "--out", "-o", help="Plot path (default: RUN/eval/plots/iterations.png for one run, "
                                "compare_<A>_<B>.png beside the first run for several).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the rows (with their intervals) and the paired differences as JSON.")] = False,
    ) -> None:
        """Compare base, iter 0, iter 1, ... of one run, or several runs side by side (e.g. SPIN against SFT), with
        95% intervals and, for several runs, paired differences (each run minus the first) per iteration."""
        from selfplay.errors import UserError
        from selfplay.stages.compare import Run, differences, print_comparison
        from selfplay.stages.report import plot_runs, print_iteration_table

        names = [d.resolve().name for d in run_dirs]
        if len(set(names)) != len(names):
            names = [str(d) for d in run_dirs]
        if len(set(names)) != len(names):
            raise UserError("the same run directory is given twice")
        loaded = {name: _load(d) for name, d in zip(names, run_dirs)}
        runs = {name: Run.load(d, rows) for (name, (rows, _)), d in zip(loaded.items(), run_dirs)}
        extra = tuple(dict.fromkeys(c for _, cols in loaded.values() for c in cols))
        if as_json:
            # One run: its rows (with "stats"); several: every run's rows and the paired differences.
            payload: Any = runs[names[0]].rows if len(runs) == 1 else {
                "runs": {name: run.rows for name, run in runs.items()}, "differences": differences(runs)}
            typer.echo(json.dumps(payload, indent=2))
            return
        if len(runs) == 1:
            print_iteration_table(runs[names[0]].rows, extra)
            plot = plot_runs({"": runs[names[0]].rows}, out or run_dirs[0] / "eval" / "plots" / "iterations.png", extra)
        else:
            print_comparison(runs, extra)
            default = run_dirs[0].resolve().parent / f"compare_{'_'.join(names)}.png"
            plot = plot_runs({name: run.rows for name, run in runs.items()}, out or default, extra)
        if plot:
            typer.echo(f"plot: {plot}")
