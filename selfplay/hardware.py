"""What the hardware computes fast: the dtype behind ``model.dtype: auto`` and ``train.precision: auto``.

bf16 halves the bytes a decode step reads, so it is about twice as fast where the hardware has bf16
units: CUDA GPUs that report bf16 support, and x86 CPUs with AVX512-BF16 or AMX. Elsewhere PyTorch
emulates bf16 matmuls, and they run 30-100x SLOWER than fp32 (measured on an AVX2-only machine: a
decode-shaped 16x576 @ 576x1536 matmul at 1.2 GFLOP/s in bf16 against 35-38 in fp32). So the choice is
read off the machine every time a process starts, never written into a config.

Detection reads the CPU's feature flags (``/proc/cpuinfo``, which also names them for a benchmark
report) rather than timing a probe: flags give the same answer on a busy machine as on an idle one, so
two runs of the same config on one machine always pick the same dtype.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

# CPU flags that mean native bf16 matrix math (Linux names).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
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
    """True when this CPU has bf16 matrix instructions (AVX512-BF16 or AMX)."""
    return any(f in cpu_flags() for f in BF16_CPU_FLAGS)


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved dtype name ("float32", "bfloat16", "float16") and why it was chosen."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def fast_bf16(device: str) -> DtypeChoice:
    """bf16 where ``device`` ("cpu", "cuda", "cuda:1") computes it natively, else fp32, with the reason."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_bf16_supported():
            return DtypeChoice("bfloat16", f"{torch.cuda.get_device_name()} supports bf16")
        return DtypeChoice("float32", "this GPU has no bf16 support")
    if cpu_has_bf16():
        found = [f for f in BF16_CPU_FLAGS if f in cpu_flags()]
        return DtypeChoice("bfloat16", f"CPU has {'/'.join(found)}")
    machine = platform.machine() or "this CPU"
    return DtypeChoice("float32", f"{machine} CPU without bf16 units (bf16 would be emulated, much slower)")


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
