"""What machine the numbers were taken on, and its measured physical limits.

The peaks are measured rather than taken from a datasheet: utilisation figures (MFU, fraction of the
decode bound) only mean something against what this machine, with this torch build and thread count,
actually delivers.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from selfplay.hardware import fast_bf16


def _best_seconds(fn: Callable[[], Any], reps: int) -> float:
    """Fastest of ``reps`` timed calls after one untimed warm-up call (the least-disturbed run)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak_gflops(dtype_name: str, threads: int, largest: int = 3072, budget_s: float = 0.25,
                       reps: int = 4) -> float:
    """Best square-matmul throughput in GFLOP/s (2·n³ FLOPs per n×n @ n×n), growing n from 256 up to
    ``largest`` while one matmul takes under ``budget_s``: seconds on any machine, even where a dtype is
    emulated (bf16 on an AVX2-only CPU ran at ~1 GFLOP/s, and n = 3072 alone took minutes there)."""
    import torch

    dtype = getattr(torch, dtype_name)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = 0.0
        for n in (256, 512, 1024, 2048, 3072):
            if n > largest:
                break
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            seconds = _best_seconds(lambda a=a, b=b: a @ b, reps)
            best = max(best, 2 * n**3 / seconds / 1e9)
            if seconds > budget_s:
                break
        return best
    finally:
        torch.set_num_threads(previous)


def memory_bandwidth_gbs(threads: int, mib: int = 256, reps: int = 6) -> dict[str, float]:
    """Streaming bandwidth over a buffer far larger than the caches: read-only (sum) and copy (read+write).

    ``read_gbs`` is what bounds decoding (weights and KV cache are read every step); ``copy_gbs`` counts
    bytes read plus bytes written, the usual STREAM-copy convention.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        src = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
        dst = torch.empty_like(src)
        nbytes = src.numel() * 4
        read = nbytes / _best_seconds(lambda: src.sum(), reps) / 1e9
        copy = 2 * nbytes / _best_seconds(lambda: dst.copy_(src), reps) / 1e9
        return {"read_gbs": read, "copy_gbs": copy}
    finally:
        torch.set_num_threads(previous)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))
    except OSError:
        pass
    return []


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def describe_machine(threads: int = 2, quick: bool = False, dtypes: tuple[str, ...] = ("float32", "bfloat16")
                     ) -> dict[str, Any]:
    """CPU, its relevant flags, cores, RAM, library versions, and the measured matmul peak of each dtype in
    ``dtypes`` (only those the run uses) and memory bandwidth.

    ``quick`` uses small sizes (smoke runs): the numbers are then only plumbing, not measurements.
    """
    largest, reps, mib = (256, 1, 16) if quick else (3072, 4, 256)
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "threads_used": threads,
        "ram_gib": round(_ram_gib(), 1),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "trl": _version("trl"),
        "load_average_at_start": list(os.getloadavg()),
        "auto_dtype": str(fast_bf16("cpu")),
    }
    info["matmul_peak_gflops"] = {name: matmul_peak_gflops(name, threads, largest, reps=reps) for name in dtypes}
    info["memory_bandwidth"] = memory_bandwidth_gbs(threads, mib, reps)
    return info
