"""Measurement plumbing shared by the benchmarks: A/B alternation, summary statistics, peak RSS.

Why alternate (A B A B ...) instead of all-A-then-all-B: the machine is shared and its speed drifts
(other processes, thermal and frequency changes); interleaving spreads any drift over both arms, and
the median of per-pair ratios cancels what is common to a pair.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console(stderr=True, highlight=False)


def summarize(values: list[float]) -> dict[str, float]:
    """Median and min–max of repeated measurements (the median resists one disturbed run)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def rss_mib() -> float:
    """Resident set size of this process now, from /proc/self/status (VmRSS), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def max_rss_mib() -> float:
    """Lifetime peak RSS of this process (getrusage ru_maxrss, KiB on Linux), in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Peak RSS above a baseline, sampled every ``interval`` s by a background thread.

    ``with RssSampler() as s: ...`` sets the baseline at entry; ``s.peak_delta`` is the peak above it.
    ``phase_of`` (called on every tick) names the current phase; ``s.phases`` then holds, per phase,
    the peak RSS above baseline and the first time the phase was seen — how the loop benchmark splits
    one process's run into iterations without touching the loop's code.
    """

    def __init__(self, interval: float = 0.02, phase_of: Callable[[], str] | None = None) -> None:
        self.interval = interval
        self.phase_of = phase_of
        self.baseline = 0.0
        self.peak = 0.0
        self.phases: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = 0.0

    def _tick(self) -> None:
        now = rss_mib()
        self.peak = max(self.peak, now)
        if self.phase_of is not None:
            name = self.phase_of()
            phase = self.phases.setdefault(name, {"start_s": time.perf_counter() - self._t0, "peak_mib": 0.0})
            phase["peak_mib"] = max(phase["peak_mib"], now - self.baseline)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._tick()

    def __enter__(self) -> RssSampler:
        self.baseline = self.peak = rss_mib()
        self._t0 = time.perf_counter()
        self._tick()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._tick()

    @property
    def peak_delta(self) -> float:
        return self.peak - self.baseline


class Profile:
    """torch.profiler over a block: ``table`` = top ops by self CPU time, and with ``memory`` also
    ``memory_table`` = top ops by memory they allocated themselves. Empty strings when disabled."""

    def __init__(self, enabled: bool, rows: int = 12, memory: bool = False) -> None:
        self.enabled, self.rows, self.memory, self._prof = enabled, rows, memory, None
        self.table = self.memory_table = ""

    def __enter__(self) -> Profile:
        if self.enabled:
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=self.memory)
            self._prof.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._prof is not None:
            self._prof.__exit__(*exc)
            averages = self._prof.key_averages()
            self.table = averages.table(sort_by="self_cpu_time_total", row_limit=self.rows, max_name_column_width=48)
            if self.memory:
                self.memory_table = averages.table(sort_by="self_cpu_memory_usage", row_limit=self.rows,
                                                   max_name_column_width=48)


def alternate(arms: dict[str, Callable[[int], dict[str, Any]]], pairs: int, warmup: bool = True,
              label: str = "") -> dict[str, list[dict[str, Any]]]:
    """Run every arm once as warm-up (discarded), then ``pairs`` rounds of A B C ...; returns results per arm.

    Each call gets its repetition index (-1 for the warm-up) and returns a dict of measurements.
    """
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
    rounds = ([-1] if warmup else []) + list(range(pairs))
    for rep in rounds:
        for name, arm in arms.items():
            tag = "warm-up" if rep < 0 else f"pair {rep + 1}/{pairs}"
            console.print(f"[bold]{label}[/] {tag}: {name} ...")
            t0 = time.perf_counter()
            out = arm(rep)
            console.print(f"[bold]{label}[/] {tag}: {name} done in {time.perf_counter() - t0:.1f}s  "
                          + ", ".join(f"{k}={v:.4g}" for k, v in out.items() if isinstance(v, float)))
            if rep >= 0:
                results[name].append(out)
    return results


def ratios(results: dict[str, list[dict[str, Any]]], key: str, num: str, den: str) -> dict[str, float]:
    """Per-pair ratios num/den of ``key`` (pairs ran back to back), summarized."""
    values = [a[key] / b[key] for a, b in zip(results[num], results[den]) if b[key]]
    return summarize(values) if values else {}


def run_worker(task: str, spec: dict[str, Any], log_path: Path, timeout: float = 1200,
               in_process: bool = False) -> dict[str, Any]:
    """Run one arm in a fresh ``python -m bench.worker`` process; returns the JSON it wrote.

    A fresh process per arm run makes peak memory comparable (freed memory is not handed back to the OS
    reliably, so a second arm in the same process would inherit the first's high-water mark) and keeps
    one arm's warm caches away from the next. Its stdout and stderr (progress bars, library logs) go to
    ``log_path``. ``in_process`` calls the task here instead: only for smoke runs, where start-up time
    matters more than clean memory numbers.
    """
    if in_process:
        from bench.worker import TASKS

        return TASKS[task](spec)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_path = log_path.with_suffix(".json")
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "bench.worker", task, json.dumps(spec), str(result_path)]
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                              cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"bench worker '{task}' failed (exit {proc.returncode}); log {log_path}:\n"
                           + "\n".join(tail))
    return json.loads(result_path.read_text())


def worker_arm(task: str, name: str, spec: dict[str, Any], data_key: str, data: Path, warm_data: Path,
               out_dir: Path, in_process: bool = False) -> Callable[[int], dict[str, Any]]:
    """One arm of a training benchmark for :func:`alternate`: round ``rep`` runs ``task`` on ``spec`` with
    ``data`` under ``data_key`` (``warm_data`` in the warm-up round, ``rep < 0``) in a fresh work directory
    under ``out_dir/work/name``, logs to ``out_dir/logs/name_<rep+1>.log``, and adds tokens/s."""
    import shutil

    def call(rep: int) -> dict[str, Any]:
        work = out_dir / "work" / name
        shutil.rmtree(work, ignore_errors=True)
        run = {**spec, data_key: str(warm_data if rep < 0 else data), "out_dir": str(work)}
        r = run_worker(task, run, out_dir / "logs" / f"{name}_{rep + 1}.log", in_process=in_process)
        shutil.rmtree(work, ignore_errors=True)
        return {**r, "tokens_per_s": r["tokens"] / r["seconds"]}
    return call
