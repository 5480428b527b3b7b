"""Give memory back between stages, so a loop's peak stays flat across iterations."""

from __future__ import annotations

import ctypes
import gc
import sys


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
