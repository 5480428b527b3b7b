"""One rich progress bar style for every long stage."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from selfplay.progress import logged_progress


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
