"""The report page: metrics (table with intervals, charts) and a sample browser per evaluated model.

One self-contained HTML file (inline CSS and SVG, no script, nothing fetched), written beside report.md
after every iteration (``run_dir/eval/report.html``) and by ``selfplay eval compare --html`` for several
runs. What a section shows is decided by which files and fields exist (:mod:`selfplay.htmlreport.views`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from selfplay.htmlreport import runs as R
from selfplay.htmlreport.charts import Series, line_chart
from selfplay.htmlreport.markup import Html, el, fold, page
from selfplay.htmlreport.views import EVAL_VIEWS, Checker, Training, render_eval_row, render_record
from selfplay.loop_stop import final_text, read_final

Column = tuple[str, str, str]  # (row key, title, format), as in selfplay.stages.report
# Records shown per file and iteration; the rest are a link away (the JSONL).
MAX_PROMPTS = 12
# The collected file of an iteration, most complete first (a ranked file holds the samples it ranked).
COLLECTED = ("trajectories.jsonl", "rollout.jsonl", "rank.jsonl", "generate.jsonl", "prompts.jsonl")


# --------------------------------------------------------------------------- metrics


def _signed(fmt: str) -> str:
    return fmt.replace("{:", "{:+", 1) if "{:" in fmt and "{:+" not in fmt else fmt


def _fmt(fmt: str, v: Any) -> str:
    try:
        return fmt.format(v)
    except (TypeError, ValueError):
        return str(v)


def metric_cell(row: dict[str, Any], key: str, fmt: str) -> Html:
    """value, its interval [lo, hi] and its paired change against the base (Δ), when the row has statistics.

    A change whose interval includes 0 (``significant`` false) reads "n.s." and is never styled as a change.
    """
    value = row.get(key)
    if value is None:
        return el("td", "–")
    stats = (row.get("stats") or {}).get(key) or {}
    parts: list[Any] = [_fmt(fmt, value)]
    if stats.get("lo") is not None and stats.get("hi") is not None:
        n = f", n={stats['n']}" if stats.get("n") is not None else ""
        parts.append(el("span", f"[{_fmt(fmt, stats['lo'])}, {_fmt(fmt, stats['hi'])}]{n}", class_="ci",
                        title=f"95% interval ({stats.get('method', '?')})"))
    if stats.get("delta") is not None:
        sig = stats.get("significant")
        interval = (f" [{_fmt(_signed(fmt), stats['delta_lo'])}, {_fmt(_signed(fmt), stats['delta_hi'])}]"
                    if stats.get("delta_lo") is not None and stats.get("delta_hi") is not None else "")
        label = f"Δ {_fmt(_signed(fmt), stats['delta'])}{interval}" + ("" if sig else " n.s.")
        parts.append(el("span", label, class_="delta sig" if sig else "delta ns",
                        title="paired change against the base model" + ("" if sig else ": not significant")))
    return el("td", parts)


def metrics_table(rows: list[dict[str, Any]], columns: list[Column]) -> Html:
    head = el("tr", [el("th", title) for _, title, _ in columns])
    body = [el("tr", [metric_cell(r, k, f) for k, _, f in columns]) for r in rows]
    return el("table", el("thead", head), el("tbody", body), class_="metrics")


def _interval(row: dict[str, Any], key: str, bound: str) -> float | None:
    return ((row.get("stats") or {}).get(key) or {}).get(bound)


def metric_charts(runs: dict[str, list[dict[str, Any]]], columns: list[Column], plotted: set[str]) -> Html:
    """One chart per plotted metric, a line per run, interval bars where the rows have them."""
    labels = [str(r["iteration"]) for r in max(runs.values(), key=len)]
    charts = []
    for key, title, _ in columns:
        if key not in plotted:
            continue
        series = []
        for name, rows in runs.items():
            by_it = {str(r["iteration"]): r for r in rows}
            at = [by_it.get(lab, {}) for lab in labels]
            series.append(Series(name, [r.get(key) for r in at], [_interval(r, key, "lo") for r in at],
                                 [_interval(r, key, "hi") for r in at]))
        chart = line_chart(title, labels, series)
        if chart:
            charts.append(chart)
    return el("div", charts, class_="charts")


def train_chart(run_dir: Path, key: str = "loss") -> Html | None:
    """A line per iteration of ``key`` in its train/metrics.jsonl: a training metric, or ``eval/...`` of the
    evaluation inside the iteration (train.eval_every)."""
    curves = R.train_curves(run_dir, key)
    if not curves:
        return None
    longest = max(curves.values(), key=len)
    labels = [str(s) for s, _ in longest]
    series = [Series(f"iter {k}", [v for _, v in pts]) for k, pts in curves.items()]
    title = f"validation {key.removeprefix('eval/')}" if key.startswith("eval/") else f"train {key}"
    return line_chart(f"{title} per step", labels, series, width=440, xlabel="logged step")


# --------------------------------------------------------------------------- samples


def _link(target: Path, out_dir: Path, text: str) -> Html:
    return el("a", text, href=Path(os.path.relpath(target, out_dir)).as_posix())


def _checker(run_cfg: dict[str, Any], metrics: dict[str, Any] | None) -> Checker | None:
    """The verifier of the run's task (eval.task, else the task its evaluation recorded), through the task
    registry; None for open tasks."""
    from selfplay.envs.tasks import TASKS, find_verifier, gold_answer

    configured = (run_cfg.get("eval") or {}).get("task") or "auto"
    name = (metrics or {}).get("task") if configured == "auto" else configured
    task = TASKS.get(name or "")
    check, gold_of = (task.verify, task.gold) if task is not None else (find_verifier(name or ""), gold_answer)
    if check is None:
        return None

    def score(answer: str, held: dict[str, Any]) -> float | None:
        gold = gold_of(held)
        return float(check(answer, str(gold))) if gold else None

    return score


def collected_block(it_dir: Path, out_dir: Path, max_prompts: int, seed: int) -> Html | None:
    path = next((it_dir / f for f in COLLECTED if (it_dir / f).is_file()), None)
    if path is None:
        return None
    records, total = R.sample_records(path, max_prompts, seed)
    own = it_dir / "train_data" / "own.jsonl"
    training = R.records_for(own, {str(r.get("id")) for r in records})
    shown = f"{len(records)} of {total} prompts" if total > len(records) else f"{total} prompts"
    summary = el("span", f"collected: {path.name} — {shown} ", _link(path, out_dir, "(JSONL)"))
    body = [render_record(r, Training(training.get(str(r.get("id")), []), own.is_file())) for r in records]
    return fold(summary, body, open_=True, class_="collected")


def eval_block(eval_dir: Path, run_dir: Path, out_dir: Path, run_cfg: dict[str, Any], max_prompts: int,
               seed: int) -> Html | None:
    metrics = R.read_json(eval_dir / "metrics.json")
    blocks = []
    for view in EVAL_VIEWS:
        path = eval_dir / view.file
        if not path.is_file():
            continue
        rows, total = R.sample_records(path, max_prompts, seed)
        ids = {str(r.get("id")) for r in rows}
        held = R.held_out_records(run_dir, ids)
        # The loop's own per-prompt verdicts (per_prompt.jsonl) where they exist; older runs: the verifier.
        verdicts = R.records_for(eval_dir / "per_prompt.jsonl", ids)
        rows = [{**r, "correct": v[0]["accuracy"]} if "correct" not in r and (v := verdicts.get(str(r.get("id"))))
                and isinstance(v[0].get("accuracy"), (int, float)) else r for r in rows]
        check = _checker(run_cfg, metrics)
        shown = f"{len(rows)} of {total}" if total > len(rows) else f"{total}"
        summary = el("span", f"held-out evaluation: {view.title} ({shown} prompts) ", _link(path, out_dir, "(JSONL)"))
        blocks.append(fold(summary, [render_eval_row(view, r, held.get(str(r.get("id"))), check) for r in rows],
                           class_="evaluation"))
    return el("div", blocks) if blocks else None


def row_summary(row: dict[str, Any] | None, columns: list[Column], plotted: set[str]) -> Html | None:
    """The model's metrics in one line above its samples."""
    if not row:
        return None
    cells = [f"{title} {_fmt(fmt, row[key])}" for key, title, fmt in columns if key in plotted and row.get(key) is not None]
    return el("div", " · ".join(cells), class_="summary") if cells else None


