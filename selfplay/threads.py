"""CPU threads: how many a process uses, and how idle ones wait, so selfplay shares a busy machine.

Why this exists: with one or two other CPU-heavy processes on a 2-core machine the agent quickstart took 8x
its idle time — far more than a fair share. PyTorch's CPU wheels run their parallel regions on GNU OpenMP
(``libgomp``), whose idle threads by default *spin* for 300,000 pause instructions (milliseconds) before
sleeping, and whose thread count comes from the CPUs the process may run on, not from the CPUs it can get.
Spinning threads of two processes steal each other's cores while the thread that has real work waits for
a time slice. Here:

* **how many**: ``SELFPLAY_NUM_THREADS`` (threads for the whole run on this machine; launched workers share
  it), else ``OMP_NUM_THREADS`` (per process, the standard meaning, passed to launched workers as it is),
  else the cores this process may actually use: its CPU affinity (``os.sched_getaffinity``, e.g. ``taskset``
  or a container's cpuset) capped by a cgroup CPU quota (``cpu.max``: a container limited to 2 CPUs on a
  64-core host gets 2 threads, not 64);
* **how idle threads wait**: ``GOMP_SPINCOUNT`` = :data:`SPIN_COUNT` (a spin of well under a millisecond
  between two parallel regions, then sleep) unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set. The
  runtime reads both once, when torch is first imported, so :func:`setup` runs before that (the CLI's and
  the worker entry point's first lines).

Launched workers (:mod:`selfplay.core.launchers`) get :func:`worker_env`: their share of the threads, never
all of them each. Nothing here imports torch unless it is already imported.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from selfplay.errors import UserError

ENV = "SELFPLAY_NUM_THREADS"
# Busy-wait iterations of an idle libgomp thread before it sleeps: long enough to stay awake across the
# Python between two ops of a decode step (microseconds), short enough not to burn a time slice a
# competing process needs (libgomp's own default is 300,000).
SPIN_COUNT = 10_000
# What setup() found and chose: {"threads": n, "user_omp": the user's OMP_NUM_THREADS or ""}.
_setup_done: dict[str, int | str] = {}


def _positive(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"environment variable {name} must be a positive integer (threads), got {value!r}")
    return n


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs this process's cgroup may use per unit of time (``cpu.max`` quota / period; cgroup v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), or None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """Cores this process may run on (affinity), capped by its cgroup's CPU quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


def total_threads() -> tuple[int, str]:
    """Threads this run may use on this machine, and where the number comes from."""
    if os.environ.get(ENV):
        return _positive(ENV, os.environ[ENV]), ENV
    return usable_cores(), "usable cores"


def process_threads(processes: int = 1) -> tuple[int, str]:
    """Threads for each of ``processes`` processes sharing this machine's run: ``OMP_NUM_THREADS`` as it is
    (per process), else the run's :func:`total_threads` shared out (at least one each)."""
    if os.environ.get(ENV):
        total, source = total_threads()
        return max(1, total // max(1, processes)), source
    omp = user_omp_threads()
    if omp:
        return _positive("OMP_NUM_THREADS", omp.split(",")[0]), "OMP_NUM_THREADS"
    total, source = total_threads()
    return max(1, total // max(1, processes)), source


def user_omp_threads() -> str:
    """The user's ``OMP_NUM_THREADS`` ("" when unset): read before :func:`setup` wrote this process's own."""
    if _setup_done:
        return str(_setup_done["user_omp"])
    return os.environ.get("OMP_NUM_THREADS", "")


def wait_policy_env() -> dict[str, str]:
    """The OpenMP wait settings to add to an environment (none when the user chose a policy)."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return {}
    return {"GOMP_SPINCOUNT": str(SPIN_COUNT)}


def worker_env(processes: int) -> dict[str, str]:
    """Environment for one of ``processes`` launched CPU workers: its share of the threads, and the wait policy."""
    threads, _ = process_threads(processes)
    env = {"OMP_NUM_THREADS": str(threads), **wait_policy_env()}
    if os.environ.get(ENV):
        env[ENV] = str(threads)  # the worker's whole budget: it launches nothing itself
    return env


# oneDNN keeps every kernel it builds (its primitive cache, and ideep's LRU cache in PyTorch's CPU ops), 1024
# each by default; in bf16 each distinct GEMM shape keeps several MB (scratchpads, AMX kernels), and training on
# packed batches or prefilling prompt groups meets a new shape almost every call. Measured on the Intel Xeon with
# AMX: bf16 linears over 220 row counts grew RSS by 2.1-2.4 GiB with the defaults, by 0.12 GiB with 16; the SPIN
# quickstart's training unit peaked at 3.50 / 3.52 GiB with the defaults and 3.06 / 3.09 GiB with 64, in
# 48.2 / 53.9 s and 47.1 / 48.0 s, with identical losses (two alternating runs). fp32 kernels keep little.
KERNEL_CACHE_ENV = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
KERNEL_CACHE_CAPACITY = 64


def setup() -> int:
    """Configure this process's threads (idempotent; call before torch is imported where possible).

    Sets ``OMP_NUM_THREADS`` (torch, MKL and oneDNN read it at import) and the wait policy, and
    ``torch.set_num_threads`` when torch is already imported; bounds oneDNN's kernel caches
    (:data:`KERNEL_CACHE_ENV`, unless the user set them). Returns the thread count.
    """
    if _setup_done:
        return int(_setup_done["threads"])
    threads, _ = process_threads(1)
    _setup_done["user_omp"] = os.environ.get("OMP_NUM_THREADS", "")
    for key, value in wait_policy_env().items():
        os.environ.setdefault(key, value)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))  # HF tokenizers' thread pool
    for key in KERNEL_CACHE_ENV:
        os.environ.setdefault(key, str(KERNEL_CACHE_CAPACITY))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    _setup_done["threads"] = threads
    return threads
