"""User-facing errors.

Anything the user can fix (bad input file, unknown config key, missing model, offline hub access)
raises :class:`UserError`. The CLI prints its message without a traceback and exits with code 2;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import errno
import shutil
from collections.abc import Iterable
from pathlib import Path


class UserError(Exception):
    """An error caused by the user's input; printed as one message, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """Unknown config key, wrong type or invalid value."""


class DataError(UserError):
    """Malformed input data: names the file, the line/row and the field."""

    def __init__(self, message: str, *, path: object = None, line: int | None = None,
                 row: int | None = None, field: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        self.path, self.line, self.row, self.field = path, line, row, field
        self.reason = message
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class DiskFullError(UserError):
    """The disk filled up while writing ``path``: one message naming the file and the space needed (when
    known), exit code 3 — nothing was wrong with the input, and the rerun after freeing space continues."""

    exit_code = 3

    def __init__(self, path: object = None, needed: int | None = None) -> None:
        self.path, self.needed = path, needed
        where = f" while writing {path}" if path is not None else ""
        super().__init__(f"no space left on device{where}{_space(path, needed)}. Everything written before is "
                         "intact: free some space and rerun the same command to continue.")


def _space(path: object, needed: int | None) -> str:
    """" (needs about 12.0 MiB; 0.1 MiB free on /mnt)", as far as it is known."""
    parts = [f"needs about {_size(needed)}"] if needed else []
    free = free_bytes(path)
    if free is not None:
        parts.append(f"{_size(free)} free there")
    return f" ({'; '.join(parts)})" if parts else ""


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def free_bytes(path: object) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing ancestor); None if unknown."""
    if path is None:
        return None
    p = Path(str(path)).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


# Texts libraries put in errors that are ENOSPC underneath: safetensors ("I/O error: No space left on device
# (os error 28)"), Rust and C++ writers, quota limits.
_DISK_FULL_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, also when a library wrapped it in another exception type."""
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(exc) for text in _DISK_FULL_TEXTS)


def disk_full_error(exc: BaseException) -> DiskFullError | None:
    """``exc`` as a :class:`DiskFullError` when the disk was full (naming the file when ``exc`` does), else None."""
    if isinstance(exc, DiskFullError):
        return exc
    if not is_disk_full(exc):
        return None
    return DiskFullError(getattr(exc, "filename", None))


class MissingExtraError(UserError):
    """An optional dependency (extra) is needed but not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the optional package '{package}', which is not installed. "
            f"Install it with: pip install 'selfplay[{extra}]'"
        )


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
