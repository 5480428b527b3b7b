"""docs/RESULTS-efficacy.md's generator (scripts/efficacy.py): changes are paired by prompt, a change whose
interval includes 0 is printed as no measurable change, and a recipe without a run is listed as not run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "efficacy.py"


@pytest.fixture(scope="module")
def efficacy():
    spec = importlib.util.spec_from_file_location("efficacy_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _summary(name: str, per_prompt: dict[str, dict[str, float]], stats: dict[str, dict], baseline=None) -> dict:
    rows = [{"iteration": it, "n": len(v), "accuracy": sum(v.values()) / len(v), "real_loglik": -1.0,
             "iteration_seconds": 10.0, "stats": {"accuracy": stats[it]}} for it, v in per_prompt.items()]
    return {"name": name, "title": name, "metric": "accuracy", "baseline": baseline, "command": f"selfplay {name}",
            "wall_seconds": 61.0, "load_average": {"before": [1.0], "after": [1.0]}, "commit": "0123456789abc",
            "dirty": False, "machine": {"cores": 2, "cpu_flags": ["avx2"]}, "date": "2026-12-05 00:00",
            "rows": rows, "per_prompt": per_prompt}


def test_page_pairs_against_the_baseline_and_never_shows_zero_effect_as_a_gain(efficacy):
    ids = [f"p{i}" for i in range(40)]
    same = {i: float(k % 2) for k, i in enumerate(ids)}      # half right
    better = {i: 1.0 for i in ids}                            # every problem right
    flat = {"lo": 0.3, "hi": 0.7, "delta": 0.0, "delta_lo": -0.1, "delta_hi": 0.1, "significant": False}
    up = {"lo": 0.9, "hi": 1.0, "delta": 0.5, "delta_lo": 0.35, "delta_hi": 0.65, "significant": True}
    base = {"lo": 0.3, "hi": 0.7}
    summaries = {
        "sft": _summary("sft", {"base": same, "0": same}, {"base": base, "0": flat}),
        "spin": _summary("spin", {"base": same, "0": better}, {"base": base, "0": up}, baseline="sft"),
    }
    manifest = {"spin": {"title": "spin", "config": "c/spin.yaml"}, "sft": {"title": "sft", "config": "c/sft.yaml"},
                "rise": {"title": "RISE recipe", "config": "c/rise.yaml"}}
    page = efficacy.render_page(summaries, manifest)
    spin_rows = page.split("## spin")[1].split("## sft")[0]
    sft_rows = page.split("## sft")[1].split("## RISE")[0]
    # SPIN's change against base and against SFT (paired by prompt: +0.5 exactly) both exclude 0: bold.
    assert "**+0.500 [+0.350, +0.650]**" in spin_rows
    assert spin_rows.count("**+0.500") == 2
    # SFT's zero change is marked n.s. and never bold.
    assert "+0.000 [-0.100, +0.100] n.s." in sft_rows
    assert "**+0.000" not in page
    # A manifest entry without a run is listed as not run, with the command that runs it.
    assert "Not run in this release" in page.split("## RISE recipe")[1]
    assert "python scripts/efficacy.py run rise" in page


def test_glance_table_leads_with_every_experiment_and_its_last_and_best_change(efficacy):
    """The page opens with one row per manifest entry: the metric from base through every iteration, the paired
    change of the last and of the best iteration (n.s. where the interval includes 0), and a link to its section."""
    ids = [f"p{i}" for i in range(40)]
    half = {i: float(k % 2) for k, i in enumerate(ids)}
    all_right = {i: 1.0 for i in ids}
    base = {"lo": 0.3, "hi": 0.7}
    up = {"lo": 0.9, "hi": 1.0, "delta": 0.5, "delta_lo": 0.35, "delta_hi": 0.65, "significant": True}
    flat = {"lo": 0.3, "hi": 0.7, "delta": 0.0, "delta_lo": -0.1, "delta_hi": 0.1, "significant": False}
    summary = _summary("spin", {"base": half, "0": all_right, "1": half}, {"base": base, "0": up, "1": flat})
    summary["title"] = "SPIN (one-step arithmetic, greedy)"
    summary["config"] = {"loop": {"iters": 3}}
    manifest = {"spin": {"title": summary["title"], "config": "c/spin.yaml"},
                "rise": {"title": "RISE recipe", "config": "c/rise.yaml"}}
    page = efficacy.render_page({"spin": summary}, manifest)
    glance = page.split("## At a glance")[1].split("\n## ")[0]
    spin_row = next(line for line in glance.splitlines() if line.startswith("| [spin]"))
    cells = [c.strip() for c in spin_row.strip("|").split("|")]
    assert cells[2] == "0.500 → 1.000 → 0.500"
    assert cells[3] == "+0.000 [-0.100, +0.100] n.s."  # the last iteration: no measurable change, never bold
    assert cells[4] == "0: **+0.500 [+0.350, +0.650]**"  # the best iteration
    assert cells[5] == "2 of 3"
    # The link points at the section's heading as GitHub anchors it.
    assert "(#spin-one-step-arithmetic-greedy)" in cells[0] and "## SPIN (one-step arithmetic, greedy)" in page
    assert "| rise | not run |" in glance


def test_also_metrics_show_their_intervals_and_changes(efficacy):
    """A manifest's ``also`` metrics (RISE: acc@t1, wrong→right, ...) get a table: value [lo, hi] per iteration
    and, after the base model, the paired change — bold only when its interval excludes 0."""
    ids = [f"p{i}" for i in range(10)]
    half = {i: float(k % 2) for k, i in enumerate(ids)}
    summary = _summary("rise", {"base": half, "0": half}, {"base": {"lo": 0.2, "hi": 0.8},
                                                            "0": {"lo": 0.2, "hi": 0.8, "delta": 0.0, "delta_lo": -0.2,
                                                                  "delta_hi": 0.2, "significant": False}})
    summary["rows"][0].update(mt_fixed=0.0, stats={**summary["rows"][0]["stats"], "mt_fixed": {"lo": 0.0, "hi": 0.1}})
    summary["rows"][1].update(mt_fixed=0.3, stats={**summary["rows"][1]["stats"], "mt_fixed": {
        "lo": 0.2, "hi": 0.4, "delta": 0.3, "delta_lo": 0.2, "delta_hi": 0.4, "significant": True}})
    manifest = {"rise": {"title": "rise", "config": "c/rise.yaml", "also": ["mt_fixed", "mt_broken"]}}
    page = efficacy.render_page({"rise": summary}, manifest)
    table = page.split("Also measured")[1]
    assert "| metric | base | 0 |" in table
    assert "| mt_fixed | 0.000 [0.000, 0.100] | 0.300 [0.200, 0.400] · Δ **+0.300 [+0.200, +0.400]** |" in table
    assert "| mt_broken | – | – |" in table  # a metric the run did not record is a dash, not a zero


def test_run_makes_what_the_loop_needs_first_and_times_it_with_the_loop(efficacy, tmp_path, monkeypatch):
    """A manifest's ``before`` commands (GPO: the GPM it ranks with) run in order before the loop, from a clean
    directory, and the summary's command reproduces all of them."""
    stale = tmp_path / "runs" / "judge"
    (stale / "model").mkdir(parents=True)
    (tmp_path / "runs" / "exp" / "gpo").mkdir(parents=True)
    monkeypatch.setattr(efficacy, "REPO", tmp_path)
    monkeypatch.setattr(efficacy, "RUNS", tmp_path / "runs" / "exp")
    ran: list[list[str]] = []
    monkeypatch.setattr(efficacy.subprocess, "run", lambda cmd, **kw: ran.append(cmd[3:]) or None)
    seen = {}
    monkeypatch.setattr(efficacy, "summarize", lambda name, spec, run_dir, command, *a: seen.update(
        command=command, run_dir_exists=run_dir.exists(), stale_exists=stale.exists()))
    spec = {"config": "c/gpo.yaml", "before": {"dir": "runs/judge", "commands": [
        "selfplay data synth arith-prefs --out runs/judge/prefs", "selfplay train --method gpm --out runs/judge/j"]}}
    efficacy.run_experiment("gpo", spec, ["loop.iters=1"])
    assert ran == [["data", "synth", "arith-prefs", "--out", "runs/judge/prefs"],
                   ["train", "--method", "gpm", "--out", "runs/judge/j"],
                   ["loop", "--config", "c/gpo.yaml", "--run-dir", "runs/exp/gpo", "--set", "loop.iters=1"]]
    assert not seen["stale_exists"] and not seen["run_dir_exists"]  # both cleared first: a run from scratch
    assert seen["command"] == ("selfplay data synth arith-prefs --out runs/judge/prefs && selfplay train --method gpm "
                               "--out runs/judge/j && selfplay loop --config c/gpo.yaml --run-dir runs/exp/gpo --set "
                               "loop.iters=1")
    with pytest.raises(SystemExit, match="must start with `selfplay`"):
        efficacy.run_experiment("gpo", {"config": "c/gpo.yaml", "before": {"commands": ["rm -rf /"]}}, [])
