"""The real CLI in its own process, without paying the interpreter's start-up for it each time.

Why: the suite starts the CLI as a process some fifty times (tests that SIGKILL a run, several processes,
locks held by another process). Each ``python -m selfplay.cli.main`` imports torch and transformers' modeling
stack first, about 4-6 CPU-seconds on this 2-core machine: a third of the suite's CPU time went there.

How: a ``multiprocessing`` fork server (one per pytest process) imports those libraries once, with nothing
else running in it; each command is a process forked from it that runs ``selfplay.cli.main.main()`` with the
test's arguments, environment, working directory, stdout and stderr, exactly as ``python -m
selfplay.cli.main ARGS`` would after its imports. What it launches (sampling workers, ``accelerate launch``
and its training processes) are started by the CLI's own code as ordinary processes, so the launchers are
tested as users run them. What a fork skips is the interpreter's start and the CLI's imports; the tests of
those (``threads.setup()`` before torch is imported, the import layers) start real interpreters.

:class:`CLIProcess` is the subset of :class:`subprocess.Popen` the tests use; :func:`run_cli` is
``subprocess.run(..., capture_output=True, text=True)``.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

# Imported here so the fork server (which imports this module) holds them before any fork. The pytest
# process has them already (conftest), so importing this module there costs nothing.
import peft  # noqa: F401
import torch  # noqa: F401
import transformers

import selfplay.cli.main
import selfplay.stages.evaluate  # noqa: F401
import selfplay.stages.loop  # noqa: F401
import selfplay.stages.train  # noqa: F401

transformers.LlamaForCausalLM, transformers.AutoTokenizer  # noqa: B018 (loads the lazy modules)
# Frozen once here, as the test session does (conftest): each forked command then skips the full collection
# over ~400k import-time objects that its first model would start with (selfplay.models).
from selfplay.models import freeze_import_time_objects  # noqa: E402

freeze_import_time_objects()

_context: Any = None
_started: list[CLIProcess] = []


def _fork_server() -> Any:
    """The fork-server context, its server started on first use with this module preloaded. Its stderr is
    /dev/null while it starts: rich's console, created at import, then sees what a CLI run with captured
    output sees (not a terminal) even when pytest runs in one."""
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        # The server does not take this process's sys.path (Python 3.11 passes it and ignores it): it finds
        # this module through PYTHONPATH, set while it starts.
        python_path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), python_path]))
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            forkserver.ensure_running()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
            if python_path is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = python_path
        _context = context
    return _context


def _child(module: str, args: list[str], env: dict[str, str], cwd: str, stdout: str | None,
           stderr: str | None) -> None:
    """In the forked process: become ``python -m MODULE ARGS`` (its ``main()``) and exit with its status."""
    import importlib

    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    entry = importlib.import_module(module)
    sys.argv = [entry.__file__, *args]
    code: Any = 0
    try:
        code = entry.main()  # selfplay.cli.main.main() exits; bench.run.main() returns its status
    except SystemExit as e:
        code = e.code
    if not isinstance(code, int):  # sys.exit("message") prints it and exits 1, as the interpreter does
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    # What the interpreter does at its exit (multiprocessing's own exit path skips the exit handlers): wait for
    # the threads that are not daemons, run the handlers libraries registered, flush.
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class CLIProcess:
    """``selfplay ARGS`` running in a forked process: ``pid``, ``poll``, ``wait``, ``communicate``,
    ``send_signal``, ``kill`` and ``returncode`` as on :class:`subprocess.Popen` (a signal's death is
    ``-signal``). Output is captured to files (``capture=True``, read by :meth:`communicate`) or dropped.
    ``module``: another entry point with a ``main()`` (``bench.run``), as ``python -m MODULE ARGS`` in ``cwd``."""

    def __init__(self, args: Sequence[Any], env: Mapping[str, str] | None = None, capture: bool = True,
                 module: str = "selfplay.cli.main", cwd: str | Path | None = None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="selfplay-cli-"))
        self._out = str(self._dir / "stdout") if capture else None
        self._err = str(self._dir / "stderr") if capture else None
        env = dict(os.environ if env is None else env)
        self.args = [str(a) for a in args]
        self._process = _fork_server().Process(target=_child, name="selfplay-cli",
                                               args=(module, self.args, env, str(cwd or os.getcwd()), self._out,
                                                     self._err))
        self._process.start()
        self.pid: int = self._process.pid
        self.returncode: int | None = None
        _started.append(self)

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(["selfplay", *self.args], timeout or 0)
        return self.returncode  # type: ignore[return-value]

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        read = lambda path: Path(path).read_text(errors="replace") if path else ""  # noqa: E731
        return read(self._out), read(self._err)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)


def run_cli(args: Sequence[Any], env: Mapping[str, str] | None = None, check: bool = False,
            timeout: float | None = None, **kw: Any) -> subprocess.CompletedProcess:
    """``selfplay ARGS`` to its end in a forked process: returncode, stdout, stderr (text). ``check``
    asserts a 0 exit with the end of stderr as the message; ``kw``: ``module`` and ``cwd`` of :class:`CLIProcess`."""
    proc = CLIProcess(args, env, **kw)
    try:
        out, err = proc.communicate(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    if check:
        assert proc.returncode == 0, err[-4000:]
    return subprocess.CompletedProcess(["selfplay", *proc.args], proc.returncode, out, err)


def stop_all() -> None:
    """Kill what a failed test left running (pytest's session end calls it), so the run's exit never waits
    for a forked CLI still at work; remove the captured output."""
    import shutil

    for proc in _started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        shutil.rmtree(proc._dir, ignore_errors=True)
