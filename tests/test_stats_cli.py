"""Per-prompt results and intervals through the real CLI: a tiny loop's files and tables, `eval compare`."""

from __future__ import annotations

import json
import re
import shutil

from selfplay.io import read_jsonl, write_jsonl
from test_loop import TINY

STATS_KEYS = {"n", "lo", "hi", "method", "delta", "delta_lo", "delta_hi", "significant"}


def _loop(cli, model, run_dir):
    res = cli(["loop", "--method", "spin", "--iters", "1", "--model", model, "--data", "synth:arith",
               "--run-dir", run_dir, *TINY, "--set", "eval.num_samples=2"])
    assert res.exit_code == 0, res.output
    return res


def test_loop_writes_per_prompt_results_and_compare_shows_paired_differences(cli, tiny_model, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    res = _loop(cli, tiny_model, a)
    # The table the user watches: n, each value with its interval, the change vs base marked.
    assert "held-out prompts, n = 4" in res.stderr and "Δ accuracy vs base" in res.stderr
    assert re.search(r"│ +\[0\.\d\d, [01]\.\d\d\] │", res.stderr)  # an accuracy's interval under its value

    held_out = [r["id"] for r in read_jsonl(a / "data" / "test.jsonl")][:4]
    for unit in ("eval/base", "iter_0/eval"):
        per_prompt = read_jsonl(a / unit / "per_prompt.jsonl")
        assert [r["id"] for r in per_prompt] == held_out
        assert all({"real_logp", "real_tokens", "accuracy", "sample_accuracy"} <= set(r) for r in per_prompt)
        assert all(r["accuracy"] in (0.0, 1.0) and r["real_tokens"] > 0 for r in per_prompt)
    assert all("spin_margin" in r for r in read_jsonl(a / "iter_0" / "eval" / "per_prompt.jsonl"))

    rows = read_jsonl(a / "eval" / "iterations.jsonl")
    base, it0 = rows[0]["stats"], rows[1]["stats"]
    assert {"real_loglik", "accuracy", "sample_accuracy"} <= set(base) and "spin_margin" in it0
    assert all(set(s) == STATS_KEYS for s in (*base.values(), *it0.values()))
    assert base["accuracy"]["method"] == "wilson" and base["real_loglik"]["method"] == "bootstrap"
    assert base["accuracy"]["n"] == 4 and base["accuracy"]["delta"] is None and base["accuracy"]["significant"] is None
    acc = it0["accuracy"]
    assert acc["delta"] == rows[1]["accuracy"] - rows[0]["accuracy"] and isinstance(acc["significant"], bool)
    assert acc["lo"] <= rows[1]["accuracy"] <= acc["hi"]
    loglik = it0["real_loglik"]  # the flat key is the interval's point estimate
    assert loglik["lo"] <= rows[1]["real_loglik"] <= loglik["hi"]
    report = (a / "eval" / "report.md").read_text()
    assert "n = 4" in report and re.search(r"\| 0 \| -?\d\.\d{4} \[-?\d\.\d{3}, -?\d\.\d{3}\]", report)

    # The same command into another directory gives the same per-prompt results: every paired difference
    # is exactly 0 and not significant, in the table and in the JSON.
    _loop(cli, tiny_model, b)
    res = cli(["eval", "compare", a, b, "--out", tmp_path / "cmp.png"])
    assert res.exit_code == 0, res.output
    assert "b − a" in res.stderr and "paired differences" in res.stderr
    metric_rows = [cells for line in res.stderr.splitlines() if line.startswith("│")
                   and len(cells := [c.strip() for c in line.split("│")[1:-1]]) == 4]  # iter | a | b | b − a
    differences = [cells[3] for cells in metric_rows if cells[3] != "–"]
    assert len(differences) >= 6 and all(re.fullmatch(r"\+0\.0+ \[\+0\.0+, \+0\.0+\] n\.s\.", d)
                                         for d in differences), differences
    out = json.loads(cli(["eval", "compare", a, b, "--json"]).stdout)
    assert set(out) == {"runs", "differences"} and set(out["runs"]) == {"a", "b"}
    diffs = out["differences"]
    assert {d["metric"] for d in diffs} >= {"accuracy", "real_loglik", "sample_accuracy", "spin_margin"}
    assert {d["iteration"] for d in diffs} == {"base", 0}
    assert all(d["delta"] == d["lo"] == d["hi"] == 0 and d["significant"] is False and d["n"] == 4 for d in diffs)
    assert out["runs"]["a"][1]["stats"] == it0

    # A run evaluated before per-prompt files existed: shown without intervals, and the output says so.
    old = tmp_path / "old"
    shutil.copytree(a, old)
    for path in old.rglob("per_prompt.jsonl"):
        path.unlink()
    write_jsonl(old / "eval" / "iterations.jsonl",
                [{k: v for k, v in r.items() if k != "stats"} for r in read_jsonl(old / "eval" / "iterations.jsonl")])
    res = cli(["eval", "compare", old])
    assert res.exit_code == 0 and "no intervals" in res.stderr and "[0." not in res.stderr
    res = cli(["eval", "compare", old, b, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["differences"] == []
    res = cli(["eval", "compare", old, b])
    assert res.exit_code == 0 and "old: some rows have no per-prompt results" in res.stderr
