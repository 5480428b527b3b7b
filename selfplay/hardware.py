"""What the hardware computes fast: the dtype behind ``model.dtype: auto`` and ``train.precision: auto``.

bf16 halves the bytes a decode step reads, so it is about twice as fast where the hardware has fast bf16
units: CUDA GPUs that report bf16 support, and x86 CPUs with AMX or a fast AVX512-BF16. Elsewhere PyTorch
emulates bf16 matmuls, and they run 30-100x SLOWER than fp32 (measured on an AVX2-only machine: a
decode-shaped 16x576 @ 576x1536 matmul at 1.2 GFLOP/s in bf16 against 35-38 in fp32).

The flags alone do not settle it. On an Intel Xeon with AVX512-BF16 but no AMX (2 cores, 2026-12-07) bf16
matmuls ran at 0.55-0.73x fp32 (oneDNN, 32-512 rows), and the SPIN quickstart's training unit with bf16
autocast took 104 / 85 s against 58 / 59 s in fp32 (two alternating rounds; sampling showed no measurable
difference either way). So on a CPU with bf16 instructions, ``auto`` picks bf16 only where a short probe (:func:`bf16_probe`,
~0.1 s: fp32 and bf16 matmuls of a training shape, alternated) finds bf16 at least ``BF16_MIN_SPEEDUP``x
faster. The probe runs once per machine and is kept in ``$SELFPLAY_CACHE/hardware/`` under the CPU's name,
flags and the torch version, so every later process on the machine picks the same dtype, busy or idle; a CPU
without bf16 instructions is decided by its flags (no probe).
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from selfplay.errors import DiskFullError
from selfplay.io import atomic_write_text, cache_root

# CPU flags that mean native bf16 matrix math (Linux names).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# bf16 must beat fp32 by this factor in the probe: autocast also pays for casting the weights at every forward,
# and where bf16 matmuls ran at 0.6-0.7x fp32 sampling was no faster in bf16 (module docstring).
BF16_MIN_SPEEDUP = 1.2
# The probe's matmul: a training step's tokens through SmolLM2-135M's MLP shape (rows x hidden @ hidden x inner).
PROBE_SHAPE = (256, 576, 1536)
# Flags worth naming in logs and benchmark reports.
REPORTED_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo does not exist, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AVX512-BF16 or AMX); whether they are faster than
    fp32 here is :func:`bf16_probe`'s question."""
    return any(f in cpu_flags() for f in BF16_CPU_FLAGS)


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved dtype name ("float32", "bfloat16", "float16") and why it was chosen."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def fast_bf16(device: str) -> DtypeChoice:
    """bf16 where ``device`` ("cpu", "cuda", "cuda:1") computes it natively and fast, else fp32, with the reason."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_bf16_supported():
            return DtypeChoice("bfloat16", f"{torch.cuda.get_device_name()} supports bf16")
        return DtypeChoice("float32", "this GPU has no bf16 support")
    if cpu_has_bf16():
        found = "/".join(f for f in BF16_CPU_FLAGS if f in cpu_flags())
        probe = bf16_probe()
        if probe.speedup >= BF16_MIN_SPEEDUP:
            return DtypeChoice("bfloat16", f"CPU has {found}; bf16 matmuls {probe.speedup:.2f}x fp32 here")
        return DtypeChoice("float32", f"CPU has {found}, but its bf16 matmuls run at {probe.speedup:.2f}x fp32 here; "
                                      f"probe kept in {probe.path}")
    machine = platform.machine() or "this CPU"
    return DtypeChoice("float32", f"{machine} CPU without bf16 units (bf16 would be emulated, much slower)")


@dataclass(frozen=True)
class Bf16Probe:
    """bf16 matmul throughput over fp32 on this CPU (median of alternated rounds) and where it is kept."""

    speedup: float
    path: Path


def _probe_key() -> str:
    """What the probe's answer depends on: the CPU (name and flags) and the torch build that runs the matmuls."""
    import torch

    ident = json.dumps([describe_cpu(), sorted(cpu_flags()), torch.__version__])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def measure_bf16_speedup(rounds: int = 5, repeats: int = 4) -> float:
    """fp32 time / bf16 time of ``PROBE_SHAPE`` matmuls, each round timing both back to back (so a busy
    machine slows both sides of a ratio alike); the median ratio. About 0.1 s on 2 cores."""
    import torch

    rows, inner, outer = PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    fp32 = (torch.randn(rows, inner, generator=gen), torch.randn(inner, outer, generator=gen))
    bf16 = tuple(t.bfloat16() for t in fp32)

    def seconds(a: torch.Tensor, b: torch.Tensor) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        return time.perf_counter() - start

    seconds(*fp32), seconds(*bf16)  # warm-up: oneDNN builds its kernels on first use
    return statistics.median(seconds(*fp32) / seconds(*bf16) for _ in range(rounds))


@functools.lru_cache(maxsize=1)
def bf16_probe() -> Bf16Probe:
    """The probe's answer for this machine: read from the cache, else measured now and kept there (an
    unwritable cache only means the next process measures again)."""
    path = cache_root() / "hardware" / f"bf16-probe-{_probe_key()}.json"
    try:
        return Bf16Probe(float(json.loads(path.read_text())["speedup"]), path)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    import torch

    speedup = round(measure_bf16_speedup(), 4)  # as every later process reads it back
    record = {"speedup": speedup, "cpu": describe_cpu(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "shape": list(PROBE_SHAPE),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    except (OSError, DiskFullError):  # not kept: the next process measures again (a full disk is the run's
        pass                           # own writes' to report)
    return Bf16Probe(speedup, path)


def resolve_dtype_name(dtype: str, device: str) -> DtypeChoice:
    """``auto`` -> :func:`fast_bf16`; an explicit dtype is kept (the user asked for it)."""
    if dtype == "auto":
        return fast_bf16(device)
    return DtypeChoice(dtype, "set in the config")


def describe_cpu() -> str:
    """One line naming the CPU and its relevant flags, for logs and benchmark reports."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or platform.machine()
    flags = [f for f in REPORTED_CPU_FLAGS if f in cpu_flags()]
    return f"{model or 'unknown CPU'} [{' '.join(flags) or 'no AVX2/AVX-512 flags'}]"
