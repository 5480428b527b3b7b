"""Per-iteration table, metrics JSONL, markdown report and plot for a loop run (also `selfplay eval compare`).

Each held-out metric with per-prompt values (:mod:`selfplay.evals.per_prompt`) is shown with its 95%
interval, and each task metric with its paired change against the base model in a "Δ … vs base" column;
a change whose interval includes 0 is marked ``n.s.`` (and dimmed in the terminal), never as a gain. Rows
of runs evaluated before per-prompt files existed are shown without intervals, and the table says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfplay.evals.per_prompt import METRICS, PER_PROMPT_FILE, Table, attach_stats, read_per_prompt
from selfplay.evals.stats_format import change_text, with_interval
from selfplay.io import atomic_write_text, save_figure, write_jsonl
from selfplay.loop_stop import final_text, read_final
from selfplay.runs import RunState

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
    ("validation", "validation", "{:.4f}"),  # loop.stop_patience: the stop metric on the validation split
    ("kept", "kept", "{}"),  # loop.select: best: the evaluation inside the iteration whose weights were kept
    ("pairs", "examples", "{}"),
    ("iteration_seconds", "gen+train s", "{:.0f}"),
    ("seconds", "eval s", "{:.0f}"),
]


# Columns that are metrics of the model (plotted), as opposed to counts and timings.
PLOTTED = {"real_loglik", "spin_margin", "accuracy", "mean_score", "sample_accuracy", "sample_score",
           "train_loss", "train_reward_acc"}

INTERVALS_NOTE = ("95% intervals: Wilson for 0/1 accuracies, bootstrap over prompts (10,000 resamples, seeded) "
                  "otherwise; Δ: paired bootstrap against the base model on the same prompts; "
                  "n.s.: the interval includes 0 (no detectable change)")
NO_INTERVALS_NOTE = "no per-prompt results saved for these rows (evaluated by an older version): no intervals"


def iteration_eval_dir(run_dir: Path, iteration: str | int) -> Path:
    """Where the loop evaluates the model of a row: ``eval/base`` or ``iter_k/eval``."""
    return Path(run_dir) / "eval" / "base" if iteration == "base" else Path(run_dir) / f"iter_{iteration}" / "eval"


def run_tables(run_dir: Path, rows: list[dict[str, Any]]) -> list[Table | None]:
    """Each row's per-prompt results (None where the run has none)."""
    return [read_per_prompt(iteration_eval_dir(run_dir, r["iteration"]) / PER_PROMPT_FILE) for r in rows]


