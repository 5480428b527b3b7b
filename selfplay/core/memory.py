"""Give memory back between stages, so a loop's peak stays flat across iterations; the KV-cache budget."""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def release_memory() -> None:
    """Collect garbage, empty the CUDA cache, and return freed heap pages to the OS.

    Why malloc_trim: on CPU, PyTorch frees tensors to glibc's heap, which keeps the pages; without a
    trim, a loop's RSS grows by a model's worth of weights, gradients and optimizer state per stage.
    """
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            pass


# glibc's mallopt parameter: allocations at least this large get their own mapping, unmapped when freed.
_M_MMAP_THRESHOLD = -3
# glibc's largest dynamic threshold (on 64-bit): what the allocator converges to on its own after large frees.
_GLIBC_MAX_MMAP_THRESHOLD = 32 << 20


def _mallopt(param: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except (OSError, AttributeError):  # not glibc
        return False


def user_mmap_threshold() -> int | None:
    """The mmap threshold the user gave glibc (``MALLOC_MMAP_THRESHOLD_``, bytes), or None where there is none
    or glibc ignores it (not a number, or above its 32 MiB maximum)."""
    value = os.environ.get("MALLOC_MMAP_THRESHOLD_", "").strip()
    return int(value) if value.isdigit() and int(value) <= _GLIBC_MAX_MMAP_THRESHOLD else None


@contextmanager
def large_blocks_unmapped(threshold: int = 1 << 20) -> Iterator[None]:
    """Within the block, every allocation of at least ``threshold`` bytes gets its own mapping, returned to
    the OS when freed (glibc; a no-op elsewhere).

    Why: glibc raises its mmap threshold to the size of any mapped block that is freed (up to 32 MiB), so
    after the first step of training the activations (1-30 MB each) come from the heap, where gradients and
    optimizer state allocated between them pin the pages of freed ones. On the RISE quickstart's training
    that fragmentation was ~0.45 GB of the peak RSS (3.23 GB -> 2.79 GB above the baseline, measured with
    ``MALLOC_MMAP_THRESHOLD_``). Mapping costs a page fault per 4 kB first touched, small next to a training
    step; decoding allocates MB-sized logits every step, so the threshold goes back to glibc's own maximum
    after the block.

    A smaller ``MALLOC_MMAP_THRESHOLD_`` set by the user wins inside the block and stays in force after it:
    it trades time for memory (a small model's per-token activations, 0.5-1 MB, then leave no fragments
    either). The SPIN quickstart's second training unit alone (AVX2 CPU, fp32, 2026-12-07, one run each):
    1 MiB 2.95 / 2.96 GiB in 146 / 154 s, 512 KiB 2.72 GiB in 179 s, 128 KiB 2.50 GiB in 179 s, the same
    losses. glibc's ``hugetlb`` tunable (fewer page faults) made it slower still (240 s)."""
    user = user_mmap_threshold()
    _mallopt(_M_MMAP_THRESHOLD, threshold if user is None else min(user, threshold))
    try:
        yield
    finally:
        _mallopt(_M_MMAP_THRESHOLD, _GLIBC_MAX_MMAP_THRESHOLD if user is None else user)


def available_bytes() -> int | None:
    """Memory the OS can still give this process (``MemAvailable``), or None where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


KV_CACHE_ENV = "SELFPLAY_KV_CACHE_MB"
# The KV cache of one decode call on a CPU (HF backend): 1 GiB holds ~110 rows of 400 tokens of SmolLM2-135M
# in bf16 (23 kB per token), past the batch where decoding stops getting faster per token on a CPU.
CPU_KV_CACHE_BYTES = 1 << 30


def kv_cache_budget(device: str = "cpu") -> int:
    """Bytes the KV cache of one decode call may take: ``$SELFPLAY_KV_CACHE_MB`` when set, else 1 GiB on a
    CPU and half of the free memory of a CUDA device. A machine resource like the thread count, so not in
    the config (samples do not depend on it, and a run's fingerprints must not either)."""
    from selfplay.errors import UserError

    value = os.environ.get(KV_CACHE_ENV)
    if value:
        try:
            mb = float(value)
        except ValueError:
            mb = 0.0
        if mb <= 0:
            raise UserError(f"environment variable {KV_CACHE_ENV} must be a positive number of MiB, got {value!r}")
        return int(mb * 2**20)
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free // 2
    return CPU_KV_CACHE_BYTES
