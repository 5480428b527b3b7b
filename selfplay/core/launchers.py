"""Where a stage runs: in this process, in data-parallel worker processes, or under ``accelerate launch``.

One ``launch`` section drives every stage (``selfplay.config.LaunchConfig``):

* **Sampling stages** (generate, rank, rollout) are embarrassingly parallel: :func:`run_workers` starts one
  plain process per model replica on this machine, each given its own GPUs through ``CUDA_VISIBLE_DEVICES``
  (one, or a vLLM engine's ``tensor_parallel_size``) or, on a CPU, its share of the cores. Workers of
  machine ``r`` take the global worker indices ``r * local .. (r + 1) * local - 1``, so every machine of a
  multi-node run samples its own shards. This is what the anchors' scripts did by hand (one process per
  GPU with ``--data_frac``), and it needs no collective communication.
* **Training** runs under ``accelerate launch`` (:func:`run_launched`): DDP, FSDP or DeepSpeed from the
  accelerate config file, ``num_machines``/``machine_rank``/``main_process_ip``/``main_process_port``
  passed through. Without CUDA, several processes use accelerate's multi-CPU mode (torchrun + gloo).

Launchers know nothing about methods or commands: they run a Python module (a stage's worker entry point,
``selfplay.stages.worker``) with the arguments the caller built. Every launched process gets
``SELFPLAY_PARENT_PID``: the worker exits when that process is gone, so a killed run leaves no orphan
writing into the run directory while its rerun resumes the same files.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from selfplay.config import LaunchConfig
from selfplay.errors import UserError
from selfplay.hardware import bf16_probe, cpu_has_bf16
from selfplay.threads import process_threads, worker_env

PARENT_ENV = "SELFPLAY_PARENT_PID"


def under_distributed_launcher() -> bool:
    """True inside a process started by accelerate/torchrun (they set LOCAL_RANK / WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def local_processes(launch: LaunchConfig) -> int:
    """Processes on this machine (``launch.num_processes`` counts all machines)."""
    return max(1, launch.num_processes // launch.num_machines)


def machine_file(launch: LaunchConfig, name: str) -> str:
    """``name`` for a file each machine writes into a shared directory (``x.yaml`` -> ``x.machine1.yaml``)."""
    if launch.num_machines == 1:
        return name
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.machine{launch.machine_rank}.{ext}" if dot else f"{name}.machine{launch.machine_rank}"


def several_processes(launch: LaunchConfig) -> bool:
    """Whether stages leave this process: more than one process or machine (backend ``auto``/``accelerate``)."""
    return launch.backend != "local" and (launch.num_processes > 1 or launch.num_machines > 1)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def accelerate_command(launch: LaunchConfig, module: str, args: list[str], *,
                       cuda: bool | None = None) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command line that runs ``python -m module args``, and the environment
    variables to add for it. ``cuda`` overrides the detection (tests build the GPU command on a CPU)."""
    if importlib.util.find_spec("accelerate") is None:
        raise UserError("launching several processes needs the `accelerate` package (pip install accelerate).")
    cuda = _cuda_available() if cuda is None else cuda
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    env: dict[str, str] = {}
    if launch.accelerate_config:
        if not Path(launch.accelerate_config).is_file():
            raise UserError(f"launch.accelerate_config: file not found: {launch.accelerate_config}")
        cmd += ["--config_file", launch.accelerate_config]
    else:
        # Said explicitly so accelerate does not warn about defaults; our Accelerator sets the precision itself.
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--num_processes", str(launch.num_processes), "--num_machines", str(launch.num_machines),
            "--machine_rank", str(launch.machine_rank)]
    if launch.main_process_ip:
        cmd += ["--main_process_ip", launch.main_process_ip]
    if launch.main_process_port is not None:
        cmd += ["--main_process_port", str(launch.main_process_port)]
    elif launch.num_machines == 1 and not launch.accelerate_config:
        cmd += ["--main_process_port", "0"]  # a free port: several runs (or tests) may share a machine
    if launch.deepspeed_config:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", launch.deepspeed_config]
    if not cuda and not launch.accelerate_config:
        if launch.num_processes > 1 or launch.num_machines > 1:
            # accelerate's multi-CPU mode: `--cpu` alone starts ONE process (its simple launcher), so start the
            # processes through torchrun (`--multi_gpu`) and let each one choose the CPU + gloo backend.
            cmd += ["--multi_gpu"]
            env["ACCELERATE_USE_CPU"] = "true"
        else:
            cmd += ["--cpu"]
    if not cuda:
        env.update(worker_env(local_processes(launch)))
    return cmd + ["-m", module, *args], env


def cpu_threads_per_process(processes: int) -> int:
    """Threads for each of N processes on this machine, so they share its cores instead of each taking all
    of them (:mod:`selfplay.threads`: ``SELFPLAY_NUM_THREADS``, ``OMP_NUM_THREADS``, affinity, cgroup quota)."""
    return process_threads(processes)[0]


def settle_cpu_dtype() -> None:
    """Decide ``auto``'s CPU dtype before starting processes: each then reads the probe this process kept
    (:func:`selfplay.hardware.bf16_probe`) rather than measuring its own, so all of them pick the same dtype."""
    if cpu_has_bf16():
        bf16_probe()


def run_launched(launch: LaunchConfig, module: str, args: list[str]) -> None:
    """Run ``module`` under ``accelerate launch`` and wait; a failure names the process that failed first.

    torchrun stops the other processes within seconds when one dies (a SIGKILLed rank's sockets close, and
    its peers' collectives fail at once rather than at the 30-minute timeout); its failure report (a
    traceback of the launcher, then a "Root Cause" block) is condensed into one message naming the rank,
    its PID and host, and how it ended. The launcher's other output passes through as it comes.
    """
    cmd, extra = accelerate_command(launch, module, args)
    if not _cuda_available():
        settle_cpu_dtype()
    env = {**os.environ, **extra, "SELFPLAY_LAUNCHED": "1", PARENT_ENV: str(os.getpid())}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True,
                            errors="replace", bufsize=1)
    relay = _LauncherReport(proc.stderr)
    try:
        code, _ = _wait([proc])
    finally:
        relay.join()
    if code != 0:
        from selfplay.liveness import check_peers

        check_peers()  # another machine stopped: say that, not what it did to the rendezvous
        raise UserError(relay.message(code, " ".join(cmd)))


class _LauncherReport:
    """Copies a launcher's stderr to ours, except torchrun's failure report, which it reads instead: the
    root cause (the first process that failed) becomes :meth:`message`."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.cause = stream, {}
        self._thread = threading.Thread(target=self._run, name="launcher-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        held: list[str] = []  # a traceback of the launcher itself, until its last line says what it is
        in_report = in_cause = False
        for line in self.stream:
            if in_report:
                in_cause = in_cause or line.startswith("Root Cause")
                if in_cause and ":" in line and line.startswith("  "):
                    key, _, value = line.strip().partition(":")
                    self.cause.setdefault(key.strip(), value.strip())
                if in_cause and line.startswith("====="):
                    in_report = in_cause = False
                continue
            if held or line.startswith("Traceback (most recent call last):"):
                held.append(line)
                if line.startswith((" ", "Traceback (most recent call last):")) or not line.strip():
                    continue
                if "ChildFailedError" in line:  # torchrun's report follows: read it, show the root cause only
                    in_report = True
                else:
                    sys.stderr.writelines(held)
                held = []
                continue
            sys.stderr.write(line)
        sys.stderr.writelines(held)

    def join(self) -> None:
        self._thread.join(timeout=10)

    def message(self, code: int, command: str) -> str:
        rank, exitcode = self.cause.get("rank"), self.cause.get("exitcode", "")
        if rank is None:
            return f"`accelerate launch` failed with exit code {code}: {command}"
        status = exitcode.split()[0] if exitcode else "?"
        pid = exitcode.partition("pid:")[2].strip(" )").split(")")[0] if "pid:" in exitcode else "?"
        if status.lstrip("-").isdigit() and int(status) < 0:
            how = f"was killed by {signal.Signals(-int(status)).name}"
        else:
            how = f"exited with code {status}" + (" (its message above says why)" if status in ("2", "3") else "")
        return (f"training process rank {rank.split()[0]} (PID {pid} on {self.cause.get('host', '?')}) {how}; "
                f"the launcher stopped the others. Checkpoints written before are kept: rerun to resume.")


def worker_devices(workers: int, devices_per_worker: int, *, cuda: bool | None = None) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` of each local worker (None on a CPU): consecutive groups of the visible GPUs."""
    cuda = _cuda_available() if cuda is None else cuda
    if not cuda:
        return [None] * workers
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    need = workers * devices_per_worker
    if need > len(ids):
        raise UserError(f"{workers} worker(s) x {devices_per_worker} GPU(s) need {need} GPUs on this machine, "
                        f"{len(ids)} are visible; lower launch.num_processes or generate.tensor_parallel_size")
    return [",".join(ids[i * devices_per_worker:(i + 1) * devices_per_worker]) for i in range(workers)]


def run_workers(launch: LaunchConfig, module: str, worker_args: list[list[str]], *,
                devices_per_worker: int = 1) -> None:
    """Run ``python -m module ARGS`` once per entry of ``worker_args`` on this machine, concurrently, and wait.

    Each worker sees its own GPUs (``devices_per_worker`` of them) or, without CUDA, an equal share of the
    threads (:func:`selfplay.threads.worker_env`). If one fails, the others are stopped (what they
    finished is on disk; a rerun resumes) and a UserError names it.
    """
    devices = worker_devices(len(worker_args), devices_per_worker)
    base = {**os.environ, "SELFPLAY_LAUNCHED": "1", PARENT_ENV: str(os.getpid())}
    if devices[0] is None:
        base.update(worker_env(len(worker_args)))
        settle_cpu_dtype()
    procs = []
    for args, dev in zip(worker_args, devices):
        env = dict(base, CUDA_VISIBLE_DEVICES=dev) if dev is not None else base
        procs.append(subprocess.Popen([sys.executable, "-m", module, *args], env=env, start_new_session=True))
    code, failed = _wait(procs)
    if code != 0:
        if code < 0:
            why = f" was killed by {signal.Signals(-code).name}"
        else:  # a user error or a full disk print their own message
            why = f" failed (exit code {code})" + (" (its message above says why)" if code in (2, 3) else "")
        raise UserError(f"worker {failed + 1} of {len(procs)} (PID {procs[failed].pid}){why}; the others were "
                        f"stopped: {module} {' '.join(worker_args[failed])}. Finished work is kept: rerun to resume.")


def _wait(procs: list[subprocess.Popen]) -> tuple[int, int]:
    """Wait for all; on the first failure (or Ctrl-C, or another machine of a multi-node run stopping:
    :func:`selfplay.liveness.check_peers`) stop the rest. Returns (0, -1) or (its code, its index)."""
    from selfplay.liveness import check_peers

    try:
        polls = 0
        while True:
            polls += 1
            if polls % 5 == 0:
                check_peers()
            codes = [p.poll() for p in procs]
            bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                _stop(procs)
                return codes[bad[0]], bad[0]
            if all(c == 0 for c in codes):
                return 0, -1
            time.sleep(0.2)
    except BaseException:
        _stop(procs)
        raise


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM each still-running process group (torchrun's workers included), SIGKILL after ``grace_s``."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # each launched process leads its own session (start_new_session=True)
    except ProcessLookupError:
        pass


def exit_with_parent() -> None:
    """In a launched process: exit as soon as the process that launched the stage is gone (``PARENT_ENV``),
    so a SIGKILLed run leaves nothing appending to its files while the rerun resumes them."""
    pid = os.environ.get(PARENT_ENV)
    if not pid:
        return
    import threading

    def watch() -> None:
        while True:
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass  # alive, owned by someone else
            # Often: a tiny model trains several steps per second, and each step left after the kill may
            # write a checkpoint or finish the run the rerun is about to resume (one syscall per poll).
            time.sleep(0.05)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
