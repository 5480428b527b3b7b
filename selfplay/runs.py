"""The run directory: its ``state.json`` (which unit of work is done, for which inputs) and its lock.

A unit (``iter_0/generate``, ``iter_1/train``, ...) is done for a *fingerprint*: a hash of its config slice
and of the fingerprints of the units it reads. Changing an input changes the fingerprints downstream of
it and nothing else, so a rerun redoes exactly those units; a unit started but not finished keeps its
partial output (generation and training resume inside it).

Two processes writing one output (a rerun started while the first still runs) would delete and replace
each other's files, so every stage that writes a run directory holds :func:`output_lock` on it: the second
process fails at once, naming the holder's PID. The lock is the operating system's (``filelock``: flock on
POSIX), so a killed holder leaves nothing that blocks a rerun.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selfplay.errors import UserError
from selfplay.io import read_json, write_json, writing
from selfplay.liveness import check_peers
from selfplay.resources import measure_unit

LOCK_NAME = ".selfplay.lock"
# Outputs this process holds (resolved path -> depth): a stage called inside another stage's output
# (the loop's train/generate under its run directory) must not lock again — a second flock by the same
# process on another descriptor would refuse it.
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


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

    def finish(self, unit: str, fp: str, info: dict[str, Any] | None = None,
               resources: dict[str, float] | None = None) -> None:
        """Mark ``unit`` done with its ``info`` and what it cost (``resources``: :func:`measure_unit`)."""
        self.units[unit] = {"fingerprint": fp, "done": True, "info": info or {},
                            **({"resources": resources} if resources else {})}
        self._save()

    def resources(self, unit: str) -> dict[str, float]:
        """Seconds and peak memory of a done unit's last run (empty for units recorded before they were)."""
        return self.units.get(unit, {}).get("resources", {})

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
            with measure_unit() as cost:
                info = work() or {}
            self.finish(unit, fp, info, cost)
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
            check_peers()  # the main machine stopped: say so instead of waiting for it forever
            time.sleep(self.poll_s)
            waited += self.poll_s

    def _save(self) -> None:
        write_json(self.path, {"units": self.units})


class OutputInUseError(UserError):
    """Another process holds the lock on an output directory or file."""


@contextmanager
def output_lock(output: Path, what: str, *, enabled: bool = True) -> Iterator[None]:
    """Hold ``output`` (a directory, or one file such as a generate shard) for this process while the body runs.

    The lock file is ``output/.selfplay.lock`` for an existing directory, else ``.<name>.lock`` beside the
    file; the holder's PID and command go to a ``.owner`` file beside it (the lock file itself is the
    OS's to hold). Re-entrant: inside an output this process already holds, nothing more is locked.
    ``enabled=False`` (processes started by a distributed launcher, whose parent holds the lock) does nothing.
    Raises :class:`OutputInUseError` at once, naming the holder, when another process holds it.
    """
    from filelock import FileLock, Timeout

    if not enabled:
        yield
        return
    output = Path(output).resolve()
    with _held_guard:
        covered = any(output == h or h in output.parents for h in _held)
        if covered:
            _held[output] = _held.get(output, 0) + 1
    if covered:
        try:
            yield
        finally:
            _release_depth(output)
        return
    path = output / LOCK_NAME if output.is_dir() else output.parent / f".{output.name}.lock"
    owner = path.with_name(path.name + ".owner")
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise OutputInUseError(f"{output} is in use by another selfplay process ({_holder(owner)}); wait for it "
                               f"to finish or stop it, or use another output.") from None
    try:
        with writing(owner):
            owner.write_text(json.dumps({"pid": os.getpid(), "command": f"selfplay {what}",
                                         "host": socket.gethostname(),
                                         "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        with _held_guard:
            _held[output] = 1
        try:
            yield
        finally:
            _release_depth(output)
            owner.unlink(missing_ok=True)  # while still holding the lock: a next holder's file is never removed
    finally:
        lock.release()


def lock_holder(output: Path) -> dict[str, Any] | None:
    """The process holding ``output``'s lock ({pid, command, host, since} as far as known), or None when free.

    Probes the OS lock without waiting and without writing (the lock file is opened read-only; when it is free
    the probe holds it for an instant: a second process starting in that instant is refused, naming no PID).
    """
    output = Path(output).resolve()
    path = output / LOCK_NAME if output.is_dir() else output.parent / f".{output.name}.lock"
    if not path.exists():
        return None  # never locked
    with _held_guard:
        if output in _held:
            return {"pid": os.getpid(), "command": "this process"}
    if not _os_lock_taken(path):
        return None
    try:
        return json.loads(path.with_name(path.name + ".owner").read_text())
    except (OSError, ValueError):
        return {"pid": None}  # locked, its owner file not written yet


def _os_lock_taken(path: Path) -> bool:
    """Whether another open file description holds the flock that filelock takes on ``path``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: filelock's own probe (it may create or truncate the lock file)
        from filelock import FileLock, Timeout

        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor releases a lock the probe took
    return False


def prepared_data_dir(run_dir: Path) -> Path | None:
    """The run's prepared data directory: the one state.json recorded (relative to where the loop ran, or
    the run directory's own ``data/``), else ``run_dir/data``; None when there is none yet."""
    run_dir = Path(run_dir)
    candidates = [run_dir / "data"]
    try:
        recorded = Path(read_json(run_dir / "state.json")["units"]["data"]["info"]["dir"])
        candidates = [recorded, run_dir / recorded.name] + candidates
    except (UserError, OSError, KeyError, TypeError, ValueError):
        pass
    return next((c for c in candidates if (c / "train.jsonl").is_file()), None)


def _release_depth(output: Path) -> None:
    with _held_guard:
        _held[output] -= 1
        if not _held[output]:
            del _held[output]


def _holder(owner: Path) -> str:
    """'PID 123, selfplay loop, since ...' from the holder's owner file (it writes it just after locking)."""
    info: dict[str, Any] = {}
    for _ in range(20):  # a file left by a killed holder is replaced within moments by the live one's
        try:
            info = json.loads(owner.read_text())
        except (OSError, ValueError):
            info = {}
        here = info.get("host") == socket.gethostname()
        if info and (not here or _alive(info.get("pid"))):
            break
        time.sleep(0.05)
    if not info:
        return "PID unknown"
    host = "" if info.get("host") == socket.gethostname() else f" on {info.get('host')}"
    return f"PID {info.get('pid')}{host}, {info.get('command')}, since {info.get('since')}"


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True  # another user's process
    return True
