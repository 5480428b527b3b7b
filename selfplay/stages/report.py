"""Per-iteration table, metrics JSONL, markdown report and plot for a loop run (also `selfplay eval compare`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfplay.io import atomic_write_text, write_jsonl

# (key, column title, format) in display order; rows lacking a key show "–".
COLUMNS = [
    ("iteration", "iter", "{}"),
    ("real_loglik", "real loglik", "{:.4f}"),
    ("spin_margin", "SPIN margin", "{:+.2f}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("mean_score", "judge score", "{:.3f}"),
    ("sample_accuracy", "sample acc", "{:.3f}"),
    ("sample_score", "sample score", "{:.3f}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("train_reward_acc", "train acc", "{:.2f}"),
    ("pairs", "pairs", "{}"),
    ("iteration_seconds", "gen+train s", "{:.0f}"),
    ("seconds", "eval s", "{:.0f}"),
]


def _cells(row: dict[str, Any], keys: list[tuple[str, str, str]]) -> list[str]:
    return [fmt.format(row[k]) if row.get(k) is not None else "–" for k, _, fmt in keys]


def _present(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]


def print_iteration_table(rows: list[dict[str, Any]]) -> None:
    """The table a user watches grow: one line per evaluated model (base, iter 0, ...)."""
    from rich.table import Table

    from selfplay.cli.common import console

    cols = _present(rows)
    table = Table(title="self-play progress (held-out prompts)")
    for _, title, _ in cols:
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(*_cells(r, cols))
    console.print(table)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = _present(rows)
    lines = ["| " + " | ".join(t for _, t, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cells(r, cols)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_iterations(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """One panel per metric that has values, x = base, 0, 1, ..."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [c for c in _present(rows) if c[0] in {"real_loglik", "spin_margin", "accuracy", "mean_score",
                                                      "sample_accuracy", "sample_score", "train_loss",
                                                      "train_reward_acc"}]
    if not metrics:
        return None
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    labels = [str(r["iteration"]) for r in rows]
    for ax, (key, title, _) in zip(axes.flat, metrics):
        xs = [i for i, r in enumerate(rows) if r.get(key) is not None]
        ax.plot(xs, [rows[i][key] for i in xs], marker="o")
        ax.set_xticks(range(len(rows)), labels)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """run_dir/eval/iterations.jsonl, run_dir/eval/report.md and run_dir/eval/plots/iterations.png."""
    eval_dir = Path(run_dir) / "eval"
    write_jsonl(eval_dir / "iterations.jsonl", rows)
    plot = plot_iterations(rows, eval_dir / "plots" / "iterations.png")
    text = f"# selfplay run: {Path(run_dir).name}\n\n" + markdown_table(rows)
    if plot:
        text += "\n![iterations](plots/iterations.png)\n"
    atomic_write_text(eval_dir / "report.md", text)
    return eval_dir / "report.md"
