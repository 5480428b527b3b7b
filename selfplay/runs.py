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
    """Reads and writes ``run_dir/state.json`` atomically after every change."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / "state.json"
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

    def ensure(self, unit: str, fp: str, outputs: list[Path], work: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        """Run ``work`` unless ``unit`` is done for ``fp`` (stale outputs deleted first); returns the unit's info.

        ``work`` returns the info to record (or None); an exception leaves the unit started, not done, so a
        rerun resumes inside it.
        """
        if not self.done(unit, fp):
            self.begin(unit, fp, outputs)
            self.finish(unit, fp, work() or {})
        return self.info(unit)

    def _save(self) -> None:
        write_json(self.path, {"units": self.units})
