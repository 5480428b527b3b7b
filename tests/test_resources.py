"""Time and peak memory per unit: measured for real (allocations in this process and in a child), recorded in
state.json by the loop, shown by `selfplay status` and in report.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from selfplay.io import read_json

MB = 2**20
HAS_PROC = Path("/proc/self/statm").exists()  # Linux: per-unit peaks are recorded


def _in_fresh_process(code: str) -> dict:
    """Run ``code`` (which prints one JSON line last) in a fresh interpreter: its peak RSS starts small."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not HAS_PROC, reason="needs Linux's /proc for the resident set")
def test_each_unit_gets_its_own_peak_and_the_process_keeps_its_own() -> None:
    code = f"""
import json, time
from selfplay.resources import _high_water_mark_mb, measure_unit
with measure_unit() as idle:
    pass
with measure_unit() as big:  # a new peak of the process: the kernel's high-water mark, exact
    block = bytearray({300 * MB})  # bytearray zero-fills: every page is touched
    del block
with measure_unit() as after:  # below the earlier peak: the sampled RSS, not the freed 300 MB
    pass
with measure_unit() as medium:  # below the earlier peak, held while the sampler runs
    block = bytearray({150 * MB})
    time.sleep(0.2)
    del block
print(json.dumps({{"idle": idle, "big": big, "after": after, "medium": medium,
                  "process_peak_mb": _high_water_mark_mb()}}))
"""
    r = _in_fresh_process(code)
    idle, big, after, medium = r["idle"], r["big"], r["after"], r["medium"]
    assert big["peak_rss_mb"] >= idle["peak_rss_mb"] + 280, r
    assert after["peak_rss_mb"] < big["peak_rss_mb"] - 200, r
    assert idle["peak_rss_mb"] + 140 <= medium["peak_rss_mb"] < big["peak_rss_mb"] - 100, r
    # The process's own high-water mark, which /usr/bin/time reads (as ru_maxrss) when the process exits, survives
    # the units after the big one (each unit once reset it). Not ru_maxrss itself here: a child of this large
    # pytest process inherits the RSS it was forked with as its ru_maxrss.
    assert r["process_peak_mb"] >= big["peak_rss_mb"] - 1, r
    assert all(m["seconds"] >= 0 and "children_peak_rss_mb" not in m for m in (idle, big, after, medium)), r


def test_a_child_that_did_the_work_is_counted() -> None:
    # In a fresh process: RUSAGE_CHILDREN is a lifetime maximum, so this (test) process's earlier children would
    # hide a smaller one.
    measure = ("import json, subprocess, sys\n"
               "from selfplay.resources import measure_unit\n"
               "with measure_unit() as cost:\n"
               f"    subprocess.run([sys.executable, '-c', 'b = bytearray({400 * MB})'], check=True)\n"
               "print(json.dumps(cost))\n")
    proc = subprocess.run([sys.executable, "-c", measure], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cost = json.loads(proc.stdout)
    assert cost["children_peak_rss_mb"] >= 400 and cost["seconds"] > 0, cost


@pytest.mark.xdist_group("tiny_spin_run")  # one worker runs the session's loop
def test_loop_records_costs_status_and_report_show_them(tiny_spin_run: Path) -> None:
    units = read_json(tiny_spin_run / "state.json")["units"]
    assert {"data", "eval/base", "iter_0/generate", "iter_0/train", "iter_0/eval"} <= units.keys()
    for name in ("eval/base", "iter_0/train", "iter_0/eval"):
        res = units[name]["resources"]
        assert res["seconds"] > 0, name
        if HAS_PROC:
            # a tiny model: the process holds torch, transformers and the model, far from a GB
            assert 100 < res["peak_rss_mb"] < 4096, (name, res)
    proc = subprocess.run([sys.executable, "-m", "selfplay.cli.main", "status", str(tiny_spin_run), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads(proc.stdout)
    by_unit = {u["unit"]: u for u in status["units"]}
    assert by_unit["iter_0/train"]["resources"] == units["iter_0/train"]["resources"]
    if HAS_PROC:
        peaks = {n: max(u["resources"].get("peak_rss_mb", 0), u["resources"].get("children_peak_rss_mb", 0))
                 for n, u in units.items()}
        assert status["peak_unit"] == {"unit": max(peaks, key=peaks.get), "peak_rss_mb": max(peaks.values())}
    report = (tiny_spin_run / "eval" / "report.md").read_text()
    assert "## Time and peak memory by unit" in report and "| iter_0/train |" in report
