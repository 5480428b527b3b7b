"""What a unit of work cost: wall time and peak resident memory, recorded per unit in ``state.json``.

The loop's peak memory is the largest of its units' peaks, so the unit that sets it is the one to look at
(``selfplay status RUN_DIR`` lists them; ``report.md`` has the table). A unit that raises the process's peak
RSS gets it exactly: the kernel's high-water mark (``VmHWM``) after the unit. A unit that stays below an earlier
unit's peak gets the largest RSS a thread samples every 20 ms during it (``/proc/self/statm``), which can miss
a spike shorter than that. The high-water mark is never reset (until 2026-12-07 it was, through
``/proc/self/clear_refs``, which left ``/usr/bin/time`` and anything else reading ``ru_maxrss`` with the last
unit's peak instead of the run's). Elsewhere than Linux only the time is recorded. Work done in child
processes (sharded stages on several processes, training ranks) shows as ``children_peak_rss_mb``: the
largest peak of a child reaped during the unit (``RUSAGE_CHILDREN``), recorded only when it grew during
the unit, since the kernel keeps that maximum for the process's whole life.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_STATUS = Path("/proc/self/status")
_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _high_water_mark_mb() -> float | None:
    """This process's peak RSS so far (``VmHWM``), in MiB; None where /proc has no such line."""
    try:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def _rss_mb() -> float | None:
    """This process's resident set now, in MiB; None where /proc has no ``statm``."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE / 2**20
    except (OSError, IndexError, ValueError):
        return None


class _RssSampler:
    """The largest RSS seen every ``interval`` seconds by a daemon thread, from start to :meth:`stop`.

    Torch's kernels release the GIL, so the thread samples while a model computes; a long operation that holds
    the GIL is sampled before and after only."""

    def __init__(self, interval: float = 0.02) -> None:
        self.peak = _rss_mb() or 0.0
        self._interval, self._stop = interval, threading.Event()
        self._thread = threading.Thread(target=self._run, name="selfplay-rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, _rss_mb() or 0.0)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_mb() or 0.0)


def _children_peak_mb() -> float:
    """The largest peak RSS of any child process reaped so far, in MiB (ru_maxrss: kB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@contextmanager
def measure_unit() -> Iterator[dict[str, float]]:
    """Measure the block: the yielded dict holds, after it, ``seconds``, ``peak_rss_mb`` (this process: exact
    where the block raised the process's peak, else sampled; Linux only) and ``children_peak_rss_mb`` (where a
    child reaped inside the block set a new peak). Filled in also when the block raises."""
    measured: dict[str, float] = {}
    peak_before = _high_water_mark_mb()
    sampler = _RssSampler() if peak_before is not None else None
    children_before = _children_peak_mb()
    t0 = time.perf_counter()
    try:
        yield measured
    finally:
        measured["seconds"] = round(time.perf_counter() - t0, 3)
        if sampler is not None:
            sampled, peak_after = sampler.stop(), _high_water_mark_mb()
            # A new process peak was reached inside the block (nothing outside it ran in between): exact.
            peak = peak_after if peak_after is not None and peak_after > peak_before else sampled
            measured["peak_rss_mb"] = round(peak, 1)
        children = _children_peak_mb()
        if children > children_before:
            measured["children_peak_rss_mb"] = round(children, 1)
