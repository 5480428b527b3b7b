"""The run directory and its ``state.json``: which unit of work is done, for which inputs.

A unit (``iter_0/generate``, ``iter_1/train``, ...) is done for a *fingerprint*: a hash of its config slice
and of the fingerprints of the units it reads. Changing an input changes the fingerprints downstream of
it and nothing else, so a rerun redoes exactly those units; a unit started but not finished keeps its
partial output (generation and training resume inside it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfplay.io import read_json, write_json


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunState:
    """Reads and writes ``run_dir/state.json`` atomically after every change.

    On a multi-node run every machine runs the same loop, and only the main machine writes the state: the
    others are *followers* (``follower=True``). A follower waits until the main machine has started each
    unit with the same fingerprint (stale outputs are deleted by then), does its own share of the units
    every machine works on (its generation shards, its training processes), and waits until the main
    machine records the unit done before it moves on.
    """

    def __init__(self, run_dir: Path, follower: bool = False, poll_s: float = 2.0) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / "state.json"
        self.follower, self.poll_s = follower, poll_s
        self.units: dict[str, dict[str, Any]] = read_json(self.path)["units"] if self.path.exists() else {}

    def done(self, unit: str, fp: str) -> bool:
        u = self.units.get(unit)
        return bool(u and u.get("fingerprint") == fp and u.get("done"))

    def info(self, unit: str) -> dict[str, Any]:
        return self.units.get(unit, {}).get("info", {})

    def begin(self, unit: str, fp: str, outputs: list[Path]) -> None:
        """Mark ``unit`` started; if it last ran with other inputs, delete its stale outputs first."""
        u = self.units.get(unit)
        if u is None or u.get("fingerprint") != fp:
            for p in outputs:
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        self.units[unit] = {"fingerprint": fp, "done": False}
        self._save()

    def finish(self, unit: str, fp: str, info: dict[str, Any] | None = None) -> None:
        self.units[unit] = {"fingerprint": fp, "done": True, "info": info or {}}
        self._save()

    def ensure(self, unit: str, fp: str, outputs: list[Path], work: Callable[[], dict[str, Any] | None], *,
               every_machine: bool = False) -> dict[str, Any]:
        """Run ``work`` unless ``unit`` is done for ``fp`` (stale outputs deleted first); returns the unit's info.

        ``work`` returns the info to record (or None); an exception leaves the unit started, not done, so a
        rerun resumes inside it. ``every_machine``: on a follower, ``work`` runs too (its share of the unit).
        """
        if self.follower:
            return self._follow(unit, fp, work if every_machine else None)
        if not self.done(unit, fp):
            self.begin(unit, fp, outputs)
            self.finish(unit, fp, work() or {})
        return self.info(unit)

    def _follow(self, unit: str, fp: str, work: Callable[[], Any] | None) -> dict[str, Any]:
        self._wait_for(unit, fp, done=False)
        if work is not None and not self.done(unit, fp):
            work()
        self._wait_for(unit, fp, done=True)
        return self.info(unit)

    def _wait_for(self, unit: str, fp: str, done: bool) -> None:
        """Poll the main machine's state until ``unit`` is started (or done) with fingerprint ``fp``."""
        import time

        from selfplay.progress import console

        waited = 0.0
        while True:
            self.units = read_json(self.path)["units"] if self.path.exists() else {}
            u = self.units.get(unit)
            if u and u.get("fingerprint") == fp and (u.get("done") or not done):
                return
            if waited % 60 < self.poll_s:
                console.print(f"waiting for the main machine to {'finish' if done else 'start'} {unit}")
            time.sleep(self.poll_s)
            waited += self.poll_s

    def _save(self) -> None:
        write_json(self.path, {"units": self.units})