def with_stats(run_dir: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with ``stats`` (intervals, paired changes vs the base row) from the run's per-prompt files."""
    return attach_stats(rows, run_tables(run_dir, rows))


@dataclass
class _Cells:
    """One rendered column: its title, a text per row, and a verdict per row (changes only)."""

    title: str
    texts: list[str]
    verdicts: list[bool | None]


def present_columns(rows: list[dict[str, Any]], extra: tuple[Column, ...] = ()) -> list[Column]:
    """The columns with a value in some row: the shared ones, a method's own before the training columns."""
    at = next(i for i, c in enumerate(COLUMNS) if c[0] == "train_loss")
    columns = COLUMNS[:at] + list(extra) + COLUMNS[at:]
    return [c for c in columns if any(r.get(c[0]) is not None for r in rows)]


def _stats(row: dict[str, Any], key: str) -> dict[str, Any] | None:
    return (row.get("stats") or {}).get(key)


def common_n(rows: list[dict[str, Any]]) -> int | None:
    """The number of held-out prompts the rows were evaluated on (the rows' ``n``; else the most frequent
    sample count of their metrics); None without either."""
    counts = Counter(r["n"] for r in rows if isinstance(r.get("n"), int))
    if not counts:
        counts = Counter(s["n"] for r in rows for s in (r.get("stats") or {}).values())
    return counts.most_common(1)[0][0] if counts else None


def _n_suffix(rows: list[dict[str, Any]], key: str, n: int | None) -> str:
    """`` (n=46)`` when a metric's sample count differs from the table's (e.g. problems with a parsable answer)."""
    ns = sorted({s["n"] for r in rows if (s := _stats(r, key))})
    if not ns or ns == [n]:
        return ""
    return f" (n={ns[0]})" if len(ns) == 1 else f" (n={ns[0]}–{ns[-1]})"


def _columns(rows: list[dict[str, Any]], extra: tuple[Column, ...], sep: str) -> list[list[_Cells]]:
    """Every column to show, rendered, in units kept side by side: a metric with its interval (and, for a
    task metric, its "Δ … vs base" column), or a plain column (counts, timings, training metrics)."""
    n = common_n(rows)
    out: list[list[_Cells]] = []
    for key, title, fmt in present_columns(rows, extra):
        if key not in METRICS:
            out.append([_Cells(title, [fmt.format(r[key]) if r.get(key) is not None else "–" for r in rows],
                               [None] * len(rows))])
            continue
        unit = [_Cells(title + _n_suffix(rows, key, n), [with_interval(r.get(key), _stats(r, key), fmt, sep)
                                                          for r in rows], [None] * len(rows))]
        changes = [change_text(_stats(r, key), fmt, sep) for r in rows]
        if METRICS[key].task and any(v is not None for _, v in changes):
            unit.append(_Cells(f"Δ {title} vs base", [t for t, _ in changes], [v for _, v in changes]))
        out.append(unit)
    return out


def _title(rows: list[dict[str, Any]]) -> str:
    n = common_n(rows)
    return f"held-out prompts, n = {n}" if n is not None else "held-out prompts"


def _width(col: _Cells) -> int:
    """The narrowest the column can be without breaking a word: its longest cell line or title word."""
    lines = [line for t in col.texts for line in t.split("\n")]
    return max([len(x) for x in lines] + [len(w) for w in col.title.split()])


def _pack(units: list[list[_Cells]], width: int) -> list[list[_Cells]]:
    """Split the column units after the first (iter) into tables that fit ``width`` terminal columns, each
    table repeating the first column (a box table spends 3 characters per column and 1 at its edge)."""
    (first,), rest = units[0], units[1:]
    start = _width(first) + 4
    groups: list[list[_Cells]] = [[]]
    used = start
    for unit in rest:
        need = sum(_width(c) + 3 for c in unit)
        if groups[-1] and used + need > width:
            groups.append([])
            used = start
        groups[-1].extend(unit)
        used += need
    return [[first, *g] for g in groups]


def print_iteration_table(rows: list[dict[str, Any]], extra: tuple[Column, ...] = (), width: int | None = None,
                          notes: tuple[str, ...] = ()) -> None:
    """The table a user watches grow: one line per evaluated model (base, iter 0, ...), split into several
    tables when the columns do not fit the terminal; ``notes`` (e.g. how to read the loss) below it."""
    from rich.table import Table
    from rich.text import Text

    from selfplay.progress import console

    tables = _pack(_columns(rows, extra, "\n"), width or console.width)
    for i, group in enumerate(tables):
        # Title and note on their own lines: as a Table's title/caption rich wraps them to the table's width.
        console.print(f"self-play progress ({_title(rows)})" + (" (continued)" if i else ""), style="bold",
                      highlight=False)
        table = Table()
        for col in group:
            table.add_column(col.title, justify="right", overflow="fold")  # a narrow terminal wraps, never elides
        for r in range(len(rows)):
            table.add_row(*(Text(c.texts[r], style=_style(c.verdicts[r])) for c in group))
        console.print(table)
    console.print(INTERVALS_NOTE if any(r.get("stats") for r in rows) else NO_INTERVALS_NOTE, style="dim",
                  highlight=False)
    for note in notes:
        console.print(note, style="dim", highlight=False)


def _style(verdict: bool | None) -> str:
    """A significant change in bold (either sign), one whose interval includes 0 dimmed; levels plain."""
    return "" if verdict is None else ("bold" if verdict else "dim")


def markdown_table(rows: list[dict[str, Any]], extra: tuple[Column, ...] = (), notes: tuple[str, ...] = ()) -> str:
    """The iteration table in markdown: values with intervals, Δ columns (significant ones in bold, the
    others marked n.s.), preceded by a line with n and how the intervals are computed, ``notes`` after it."""
    cols = [c for unit in _columns(rows, extra, " ") for c in unit]
    note = INTERVALS_NOTE if any(r.get("stats") for r in rows) else NO_INTERVALS_NOTE
    lines = [f"{_title(rows).capitalize()}. {note}.", "",
             "| " + " | ".join(c.title for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in range(len(rows)):
        lines.append("| " + " | ".join(f"**{c.texts[r]}**" if c.verdicts[r] else c.texts[r] for c in cols) + " |")
    lines += [f"\n{note}." for note in notes]
    return "\n".join(lines) + "\n"


def plot_iterations(rows: list[dict[str, Any]], path: Path, extra: tuple[Column, ...] = ()) -> Path | None:
    """One panel per metric that has values, x = base, 0, 1, ..."""
    return plot_runs({"": rows}, path, extra)


def plot_runs(runs: dict[str, list[dict[str, Any]]], path: Path, extra: tuple[Column, ...] = ()) -> Path | None:
    """One panel per metric, one line per run (a legend when there are several), x = base, 0, 1, ...; a
    shaded band and error bars show each value's 95% interval where the rows have one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = [r for rows in runs.values() for r in rows]
    plotted = PLOTTED | {c[0] for c in extra}
    metrics = [c for c in present_columns(every, extra) if c[0] in plotted]
    if not metrics:
        return None
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    longest = max(runs.values(), key=len)
    labels = [str(r["iteration"]) for r in longest]
    n = common_n(every)
    for ax, (key, title, _) in zip(axes.flat, metrics):
        for name, rows in runs.items():
            xs = [i for i, r in enumerate(rows) if r.get(key) is not None]
            ys = [rows[i][key] for i in xs]
            line, = ax.plot(xs, ys, marker="o", label=name or None)
            ci = [(i, _stats(rows[i], key)) for i in xs if _stats(rows[i], key)]
            if ci:
                cx = [i for i, _ in ci]
                lo, hi = [s["lo"] for _, s in ci], [s["hi"] for _, s in ci]
                ax.fill_between(cx, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
                # A percentile interval need not contain its estimate (skewed resamples): clip the bars at 0.
                below = [max(0.0, rows[i][key] - low) for i, low in zip(cx, lo)]
                above = [max(0.0, high - rows[i][key]) for i, high in zip(cx, hi)]
                ax.errorbar(cx, [rows[i][key] for i in cx], yerr=[below, above], fmt="none",
                            ecolor=line.get_color(), capsize=3, linewidth=1)
        ax.set_xticks(range(len(longest)), labels)
        ax.set_title(title + (" (95% CI)" if any(_stats(r, key) for r in every) else ""), fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=8)
    if n is not None:
        fig.suptitle(f"held-out prompts: n = {n}; bands and bars: 95% intervals", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96) if n is not None else None)
    try:
        save_figure(fig, path, dpi=110)  # atomic: a full disk leaves the previous plot, not half a PNG
    finally:
        plt.close(fig)
    return path


def costs_table(run_dir: Path) -> str:
    """The report's "time and peak memory by unit" section, from state.json (empty before any unit recorded them)."""
    state = RunState(run_dir, follower=True)
    lines = []
    for unit in state.units:
        res = state.resources(unit)
        if not res:
            continue
        own = f"{res['peak_rss_mb'] / 1024:.2f}" if "peak_rss_mb" in res else "–"
        workers = f"{res['children_peak_rss_mb'] / 1024:.2f}" if "children_peak_rss_mb" in res else "–"
        lines.append(f"| {unit} | {res.get('seconds', 0):.1f} | {own} | {workers} |")
    if not lines:
        return ""
    return ("\n## Time and peak memory by unit\n\nPeak RSS of the loop's process during the unit, and of its "
            "worker processes where they did the work (GiB = 2^30 bytes).\n\n"
            "| unit | seconds | peak RSS GiB | workers' peak RSS GiB |\n|---|---|---|---|\n" + "\n".join(lines) + "\n")


def write_report(run_dir: Path, rows: list[dict[str, Any]], extra: tuple[Column, ...] = (),
                 notes: tuple[str, ...] = ()) -> Path:
    """run_dir/eval/iterations.jsonl, run_dir/eval/report.md and report.html (``notes`` under their tables) and
    plots/iterations.png."""
    from selfplay.htmlreport import write_html_report

    eval_dir = Path(run_dir) / "eval"
    write_jsonl(eval_dir / "iterations.jsonl", rows)
    plot = plot_iterations(rows, eval_dir / "plots" / "iterations.png", extra)
    text = f"# selfplay run: {Path(run_dir).name}\n\n" + markdown_table(rows, extra, notes)
    if plot:
        text += "\n![iterations](plots/iterations.png)\n"
    final = read_final(run_dir)
    if final is not None:  # loop.stop_patience: which model is the run's result
        text += "\n" + final_text(final) + "\n"
    text += costs_table(Path(run_dir))
    atomic_write_text(eval_dir / "report.md", text)
    write_html_report(run_dir, rows, present_columns(rows, extra), PLOTTED | {c[0] for c in extra}, notes=notes)
    return eval_dir / "report.md"
