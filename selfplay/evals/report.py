"""Result tables (rich, on stdout: they are the command's output) and the MT-Bench radar plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _console() -> Any:
    # Made per call so it writes to the sys.stdout of the moment (the CLI test runner swaps it).
    from rich.console import Console

    return Console()


def _fmt(value: float | int | None, spec: str = "{:.2f}") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else spec.format(value)


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A plain rich table: first column left-aligned, the rest right-aligned."""
    from rich.table import Table

    # The title goes on its own line: as a Table title rich wraps it to the (often narrow) table's width.
    table = Table()
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console = _console()
    console.print(title, style="bold", highlight=False)
    console.print(table)


def print_mt_bench_table(summary: dict[str, Any]) -> None:
    """Per-category turn 1 / turn 2 / overall: scores (single) or win rates in % (pairwise)."""
    pairwise = summary["mode"] == "pairwise"
    blocks = [*summary["categories"].items(), ("all", summary["all"])]
    if pairwise:
        columns = ["category", "turn 1 win %", "turn 2 win %", "overall win %", "W/L/T", "errors"]
        rows = [[name, _fmt(b["turn_1"], "{:.1f}"), _fmt(b["turn_2"], "{:.1f}"), _fmt(b["overall"], "{:.1f}"),
                 f"{b['wins']}/{b['losses']}/{b['ties']}", str(b["errors"])] for name, b in blocks]
        title = f"MT-Bench pairwise: {summary['model']} vs baseline (ties count half)"
    else:
        columns = ["category", "turn 1", "turn 2", "overall", "judged", "errors"]
        rows = [[name, _fmt(b["turn_1"]), _fmt(b["turn_2"]), _fmt(b["overall"]), str(b["judged"]), str(b["errors"])]
                for name, b in blocks]
        title = f"MT-Bench: {summary['model']} (judge {summary['judge']}, score 1-10)"
    print_table(title, columns, rows)


def radar_plot(values: dict[str, float | None], path: Path, *, title: str, max_value: float) -> Path | None:
    """A radar (spider) chart of one value per category, like FastChat's MT-Bench plot.

    Categories without a value are drawn at 0; fewer than three categories make no radar, so None.
    """
    if len(values) < 3:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from selfplay.io import save_figure

    names = list(values)
    data = [values[n] if values[n] is not None else 0.0 for n in names]
    angles = [2 * math.pi * i / len(names) for i in range(len(names))]
    fig, ax = plt.subplots(figsize=(5.5, 5.5), subplot_kw={"projection": "polar"})
    ax.plot(angles + angles[:1], data + data[:1], marker="o")
    ax.fill(angles + angles[:1], data + data[:1], alpha=0.25)
    ax.set_xticks(angles, names)
    ax.set_ylim(0, max_value)
    ax.set_title(title, pad=20)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)  # atomic: a full disk leaves the previous plot, not half a PNG
    finally:
        plt.close(fig)
    return path
