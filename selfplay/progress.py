"""The one stderr console and the progress bars of every long stage (:func:`progress_bar`).

Progress bars also show in logs: rich redraws a bar only on a terminal, so when stderr is a file or a pipe
(nohup, CI, a cluster's job log) a heartbeat prints each unfinished task's line every ``HEARTBEAT_S``
seconds instead of nothing until the end."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Logs capture stderr: give them room for wide tables (RISE's and the agents' have 14 columns) instead of
# rich's 80-column default.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 180)

HEARTBEAT_S = 30.0


@contextmanager
def logged_progress(*columns: Any, disable: bool = False, out: Console | None = None) -> Iterator[Progress]:
    """``rich.progress.Progress(*columns)`` on stderr, plus the heartbeat when stderr is not a terminal."""
    out = out or console
    with Progress(*columns, console=out, disable=disable) as progress:
        stop = threading.Event()
        if not disable and not out.is_terminal:
            def beat() -> None:
                while not stop.wait(HEARTBEAT_S):
                    running = [t for t in progress.tasks if not t.finished]
                    if running:
                        out.print(progress.make_tasks_table(running))

            threading.Thread(target=beat, name="progress-heartbeat", daemon=True).start()
        try:
            yield progress
        finally:
            stop.set()


class Bar:
    """A single task on a rich Progress; ``advance`` and ``update`` are no-ops when disabled."""

    def __init__(self, progress: Progress, task: int) -> None:
        self._p, self._t = progress, task

    def advance(self, n: float = 1) -> None:
        self._p.advance(self._t, n)

    def update(self, **kw: object) -> None:
        self._p.update(self._t, **kw)  # type: ignore[arg-type]


@contextmanager
def progress_bar(description: str, total: int | None, completed: int = 0, disable: bool = False,
                 extra: str = "") -> Iterator[Bar]:
    """``with progress_bar("train", total=n) as bar: bar.advance()`` — to stderr, so stdout stays clean."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    if extra:
        columns.append(TextColumn(extra))
    with logged_progress(*columns, disable=disable) as p:
        yield Bar(p, p.add_task(description, total=total, completed=completed))


# Messages libraries print on every run that tell a user nothing they can act on.
KNOWN_NOISE = (
    # DeepSpeed (the gpu/dev extras), imported by accelerate on a machine without a GPU.
    "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.",
)
# Deprecations inside the libraries' own calls (peft calling transformers), not in our code.
KNOWN_NOISE_WARNINGS = (r"`is_gradient_checkpointing` is deprecated",)


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in KNOWN_NOISE)


def quiet_libraries() -> None:
    """One progress display per stage: turn off the libraries' own tqdm bars (transformers' "Loading
    weights", the hub's downloads, datasets' maps), which would interleave with ours, and drop their
    known noise (:data:`KNOWN_NOISE`). Set before those libraries are imported (they read the variables
    once); a user's own setting wins. Real warnings still show."""
    import os
    import warnings

    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # DeepSpeed sets its logger's level and handler when imported, but keeps a filter added before.
    logging.getLogger("DeepSpeed").addFilter(_DropKnownNoise())
    for pattern in KNOWN_NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=FutureWarning)
