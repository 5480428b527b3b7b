"""What a unit of work cost: wall time and peak resident memory, recorded per unit in ``state.json``.

The loop's peak memory is the largest of its units' peaks, so the unit that sets it is the one to look at
(``selfplay status RUN_DIR`` lists them; ``report.md`` has the table). The process's peak is the kernel's
high-water mark (``VmHWM``), reset at the start of each unit by writing ``5`` to ``/proc/self/clear_refs``
(Linux >= 4.0); elsewhere, or where the reset is refused, only the time is recorded. Work done in child
processes (sharded stages on several processes, training ranks) shows as ``children_peak_rss_mb``: the
largest peak of a child reaped during the unit (``RUSAGE_CHILDREN``), recorded only when it grew during
the unit, since the kernel keeps that maximum for the process's whole life.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _high_water_mark_mb() -> float | None:
    """This process's peak RSS since the last reset (``VmHWM``), in MiB; None where /proc has no such line."""
    try:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def _reset_high_water_mark() -> bool:
    """Start a new peak at the current RSS; False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


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
    """Measure the block: the yielded dict holds, after it, ``seconds``, ``peak_rss_mb`` (this process, where
    the high-water mark could be reset) and ``children_peak_rss_mb`` (where a child reaped inside the block
    set a new peak). Filled in also when the block raises."""
    measured: dict[str, float] = {}
    own = _reset_high_water_mark()
    children_before = _children_peak_mb()
    t0 = time.perf_counter()
    try:
        yield measured
    finally:
        measured["seconds"] = round(time.perf_counter() - t0, 3)
        peak = _high_water_mark_mb() if own else None
        if peak is not None:
            measured["peak_rss_mb"] = round(peak, 1)
        children = _children_peak_mb()
        if children > children_before:
            measured["children_peak_rss_mb"] = round(children, 1)
