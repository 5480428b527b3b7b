"""Time and peak memory per unit: measured for real (allocations in this process and in a child), recorded in
state.json by the loop, shown by `selfplay status` and in report.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from selfplay.io import read_json
from selfplay.resources import _reset_high_water_mark, measure_unit

MB = 2**20


def _can_reset() -> bool:
    return sys.platform.startswith("linux") and _reset_high_water_mark()


@pytest.mark.skipif(not _can_reset(), reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")
def test_each_unit_gets_its_own_peak() -> None:
    with measure_unit() as idle:
        pass
    with measure_unit() as big:
        block = bytearray(300 * MB)  # bytearray zero-fills: every page is touched
        del block
    with measure_unit() as after:  # the high-water mark was reset: the freed 300 MB do not count here
        pass
    assert big["peak_rss_mb"] >= idle["peak_rss_mb"] + 280, (idle, big)
    assert after["peak_rss_mb"] < big["peak_rss_mb"] - 200, (big, after)
    assert all(m["seconds"] >= 0 for m in (idle, big, after)) and "children_peak_rss_mb" not in big


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
        if _can_reset():
            # a tiny model: the process holds torch, transformers and the model, far from a GB
            assert 100 < res["peak_rss_mb"] < 4096, (name, res)
    proc = subprocess.run([sys.executable, "-m", "selfplay.cli.main", "status", str(tiny_spin_run), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads(proc.stdout)
    by_unit = {u["unit"]: u for u in status["units"]}
    assert by_unit["iter_0/train"]["resources"] == units["iter_0/train"]["resources"]
    if _can_reset():
        peaks = {n: max(u["resources"].get("peak_rss_mb", 0), u["resources"].get("children_peak_rss_mb", 0))
                 for n, u in units.items()}
        assert status["peak_unit"] == {"unit": max(peaks, key=peaks.get), "peak_rss_mb": max(peaks.values())}
    report = (tiny_spin_run / "eval" / "report.md").read_text()
    assert "## Time and peak memory by unit" in report and "| iter_0/train |" in report
