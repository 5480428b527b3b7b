"""Efficacy experiments: run each recipe of configs/experiments/, keep a compact summary, build the results page.

    python scripts/efficacy.py run spin            # runs configs/experiments/spin.yaml, writes docs/efficacy/spin.json
    python scripts/efficacy.py run --all           # every experiment of the manifest, in its order
    python scripts/efficacy.py report              # docs/RESULTS-efficacy.md from docs/efficacy/*.json

The manifest (``configs/experiments/experiments.yaml``) names, per experiment, its loop config, the task metric
its table reports (greedy accuracy, fresh-sample accuracy, RISE's turn-T accuracy, agent EM) and the experiment
whose run is its SFT baseline on the same data. A summary holds what the page needs and nothing it could not
recompute: the per-iteration rows (metrics with their intervals), the per-prompt values of the task metric (so
changes against another run are paired by prompt id), the resolved config, wall time, machine load, the commit.
The page is generated from the summaries only — never edited by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "configs" / "experiments" / "experiments.yaml"
SUMMARIES = REPO / "docs" / "efficacy"
PAGE = REPO / "docs" / "RESULTS-efficacy.md"
RUNS = REPO / "runs" / "experiments"
# What a run's results depend on: an uncommitted change here marks its summary (edits to docs do not).
CODE_PATHS = ("selfplay", "configs", "scripts", "pyproject.toml")


def load_manifest() -> dict[str, dict[str, Any]]:
    import yaml

    return yaml.safe_load(MANIFEST.read_text())["experiments"]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def _cpu_flags() -> list[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted({f for f in flags.split() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")})


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]] if Path("/proc/loadavg").exists() else []


def run_experiment(name: str, spec: dict[str, Any], extra_sets: list[str]) -> Path:
    """Run one experiment's loop from scratch (a fresh run directory), timed, then summarize it."""
    import shutil

    run_dir = RUNS / name
    steps = _before_steps(name, spec) + [["selfplay", *_loop_args(name, spec, extra_sets)]]
    before_dir = spec.get("before", {}).get("dir")
    for stale in (run_dir, *([REPO / before_dir] if before_dir else [])):
        if stale.exists():
            shutil.rmtree(stale)
    load_before = _loadavg()
    t0 = time.perf_counter()
    for step in steps:  # what the loop needs first (e.g. the GPM it ranks with), then the loop: timed together
        print(f"[efficacy] {name}: {shlex.join(step)}", flush=True)
        subprocess.run([sys.executable, "-m", "selfplay.cli.main", *step[1:]], cwd=REPO, check=True)
    wall = time.perf_counter() - t0
    return summarize(name, spec, run_dir, _command(steps), wall, load_before, _loadavg())


def _before_steps(name: str, spec: dict[str, Any]) -> list[list[str]]:
    """The manifest's ``before`` commands, split; each is a ``selfplay`` command (run with this interpreter)."""
    steps = [shlex.split(c) for c in spec.get("before", {}).get("commands", [])]
    for step in steps:
        if not step or step[0] != "selfplay":
            raise SystemExit(f"{MANIFEST}: experiment '{name}': a `before` command must start with `selfplay`, "
                             f"got {shlex.join(step)!r}")
    return steps


def _command(steps: list[list[str]]) -> str:
    """The shell command that reproduces a run: its steps joined by ``&&``."""
    return " && ".join(shlex.join(step) for step in steps)


def _loop_args(name: str, spec: dict[str, Any], extra_sets: list[str]) -> list[str]:
    """The loop command an experiment runs (without the interpreter)."""
    run_dir = RUNS / name
    return ["loop", "--config", spec["config"], "--run-dir", str(run_dir.relative_to(REPO)),
            *[a for s in extra_sets for a in ("--set", s)]]


