"""Per-iteration table, metrics JSONL, markdown report and plot for a loop run (also `selfplay eval compare`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfplay.io import atomic_write_text, save_figure, write_jsonl

Column = tuple[str, str, str]  # (row key, column title, format)

# (key, column title, format) in display order; rows lacking a key show "–".
COLUMNS: list[Column] = [
    ("iteration", "iter", "{}"),
    ("real_loglik", "real loglik", "{:.4f}"),
    ("spin_margin", "SPIN margin", "{:+.2f}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("mean_score", "judge score", "{:.3f}"),
    ("sample_accuracy", "sample acc", "{:.3f}"),
    ("sample_score", "sample score", "{:.3f}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("train_reward_acc", "train acc", "{:.2f}"),
    ("pairs", "examples", "{}"),
    ("iteration_seconds", "gen+train s", "{:.0f}"),
    ("seconds", "eval s", "{:.0f}"),
]


# Columns that are metrics of the model (plotted), as opposed to counts and timings.
PLOTTED = {"real_loglik", "spin_margin", "accuracy", "mean_score", "sample_accuracy", "sample_score",
           "train_loss", "train_reward_acc"}


def _cells(row: dict[str, Any], keys: list[Column]) -> list[str]:
    return [fmt.format(row[k]) if row.get(k) is not None else "–" for k, _, fmt in keys]


def _present(rows: list[dict[str, Any]], extra: tuple[Column, ...] = ()) -> list[Column]:
    """The columns with a value in some row: the shared ones, a method's own before the training columns."""
    at = next(i for i, c in enumerate(COLUMNS) if c[0] == "train_loss")
    columns = COLUMNS[:at] + list(extra) + COLUMNS[at:]
    return [c for c in columns if any(r.get(c[0]) is not None for r in rows)]


def print_iteration_table(rows: list[dict[str, Any]], extra: tuple[Column, ...] = ()) -> None:
    """The table a user watches grow: one line per evaluated model (base, iter 0, ...)."""
    from rich.table import Table

    from selfplay.progress import console

    cols = _present(rows, extra)
    table = Table(title="self-play progress (held-out prompts)")
    for _, title, _ in cols:
        table.add_column(title, justify="right", overflow="fold")  # a narrow terminal wraps, never elides digits
    for r in rows:
        table.add_row(*_cells(r, cols))
    console.print(table)


def markdown_table(rows: list[dict[str, Any]], extra: tuple[Column, ...] = ()) -> str:
    cols = _present(rows, extra)
    lines = ["| " + " | ".join(t for _, t, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cells(r, cols)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_iterations(rows: list[dict[str, Any]], path: Path, extra: tuple[Column, ...] = ()) -> Path | None:
    """One panel per metric that has values, x = base, 0, 1, ..."""
    return plot_runs({"": rows}, path, extra)


def plot_runs(runs: dict[str, list[dict[str, Any]]], path: Path, extra: tuple[Column, ...] = ()) -> Path | None:
    """One panel per metric, one line per run (a legend when there are several), x = base, 0, 1, ..."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = [r for rows in runs.values() for r in rows]
    plotted = PLOTTED | {c[0] for c in extra}
    metrics = [c for c in _present(every, extra) if c[0] in plotted]
    if not metrics:
        return None
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    longest = max(runs.values(), key=len)
    labels = [str(r["iteration"]) for r in longest]
    for ax, (key, title, _) in zip(axes.flat, metrics):
        for name, rows in runs.items():
            xs = [i for i, r in enumerate(rows) if r.get(key) is not None]
            ax.plot(xs, [rows[i][key] for i in xs], marker="o", label=name or None)
        ax.set_xticks(range(len(longest)), labels)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)  # atomic: a full disk leaves the previous plot, not half a PNG
    finally:
        plt.close(fig)
    return path


def write_report(run_dir: Path, rows: list[dict[str, Any]], extra: tuple[Column, ...] = ()) -> Path:
    """run_dir/eval/iterations.jsonl, run_dir/eval/report.md and run_dir/eval/plots/iterations.png."""
    eval_dir = Path(run_dir) / "eval"
    write_jsonl(eval_dir / "iterations.jsonl", rows)
    plot = plot_iterations(rows, eval_dir / "plots" / "iterations.png", extra)
    text = f"# selfplay run: {Path(run_dir).name}\n\n" + markdown_table(rows, extra)
    if plot:
        text += "\n![iterations](plots/iterations.png)\n"
    atomic_write_text(eval_dir / "report.md", text)
    return eval_dir / "report.md"


def print_comparison(runs: dict[str, list[dict[str, Any]]], extra: tuple[Column, ...] = ()) -> None:
    """One table per metric: a row per iteration, a column per run (``selfplay eval compare A B``)."""
    from rich.table import Table

    from selfplay.progress import console

    every = [r for rows in runs.values() for r in rows]
    iterations = [r["iteration"] for r in max(runs.values(), key=len)]
    for key, title, fmt in _present(every, extra)[1:]:
        table = Table(title=title)
        table.add_column("iter", justify="right")
        for name in runs:
            table.add_column(name, justify="right")
        for it in iterations:
            cells = []
            for rows in runs.values():
                row = next((r for r in rows if r["iteration"] == it), {})
                cells.append(fmt.format(row[key]) if row.get(key) is not None else "–")
            table.add_row(str(it), *cells)
        console.print(table)
