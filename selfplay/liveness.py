"""Machines of a multi-node run watch each other through the shared run directory.

Every machine's loop writes ``run_dir/.machines/machine{r}.json`` (its host, PID and the time) every
:data:`HEARTBEAT_S` seconds. Whoever waits for another machine — the main machine for the other machines'
shards or at the training rendezvous, a follower for the main machine's state — calls :func:`check_peers`
while it waits: a machine whose process is gone (same host: its PID no longer exists) or whose heartbeat
stopped more than ``launch.heartbeat_timeout`` seconds ago is reported by name, instead of the wait lasting
until a collective's 30-minute timeout, or forever.

A heartbeat written before this machine started is from an earlier attempt of the run (the machine may not
have been restarted yet), so it is not held against that machine; a machine that never wrote one is waited
for as before (machines may start minutes apart).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selfplay.errors import UserError

HEARTBEAT_S = 2.0


class MachineLostError(UserError):
    """Another machine of a multi-node run stopped while this one needed it."""


class _Watch:
    def __init__(self, run_dir: Path, rank: int, machines: int, timeout: float) -> None:
        self.dir, self.rank, self.machines, self.timeout = Path(run_dir) / ".machines", rank, machines, timeout
        self.started = time.time()
        self.host = socket.gethostname()

    def path(self, rank: int) -> Path:
        return self.dir / f"machine{rank}.json"

    def beat(self, finished: bool = False) -> None:
        from selfplay.io import write_json

        write_json(self.path(self.rank), {"pid": os.getpid(), "host": self.host, "time": time.time(),
                                          "started": self.started, "finished": finished})

    def lost(self, rank: int) -> str | None:
        """Why machine ``rank`` counts as stopped, or None while it may still be alive."""
        from selfplay.io import read_json

        try:
            beat: dict[str, Any] = read_json(self.path(rank))
        except Exception:  # not written yet (not started), or being replaced right now
            return None
        if beat.get("finished") or beat.get("time", 0) < self.started:
            return None  # done, or a heartbeat of an earlier attempt: the machine may not be restarted yet
        age = time.time() - beat["time"]
        where = f"PID {beat.get('pid')} on {beat.get('host')}"
        if beat.get("host") == self.host and not _pid_alive(int(beat.get("pid", 0))):
            return f"its process ({where}) is gone; last heartbeat {age:.0f}s ago"
        if age > self.timeout:
            return f"no heartbeat from it ({where}) for {age:.0f}s (launch.heartbeat_timeout={self.timeout:g})"
        return None


_watch: _Watch | None = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


@contextmanager
def heartbeat(run_dir: Path, rank: int, machines: int, timeout: float) -> Iterator[None]:
    """While the body runs (a multi-node loop): beat every :data:`HEARTBEAT_S` s and let :func:`check_peers`
    watch the other machines. A single machine does nothing."""
    global _watch
    if machines < 2:
        yield
        return
    watch = _Watch(run_dir, rank, machines, timeout)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                watch.beat()
            except Exception:  # a full disk or a shared file system hiccup: the next beat tries again
                pass

    watch.beat()
    thread = threading.Thread(target=beat, name="machine-heartbeat", daemon=True)
    thread.start()
    _watch = watch
    ok = False
    try:
        yield
        ok = True
    finally:
        _watch = None
        stop.set()
        thread.join()
        if ok:
            try:
                watch.beat(finished=True)
            except Exception:
                pass


def check_peers() -> None:
    """Raise :class:`MachineLostError` naming the first other machine that stopped (outside a multi-node
    loop: nothing to check)."""
    watch = _watch
    if watch is None:
        return
    for rank in range(watch.machines):
        if rank == watch.rank:
            continue
        why = watch.lost(rank)
        if why is not None:
            raise MachineLostError(f"machine {rank} of {watch.machines} stopped: {why}. What the machines finished "
                                   "is kept: rerun the same command on every machine to resume.")