def summarize(name: str, spec: dict[str, Any], run_dir: Path, command: str, wall: float | None,
              load_before: list[float], load_after: list[float]) -> Path:
    """docs/efficacy/NAME.json from a finished run directory."""
    import yaml

    from selfplay.io import read_jsonl, write_json
    from selfplay.loop_stop import read_final
    from selfplay.stages.report import run_tables, with_stats

    rows = with_stats(run_dir, read_jsonl(run_dir / "eval" / "iterations.jsonl"))
    tables = run_tables(run_dir, rows)
    metric = spec["metric"]
    keep = ("iteration", "n", metric, "real_loglik", "accuracy", "sample_accuracy", "mt_acc_t1", "mt_acc_tlast",
            "mt_oracle", "mt_majority", "mt_fixed", "mt_broken", "mt_pass_parallel", "mt_maj_parallel", "agent_em",
            "agent_f1", "agent_steps", "agent_finished", "train_loss", "pairs", "steps", "iteration_seconds", "seconds",
            "selected", "validation")
    summary = {
        "name": name, "title": spec.get("title", name), "metric": metric, "baseline": spec.get("baseline"),
        "command": command, "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
        "wall_seconds": wall, "load_average": {"before": load_before, "after": load_after},
        "commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)),
        "machine": {"cores": os.cpu_count(), "cpu_flags": _cpu_flags(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime()),
        "rows": [{k: r[k] for k in keep if k in r} | {"stats": r.get("stats", {})} for r in rows],
        # loop.stop_patience: the model the run chose on its validation split, and where it stopped
        "final": read_final(run_dir),
        "per_prompt": {str(r["iteration"]): {pid: v.get(_column(metric)) for pid, v in (t or {}).items()}
                       for r, t in zip(rows, tables)},
    }
    out = SUMMARIES / f"{name}.json"
    write_json(out, summary)
    print(f"[efficacy] {name}: summary -> {out.relative_to(REPO)}", flush=True)
    return out


def _column(metric: str) -> str:
    from selfplay.evals.per_prompt import METRICS

    return METRICS[metric].column


# ----------------------------------------------------------------------------- the page


def _fmt_interval(value: float, lo: float, hi: float) -> str:
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def _fmt_change(delta: float | None, lo: float | None, hi: float | None, significant: bool | None) -> str:
    if delta is None:
        return "–"
    text = f"{delta:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    return f"**{text}**" if significant else f"{text} n.s."


def _change_vs_base(row: dict[str, Any], metric: str) -> str:
    """A row's paired change of ``metric`` against the base model, as the tables print it ("–" where none)."""
    st = (row.get("stats") or {}).get(metric) or {}
    return _fmt_change(st.get("delta"), st.get("delta_lo"), st.get("delta_hi"), st.get("significant"))


def _paired_vs(summary: dict[str, Any], other: dict[str, Any], iteration: str) -> dict[str, Any] | None:
    """The paired change of ``summary``'s task metric against ``other``'s at the same iteration (same prompts)."""
    from selfplay.evals.stats import paired_bootstrap

    a, b = other["per_prompt"].get(iteration) or {}, summary["per_prompt"].get(iteration) or {}
    ids = [k for k in b if k in a and a[k] is not None and b[k] is not None]
    if not ids:
        return None
    d = paired_bootstrap([a[k] for k in ids], [b[k] for k in ids])
    return {"delta": d.estimate, "lo": d.lo, "hi": d.hi, "significant": d.significant, "n": d.n}


def render_page(summaries: dict[str, dict[str, Any]], manifest: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Efficacy: does self-play improve the model?",
        "",
        "Generated by `python scripts/efficacy.py report` from the run summaries in `docs/efficacy/` — do not edit by "
        "hand. Each experiment is a recipe in `configs/experiments/` run on a 2-core CPU with SmolLM2-135M-Instruct; "
        "the command of each row reproduces it (`python scripts/efficacy.py run NAME` runs it and rewrites its "
        "summary).",
        "",
        "How to read it: every value is the mean over the held-out problems with its 95% interval (Wilson for 0/1 "
        "per-problem outcomes, percentile bootstrap over problems otherwise). Δ base is the paired change against the "
        "base model on the same problems; Δ NAME the paired change against the model of the same iteration of the "
        "experiment NAME on the same problems — the SFT baseline on the same data for SPIN, SPPO with the verifier for "
        "GPO (paired bootstrap, 10,000 resamples, seeded). **Bold** changes exclude 0; "
        "`n.s.` marks a change whose interval includes 0: no measurable change. Settings were chosen on validation "
        "problems (a different seed of the generated task, or a different slice of the data), never on the held-out "
        "problems reported here.",
        "",
    ]
    lines += _glance(summaries, manifest)
    for name, spec in manifest.items():
        s = summaries.get(name)
        if s is None:  # listed, never silently dropped: a recipe without a run says so
            lines += [f"## {spec.get('title', name)}", "",
                      f"Not run in this release (`{spec['config']}`): `python scripts/efficacy.py run {name}`.", ""]
            continue
        baseline = summaries.get(s.get("baseline") or "")
        lines += [f"## {s['title']}", "",
                  f"`{s['command']}` — task metric `{s['metric']}`, n = {s['rows'][0].get('n', '?')} held-out problems; "
                  f"wall time {_minutes(s['wall_seconds'])} on {s['machine']['cores']} cores "
                  f"({', '.join(s['machine']['cpu_flags']) or 'no vector flags read'}), load average before/after "
                  f"{_load(s['load_average'])}; commit `{s['commit'][:10]}`{' (uncommitted changes)' if s['dirty'] else ''}, "
                  f"{s['date']}.", ""]
        validated = any(row.get("validation") is not None for row in s["rows"])
        header = ["iteration", s["metric"], "Δ base"] + ([f"Δ {baseline['name']}"] if baseline else []) + \
                 ["real loglik"] + ([_validation_header(s)] if validated else []) + ["gen+train s"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in s["rows"]:
            st = row["stats"].get(s["metric"])
            value = _fmt_interval(row[s["metric"]], st["lo"], st["hi"]) if st else f"{row.get(s['metric'], '–')}"
            cells = [str(row["iteration"]), value, _change_vs_base(row, s["metric"])]
            if baseline:
                vs = _paired_vs(s, baseline, str(row["iteration"])) if row["iteration"] != "base" else None
                cells.append(_fmt_change(vs["delta"], vs["lo"], vs["hi"], vs["significant"]) if vs else "–")
            ll = row["stats"].get("real_loglik")
            cells.append(_fmt_interval(row["real_loglik"], ll["lo"], ll["hi"]) if ll else "–")
            if validated:
                cells.append(f"{row['validation']:.3f}" if row.get("validation") is not None else "–")
            cells.append(f"{row['iteration_seconds']:.0f}" if row.get("iteration_seconds") is not None else "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines += _also_table(s, spec.get("also") or [])
        if s.get("final"):
            from selfplay.loop_stop import final_text

            lines += ["", final_text(s["final"]).replace(str(REPO) + "/", "")]
        lines.append("")
    return "\n".join(lines)


def _glance(summaries: dict[str, dict[str, Any]], manifest: dict[str, dict[str, Any]]) -> list[str]:
    """The page's first table: per experiment its task metric from the base model through every iteration, the
    paired change of the last iteration and of the best one against the base model, the iterations run of those
    planned, and the wall time (each section below gives the machine and its load around the run)."""
    lines = ["## At a glance", "",
             "| experiment | task metric (n held-out) | base → iterations | Δ base, last iteration | best iteration, "
             "Δ base | iterations run | wall time |", "|---|---|---|---|---|---|---|"]
    for name in manifest:
        s = summaries.get(name)
        if s is None:
            lines.append(f"| {name} | not run | – | – | – | – | – |")
            continue
        metric, rows = s["metric"], s["rows"]
        trained = [row for row in rows if row["iteration"] != "base" and row.get(metric) is not None]
        path = " → ".join(f"{row[metric]:.3f}" for row in rows if row.get(metric) is not None)
        last = _change_vs_base(trained[-1], metric) if trained else "–"
        top = max(trained, key=lambda row: row[metric]) if trained else None  # task metrics: higher is better
        best = f"{top['iteration']}: {_change_vs_base(top, metric)}" if top else "–"
        planned = ((s.get("config") or {}).get("loop") or {}).get("iters")
        ran = f"{len(trained)} of {planned}" if planned else str(len(trained))
        if (s.get("final") or {}).get("stopped_after") is not None:
            ran += " (stopped)"
        n = rows[0].get("n", "?")
        lines.append(f"| [{name}](#{_anchor(s['title'])}) | `{metric}` ({n}) | {path} | {last} | {best} | {ran} | "
                     f"{_minutes(s['wall_seconds'])} |")
    return lines + [""]


def _anchor(title: str) -> str:
    """GitHub's anchor of a ``## title`` heading: lower case, punctuation dropped, spaces as hyphens."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def _also_table(summary: dict[str, Any], metrics: list[str]) -> list[str]:
    """The manifest's ``also`` metrics (e.g. RISE's acc@t1, maj@5, wrong→right): one row per metric, one column
    per iteration, each value with its interval and (after the base model) its paired change against the base."""
    rows = [row for row in summary["rows"] if any(m in row for m in metrics)]
    if not metrics or not rows:
        return []
    lines = ["", "Also measured on the same held-out problems:", "",
             "| metric | " + " | ".join(str(row["iteration"]) for row in rows) + " |", "|" + "---|" * (len(rows) + 1)]
    for metric in metrics:
        cells = []
        for row in rows:
            st = row["stats"].get(metric)
            if metric not in row:
                cells.append("–")
            elif not st:
                cells.append(f"{row[metric]:.3f}")
            else:
                cell = _fmt_interval(row[metric], st["lo"], st["hi"])
                if st.get("delta") is not None:
                    change = _fmt_change(st["delta"], st.get("delta_lo"), st.get("delta_hi"), st.get("significant"))
                    cell += f" · Δ {change}"
                cells.append(cell)
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


def _validation_header(summary: dict[str, Any]) -> str:
    """The validation column's heading: its metric (loop.stop_metric) and its number of problems."""
    metric = (summary.get("final") or {}).get("metric", "stop metric")
    n = (summary["config"].get("data") or {}).get("val_num", "?")
    return f"validation {metric} (n = {n})"


def _minutes(seconds: float | None) -> str:
    return "–" if seconds is None else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _load(load: dict[str, list[float]]) -> str:
    return " / ".join(f"{v[0]:.2f}" if v else "?" for v in (load.get("before"), load.get("after")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run experiments and write their summaries")
    run.add_argument("names", nargs="*")
    run.add_argument("--all", action="store_true")
    run.add_argument("--set", action="append", default=[], help="extra --set for the loop (e.g. a smaller test)")
    summ = sub.add_parser("summarize", help="summarize an existing run directory of an experiment")
    summ.add_argument("name")
    summ.add_argument("run_dir", type=Path)
    summ.add_argument("--wall-seconds", type=float, default=None,
                      help="the run's wall time where it is known (e.g. a resumed run: the sum of its segments)")
    sub.add_parser("report", help="write docs/RESULTS-efficacy.md from docs/efficacy/*.json")
    args = parser.parse_args(argv)
    manifest = load_manifest()
    if args.command == "run":
        names = list(manifest) if args.all else args.names
        unknown = [n for n in names if n not in manifest]
        if unknown or not names:
            parser.error(f"unknown or no experiments: {unknown}; the manifest has {', '.join(manifest)}")
        for name in names:
            run_experiment(name, manifest[name], args.set)
    elif args.command == "summarize":
        # The experiment's own command (a rerun reproduces the run), whatever directory the run was made in.
        spec = manifest[args.name]
        command = _command(_before_steps(args.name, spec) + [["selfplay", *_loop_args(args.name, spec, [])]])
        summarize(args.name, spec, args.run_dir, command, args.wall_seconds, [], [])
    if args.command in ("run", "summarize", "report"):
        summaries = {p.stem: json.loads(p.read_text()) for p in sorted(SUMMARIES.glob("*.json"))}
        PAGE.write_text(render_page(summaries, manifest) + "\n")
        print(f"[efficacy] page -> {PAGE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
