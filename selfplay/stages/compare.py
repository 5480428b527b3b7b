"""``selfplay eval compare``: loop runs side by side, with paired differences between them per iteration.

Runs are compared iteration by iteration (base with base, iteration k with iteration k): for each metric
with per-prompt values, the difference of each later run and the first (B − A) is a paired bootstrap over the
held-out prompts both evaluated (matched by id), with its 95% interval and verdict (significant iff the
interval excludes 0). Runs evaluated before per-prompt files existed are shown without intervals or
differences, and the output says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfplay.evals.per_prompt import METRICS, Table, metric_delta
from selfplay.evals.stats_format import NOT_SIGNIFICANT, change_text, with_interval
from selfplay.stages.report import Column, present_columns, common_n, run_tables, with_stats


@dataclass
class Run:
    """A loop run's iteration rows (with ``stats`` where it saved per-prompt results) and those results."""

    rows: list[dict[str, Any]]
    tables: list[Table | None]

    @classmethod
    def load(cls, run_dir: Path, rows: list[dict[str, Any]]) -> Run:
        return cls(with_stats(run_dir, rows), run_tables(run_dir, rows))

    def at(self, iteration: Any) -> tuple[dict[str, Any], Table | None]:
        """The row and per-prompt results of ``iteration`` ({} and None when the run has no such row)."""
        for row, table in zip(self.rows, self.tables):
            if row["iteration"] == iteration:
                return row, table
        return {}, None


def iterations(runs: dict[str, Run]) -> list[Any]:
    """base, 0, 1, ... as far as the longest run goes."""
    return [r["iteration"] for r in max((run.rows for run in runs.values()), key=len)]


def differences(runs: dict[str, Run]) -> list[dict[str, Any]]:
    """Paired differences of every later run against the first, per iteration and metric: records
    ``{"a", "b", "iteration", "metric", "n", "delta", "lo", "hi", "significant"}`` (``n``: the prompts both
    evaluated). Pairs without per-prompt results on either side, or without a common prompt, are left out."""
    names = list(runs)
    out: list[dict[str, Any]] = []
    for b in names[1:]:
        for it in iterations(runs):
            (_, table_a), (_, table_b) = runs[names[0]].at(it), runs[b].at(it)
            if table_a is None or table_b is None:
                continue
            for metric in METRICS:
                d = metric_delta(metric, table_b, table_a)
                if d is not None:
                    out.append({"a": names[0], "b": b, "iteration": it, "metric": metric, "n": d.n,
                                "delta": d.estimate, "lo": d.lo, "hi": d.hi, "significant": d.significant})
    return out


def missing_per_prompt(runs: dict[str, Run]) -> list[str]:
    """The runs with a row that has no per-prompt results (older runs): no intervals for those rows."""
    return [name for name, run in runs.items() if any(t is None for t in run.tables)]


def print_comparison(runs: dict[str, Run], extra: tuple[Column, ...] = ()) -> None:
    """One table per metric: a row per iteration, each run's value with its interval, and B − A (paired) for
    every later run B against the first run A."""
    from rich.table import Table as RichTable
    from rich.text import Text

    from selfplay.progress import console

    names = list(runs)
    diffs = {(d["b"], d["iteration"], d["metric"]): d for d in differences(runs)}
    every = [r for run in runs.values() for r in run.rows]
    n = common_n(every)
    for key, title, fmt in present_columns(every, extra)[1:]:
        table = RichTable(title=title + (f" (held-out prompts, n = {n})" if key in METRICS and n else ""))
        table.add_column("iter", justify="right")
        for name in names:
            table.add_column(name, justify="right")
        has_diff = key in METRICS and len(names) > 1
        for name in names[1:] if has_diff else []:
            table.add_column(f"{name} − {names[0]}", justify="right")
        for it in iterations(runs):
            cells: list[Text] = [Text(str(it))]
            for name in names:
                row, _ = runs[name].at(it)
                stats = (row.get("stats") or {}).get(key)
                cells.append(Text(with_interval(row.get(key), stats, fmt) if key in METRICS
                                  else (fmt.format(row[key]) if row.get(key) is not None else "–")))
            for name in names[1:] if has_diff else []:
                cells.append(_difference_cell(diffs.get((name, it, key)), fmt, n))
            table.add_row(*cells)
        console.print(table)
    missing = missing_per_prompt(runs)
    if diffs:
        console.print(f"paired differences: bootstrap over the held-out prompts both runs evaluated (matched by id), "
                      f"95% intervals; {NOT_SIGNIFICANT}: the interval includes 0 (no detectable difference)",
                      highlight=False)
    elif len(names) > 1 and not missing:
        console.print("no paired differences: the runs share no held-out prompt ids", highlight=False)
    for name in missing:
        console.print(f"{name}: some rows have no per-prompt results (evaluated by an older version): "
                      "no intervals or paired differences for them", highlight=False)


def _difference_cell(d: dict[str, Any] | None, fmt: str, n: int | None) -> Any:
    from rich.text import Text

    if d is None:
        return Text("–")
    text, verdict = change_text({"delta": d["delta"], "delta_lo": d["lo"], "delta_hi": d["hi"],
                                 "significant": d["significant"]}, fmt)
    if d["n"] != n:
        text += f" (n={d['n']})"
    return Text(text, style="bold" if verdict else "dim")