def model_sections(run_dir: Path, out_dir: Path, run_cfg: dict[str, Any], max_prompts: int, seed: int,
                   rows: list[dict[str, Any]], columns: list[Column], plotted: set[str],
                   prefix: str = "") -> list[tuple[str, str, Html]]:
    """(anchor, title, section body) for the base model and every iteration directory."""
    by_it = {str(r.get("iteration")): r for r in rows}
    sections = []
    base = eval_block(run_dir / "eval" / "base", run_dir, out_dir, run_cfg, max_prompts, seed)
    if base:
        sections.append((f"{prefix}base", "base model", el("div", row_summary(by_it.get("base"), columns, plotted),
                                                            base)))
    for k, it_dir in R.iteration_dirs(run_dir):
        parts = [collected_block(it_dir, out_dir, max_prompts, seed),
                 eval_block(it_dir / "eval", run_dir, out_dir, run_cfg, max_prompts, seed)]
        if any(parts):
            sections.append((f"{prefix}iter-{k}", f"iteration {k}",
                             el("div", row_summary(by_it.get(str(k)), columns, plotted), parts)))
    return sections


def _subtitle(run_cfg: dict[str, Any]) -> str:
    model = (run_cfg.get("model") or {}).get("name_or_path", "?")
    data = (run_cfg.get("data") or {}).get("source", "?")
    return f"method {run_cfg.get('method', '?')} · model {model} · data {data}"


# --------------------------------------------------------------------------- pages


def render_run(run_dir: Path, rows: list[dict[str, Any]], columns: list[Column], plotted: set[str], out: Path,
               max_prompts: int = MAX_PROMPTS, seed: int = 0, notes: tuple[str, ...] = ()) -> Html:
    """One run's page; ``notes`` (how to read a column, e.g. the loss) under its metrics table."""
    run_dir = Path(run_dir)
    cfg = R.load_config(run_dir)
    final = read_final(run_dir)  # loop.stop_patience: the model the run chose on validation
    metrics = [el("h2", "Metrics on held-out prompts"), metrics_table(rows, columns) if rows else None,
               [el("p", note, class_="muted") for note in notes],
               el("p", final_text(final), class_="final") if final is not None else None,
               metric_charts({"": rows}, columns, plotted) if rows else None, train_chart(run_dir),
               train_chart(run_dir, "eval/accuracy"), train_chart(run_dir, "eval/real_loglik")]
    body = [el("section", metrics, id="metrics")]
    nav = [("metrics", "metrics")]
    for anchor, title, section in model_sections(run_dir, out.parent, cfg, max_prompts, seed, rows, columns, plotted):
        body.append(el("section", el("h2", title), section, id=anchor))
        nav.append((anchor, title))
    return page(f"selfplay run: {run_dir.resolve().name}", nav, body, _subtitle(cfg))


def render_compare(runs: dict[str, tuple[Path, list[dict[str, Any]]]], columns: list[Column], plotted: set[str],
                   out: Path, max_prompts: int = 6, seed: int = 0) -> Html:
    """Several runs: a table and a chart per metric with a line per run, then each run's samples, folded."""
    rows_by_run = {name: rows for name, (_, rows) in runs.items()}
    iterations = [str(r["iteration"]) for r in max(rows_by_run.values(), key=len)]
    tables = []
    for key, title, fmt in columns[1:]:
        if not any(r.get(key) is not None for rows in rows_by_run.values() for r in rows):
            continue
        head = el("tr", el("th", "iter"), [el("th", name) for name in runs])
        body = [el("tr", el("td", it), [metric_cell(next((r for r in rows if str(r["iteration"]) == it), {}), key, fmt)
                                        for rows in rows_by_run.values()]) for it in iterations]
        tables.append(el("div", el("h3", title), el("table", el("thead", head), el("tbody", body), class_="metrics")))
    body = [el("section", el("h2", "Metrics on held-out prompts"), metric_charts(rows_by_run, columns, plotted),
               tables, id="metrics")]
    nav = [("metrics", "metrics")]
    for i, (name, (run_dir, _)) in enumerate(runs.items()):
        cfg = R.load_config(run_dir)
        sections = model_sections(Path(run_dir), out.parent, cfg, max_prompts, seed, rows_by_run[name], columns, plotted,
                                  prefix=f"run{i}-")
        folded = [fold(title, section, class_="model") for _, title, section in sections]
        body.append(el("section", el("h2", name), el("div", _subtitle(cfg), class_="muted"), folded, id=f"run{i}"))
        nav.append((f"run{i}", name))
    return page("selfplay runs: " + " vs ".join(runs), nav, body)


def write_html_report(run_dir: Path, rows: list[dict[str, Any]], columns: list[Column], plotted: set[str],
                      out: Path | None = None, max_prompts: int = MAX_PROMPTS, notes: tuple[str, ...] = ()) -> Path:
    """Write ``run_dir/eval/report.html`` (or ``out``); returns its path."""
    from selfplay.io import atomic_write_text

    out = Path(out) if out is not None else Path(run_dir) / "eval" / "report.html"
    atomic_write_text(out, render_run(Path(run_dir), rows, columns, plotted, out, max_prompts, notes=notes))
    return out


def write_compare_html(runs: dict[str, tuple[Path, list[dict[str, Any]]]], columns: list[Column], plotted: set[str],
                       out: Path) -> Path:
    from selfplay.io import atomic_write_text

    atomic_write_text(Path(out), render_compare(runs, columns, plotted, Path(out)))
    return Path(out)
