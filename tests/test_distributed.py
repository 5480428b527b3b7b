"""Several processes for real, on the CPU (gloo): 2 processes against 1, through the real commands.

Tolerances: per-step losses, learning rates and final weights of 2 DDP processes x batch b equal those of
1 process x batch b with 2 accumulation steps within 1e-6 absolute. DDP averages the two gradients with
an all-reduce where accumulation sums two halves, so the two runs may differ in the last bits of float32
rounding (observed: losses within 3e-8, weights bit-identical); a real mismatch (another batch order, a
learning-rate schedule stepped twice per step, gradients not reduced) is 1e-4 or more. Held-out metrics
of the loop carry the same rounding through evaluation: 1e-5.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import cli_process
import pytest
import torch

from selfplay.config import LaunchConfig
from selfplay.io import read_json, read_jsonl

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-6
METRIC_ATOL = 1e-5


def command_env() -> dict[str, str]:
    """The commands' environment: offline, one thread per process (the test's own, as it is now)."""
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def run_cli(args: list, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    """``selfplay ARGS`` as its own process (:mod:`cli_process`: forked after the imports)."""
    return cli_process.run_cli(args, command_env(), check=check, timeout=timeout)


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_evaluation_inside_training_on_two_processes_equals_one_process(tiny_model, tmp_path):
    """train.eval_every with loop.select: best and patience on 2 DDP processes: every process evaluates its share
    of the validation prompts and takes the same decision from the gathered values, so none waits in a collective
    for another; the evaluations, the stop, the kept step and the weights are those of 1 process with 2
    accumulation steps."""
    from test_select import val_records
    from test_train import make_pairs

    pairs, val = make_pairs(tmp_path / "pairs.jsonl", n=16), val_records(tmp_path / "val.jsonl", n=5)
    common = ["train", "--model", tiny_model, "--data", pairs, "--method", "spin", "--lr", "3e-3", "--batch-size", 2,
              "--epochs", 4, "--val-data", val, "--set", "train.precision=fp32", "--set", "train.logging_steps=1",
              "--set", "train.eval_every=2", "--set", "loop.select=best", "--set", "loop.select_metric=real_loglik",
              "--set", "loop.patience=2", "--set", "eval.max_new_tokens=8"]
    run_cli([*common, "--out", tmp_path / "one", "--grad-accum", 2])
    run_cli([*common, "--out", tmp_path / "two", "--set", "launch.num_processes=2"], timeout=600)
    one, two = (read_json(tmp_path / d / "summary.json") for d in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["kept"] == two["kept"] and one["steps"] == two["steps"]
    assert one["kept"]["stopped_early"]  # patience stopped both at the same step (the rows show a peak)
    e1, e2 = one["evaluations"], two["evaluations"]
    assert [e["step"] for e in e1] == [e["step"] for e in e2] and len(e1) >= 2
    for a, b in zip(e1, e2):
        assert a["eval/n"] == b["eval/n"] == 5 and a["eval/accuracy"] == b["eval/accuracy"]
        assert abs(a["eval/real_loglik"] - b["eval/real_loglik"]) < METRIC_ATOL
    rows = [r for r in read_jsonl(tmp_path / "two" / "metrics.jsonl") if "eval/real_loglik" in r]
    assert [r["step"] for r in rows] == [e["step"] for e in e2]  # logged once, by the main process
    w1, w2 = weights(tmp_path / "one" / "model"), weights(tmp_path / "two" / "model")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < ATOL

def test_chunked_logps_inside_ddp_match_the_full_logits(tiny_model, tmp_path, monkeypatch):
    """The chunked path runs inside the DDP wrapper: same log-probs and (all-reduced) gradients as the full
    [N, R + 1, V] path, the head only ever sees [tokens, H] chunks, and both ranks call it equally often."""
    from selfplay.core.launchers import accelerate_command

    tests = str(Path(__file__).parent)
    cmd, extra = accelerate_command(LaunchConfig(num_processes=2), "distributed_checks", [str(tiny_model), str(tmp_path)],
                                    cuda=False)
    env = {**os.environ, **extra, "OMP_NUM_THREADS": "1",  # the launcher's thread share, pinned to 1 per rank here
           "PYTHONPATH": os.pathsep.join([tests, str(REPO), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["processes"] == 2 and r["split_ok"] is True
        assert torch.allclose(torch.tensor(r["chunked"]), torch.tensor(r["full"]), atol=1e-5)
        # fp32 gradients summed over chunks vs in one pass: the reduction order differs, and CPUs with other
        # kernels (AVX512 without AMX) differ in the 6th-7th significant digit (seen: 4.1e-6 on a gradient of 3.19).
        assert torch.allclose(torch.tensor(r["chunked_grads"]), torch.tensor(r["full_grads"]), rtol=1e-4, atol=1e-6)
        assert all(len(shape) == 2 and shape[0] <= 3 for shape in r["chunked_heads"])  # chunks of <= 3 tokens
        assert all(len(shape) == 3 for shape in r["full_heads"])  # the full path: [N, R + 1, H] at once
    # DDP reduced the gradients of the two ranks' different batches: both hold the same average.
    assert r0["chunked_grads"] == r1["chunked_grads"]
    # 11 tokens on rank 0 (4 chunks), 4 on rank 1 (2 chunks, then 2 empty ones): equal head calls on both ranks,
    # as ZeRO-3/FSDP need (each call gathers the head's weights on every rank); 4 more recompute in backward.
    assert [s[0] for s in r0["chunked_heads"][:4]] == [3, 3, 3, 2] and [s[0] for s in r1["chunked_heads"][:4]] == [3, 1, 0, 0]
    assert len(r0["chunked_heads"]) == len(r1["chunked_heads"]) == 8


TINY = ["--set", "data.num=20", "--set", "data.eval_num=4", "--set", "generate.max_new_tokens=16",
        "--set", "generate.batch_size=4", "--set", "train.batch_size=2", "--set", "train.lr=1e-3",
        "--set", "train.precision=fp32", "--set", "eval.max_new_tokens=16", "--set", "train.logging_steps=1",
        "--set", "model.dtype=float32"]  # sampling in fp32 too: bf16 kernels may round batches differently


def loop_args(model: Path, run_dir: Path, *extra, iters: int = 2) -> list:
    return ["loop", "--method", "spin", "--iters", iters, "--model", model, "--data", "synth:arith", "--run-dir",
            run_dir, *TINY, *extra]


def samples(path: Path) -> list[tuple[str, list[str]]]:
    return [(r["id"], r["samples"]) for r in read_jsonl(path)]


@pytest.fixture(scope="module")
def one_process_loop(tiny_model, tmp_path_factory) -> Path:
    """The reference: 2 SPIN iterations in one process, 2 accumulation steps of batch 2 per step."""
    run = tmp_path_factory.mktemp("loop1") / "run"
    run_cli(loop_args(tiny_model, run, "--set", "train.grad_accum=2"))
    return run


@pytest.mark.xdist_group("one_process_loop")  # one worker builds the module fixture once
def test_loop_on_two_processes_equals_one_process(tiny_model, tmp_path, one_process_loop):
    run = tmp_path / "run"
    run_cli(loop_args(tiny_model, run, "--set", "launch.num_processes=2"))
    ref = one_process_loop
    for k in (0, 1):
        # Two generation workers, one shard each, merged: the very samples one process drew.
        assert sorted(p.name for p in (run / f"iter_{k}" / "generate").glob("shard-*")) == [
            "shard-00000-of-00002.jsonl", "shard-00001-of-00002.jsonl"]
        assert samples(run / f"iter_{k}" / "generate.jsonl") == samples(ref / f"iter_{k}" / "generate.jsonl")
        s2, s1 = read_json(run / f"iter_{k}" / "train" / "summary.json"), read_json(ref / f"iter_{k}" / "train" / "summary.json")
        assert (s2["processes"], s1["processes"]) == (2, 1) and s2["planned_steps"] == s1["planned_steps"]
    rows2, rows1 = read_jsonl(run / "eval" / "iterations.jsonl"), read_jsonl(ref / "eval" / "iterations.jsonl")
    assert [r["iteration"] for r in rows2] == ["base", 0, 1]
    for a, b in zip(rows2, rows1):
        for key in ("real_loglik", "spin_margin", "accuracy", "train_loss"):
            if b.get(key) is not None:
                assert abs(a[key] - b[key]) < METRIC_ATOL, (a["iteration"], key, a[key], b[key])
    assert rows2[-1]["real_loglik"] > rows2[0]["real_loglik"] + 0.5  # training moved the held-out likelihood


def _workers(parent: int, stage: str) -> dict[str, int]:
    """{shards: pid} of the stage's worker processes under ``parent``."""
    import psutil

    found = {}
    for p in psutil.Process(parent).children(recursive=True):
        cmd = p.cmdline()
        if "selfplay.stages.worker" in cmd and stage in cmd:
            found[cmd[cmd.index("--shards") + 1]] = p.pid
    return found


def test_sigkill_of_one_generation_worker_then_rerun_loses_and_duplicates_nothing(tiny_model, tmp_path):
    import psutil
    from test_generate import write_sft

    # 40 prompts a shard: with 20 a fast worker 0 once finished its shard before worker 1 had written 2 records.
    data = write_sft(tmp_path / "sft.jsonl", 80)
    gen = ["generate", "--model", tiny_model, "--data", data, "--n", 2, "--temperature", 1.0,
           "--max-new-tokens", 32, "--batch-size", 1, "--set", "model.dtype=float32"]
    out = tmp_path / "two"
    proc = cli_process.CLIProcess([*gen, "--out", out, "--set", "launch.num_processes=2"], command_env())
    shards = [out / "shard-00000-of-00002.jsonl", out / "shard-00001-of-00002.jsonl"]
    # Find the workers first (a process-tree scan takes a while on a busy machine: a worker can finish its
    # shard during it), then kill worker 0 the moment both shards hold 2 records.
    deadline = time.monotonic() + 120
    workers: dict[str, int] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        if len(workers) < 2:
            with contextlib.suppress(psutil.NoSuchProcess):  # a launcher process may exit during the scan
                workers = _workers(proc.pid, "generate")
        elif all(s.is_file() and s.read_text().count("\n") >= 2 for s in shards):
            break
        time.sleep(0.02)
    assert sorted(workers) == ["0", "1"], "both workers should be running, one shard each"
    os.kill(workers["0"], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and f"worker 1 of 2 (PID {workers['0']}) was killed by SIGKILL" in err, err[-2000:]
    assert "Traceback" not in err
    before = [{r["id"] for r in read_jsonl(s, tolerate_torn_tail=True)} for s in shards]
    assert 2 <= len(before[0]) < 40, "killed too late: the shard had finished"
    with pytest.raises(ProcessLookupError):
        os.kill(workers["1"], 0)  # the other worker was stopped too: nothing left writing into the shards
    with shards[0].open("a") as f:
        f.write('{"id": "q79", "prompt_mess')  # what a kill mid-write leaves: a torn last line

    rerun = run_cli([*gen, "--out", out, "--set", "launch.num_processes=2"])
    assert "resuming" in rerun.stderr
    after = [[r["id"] for r in read_jsonl(s, tolerate_torn_tail=True)] for s in shards]
    assert all(len(a) == len(set(a)) == 40 for a in after) and all(b <= set(a) for a, b in zip(after, before))
    run_cli(["generate", "merge", out, "--out", tmp_path / "two.jsonl"])
    # One worker, no kill, in fp32: the merged file is byte for byte the same (per-sample seeds survive sharding).
    run_cli([*gen, "--out", tmp_path / "one"])
    run_cli(["generate", "merge", tmp_path / "one", "--out", tmp_path / "one.jsonl"])
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()


def test_rank_and_rollout_workers_equal_one_process(tiny_model, tiny_reward, tmp_path):
    """The other sampling stages on 2 workers: a reward model ranks (one replica per worker) and RISE rollouts,
    each merged into what one process writes."""
    from selfplay.io import write_jsonl

    sets = [{"id": f"s{i}", "prompt_messages": [{"role": "user", "content": f"What is {i} + {i}?"}],
             "samples": [f"{2 * i}", f"It is {2 * i + 1}.", "I do not know"]} for i in range(9)]
    write_jsonl(tmp_path / "sets.jsonl", sets)
    rank = ["rank", "--data", tmp_path / "sets.jsonl", "--judge", f"reward-model:{tiny_reward}", "--batch-size", 2]
    run_cli([*rank, "--out", tmp_path / "one.jsonl"])
    run_cli([*rank, "--out", tmp_path / "two.jsonl", "--set", "launch.num_processes=2"])
    assert sorted(p.name for p in (tmp_path / "two.jsonl.shards").glob("shard-*")) == [
        "shard-00000-of-00002.jsonl", "shard-00001-of-00002.jsonl"]
    one, two = read_jsonl(tmp_path / "one.jsonl"), read_jsonl(tmp_path / "two.jsonl")
    assert [r["id"] for r in two] == [r["id"] for r in one] == [s["id"] for s in sets]
    for a, b in zip(one, two):  # batches differ between the runs: equal up to float32 rounding
        assert max(abs(x - y) for x, y in zip(a["scores"], b["scores"])) < 1e-5

    problems = [{"id": f"p{i}", "messages": [{"role": "user", "content": f"What is {i} + 1?"}],
                 "reference": f"#### {i + 1}", "meta": {"task": "arith"}} for i in range(10)]
    write_jsonl(tmp_path / "problems.jsonl", problems)
    rollout = ["rollout", "--model", tiny_model, "--data", tmp_path / "problems.jsonl", "--env", "arith",
               "--num-samples", "1,2", "--max-new-tokens", 12, "--set", "model.dtype=float32"]
    run_cli([*rollout, "--out", tmp_path / "r1"])
    run_cli([*rollout, "--out", tmp_path / "r2", "--set", "launch.num_processes=2"])
    for d in ("r1", "r2"):
        run_cli(["generate", "merge", tmp_path / d, "--out", tmp_path / f"{d}.jsonl"])
    assert len(list((tmp_path / "r2").glob("shard-*"))) == 2
    r1, r2 = read_jsonl(tmp_path / "r1.jsonl"), read_jsonl(tmp_path / "r2.jsonl")
    assert [e["id"] for e in r1] == [e["id"] for e in r2] and len(r1) == 10
    assert [e["turn_history"] for e in r1] == [e["turn_history"] for e in r2]


# --------------------------------------------------------------------------- one process of several killed


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_ddp_processes_killed_twice_then_resumed_train_like_one_process_with_accumulation(tiny_model, tmp_path):
    """One 20-step run on 2 DDP processes, interrupted twice, against 1 process with 2 accumulation steps.

    1. Kill rank 1 of 2 mid-training: torchrun stops rank 0 within seconds (its all-reduce fails when the
       dead rank's socket closes, no 30-minute collective timeout) and one message names rank 1 and SIGKILL.
    2. Rerun, and kill the command itself once a later checkpoint exists: its training processes (and
       accelerate's launcher) exit with it; the checkpoint counts the batches of both processes.
    3. Rerun to the end: each process resumes at its own next batch, and the per-step losses, learning rates
       and margins and the final weights are those of one process with 2 accumulation steps.
    """
    import psutil
    from test_train import make_pairs

    pairs = make_pairs(tmp_path / "pairs.jsonl", n=80)  # 20 steps of 2 x 2: ranks that outlive a kill by a
    common = ["train", "--model", tiny_model, "--data", pairs,  # poll interval (50 ms) cannot finish them
              "--method", "spin", "--lr", "1e-3", "--batch-size", 2, "--set", "train.precision=fp32",
              "--set", "train.logging_steps=1", "--set", "train.warmup_ratio=0.5", "--set", "train.save_steps=2"]
    two = [*common, "--out", tmp_path / "two", "--set", "launch.num_processes=2"]
    state = tmp_path / "two" / "checkpoint" / "trainer_state.json"

    def start() -> cli_process.CLIProcess:
        return cli_process.CLIProcess(two, command_env())

    def launched(proc: cli_process.CLIProcess) -> dict[psutil.Process, list[str]]:
        found = {}
        for p in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):  # a short-lived helper may exit during the scan
                if "selfplay.stages.worker" in (cmd := p.cmdline()):
                    found[p] = cmd
        return found

    # 1. one rank killed
    proc = start()
    _wait_for(state.exists, 180, "a checkpoint")
    ranks = {p.environ().get("RANK"): p for p, cmd in launched(proc).items() if "accelerate.commands.launch" not in cmd}
    assert sorted(ranks) == ["0", "1"]
    victim = ranks["1"].pid
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    stopped_after = time.monotonic() - killed_at
    assert proc.returncode == 2 and stopped_after < 30, (stopped_after, err[-3000:])
    assert f"Error: training process rank 1 (PID {victim} on " in err and "was killed by SIGKILL" in err, err[-3000:]
    assert "Traceback" not in err and "ChildFailedError" not in err, err[-3000:]
    assert not (tmp_path / "two" / "summary.json").exists()
    first_step = read_json(state)["step"]

    # 2. the command killed
    proc = start()
    _wait_for(lambda: state.exists() and read_json(state)["step"] > first_step, 180, "a later checkpoint")
    children = launched(proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (tmp_path / "two" / "summary.json").exists(), "killed too late"
    done_before = read_json(state)
    assert done_before["batches_done"] == 2 * done_before["step"] >= 4  # 2 processes x 1 batch per step
    _, alive = psutil.wait_procs(list(children), timeout=15)
    assert len([c for c in children.values() if "accelerate.commands.launch" not in c]) == 2 and not alive

    # 3. resumed to the end, against one process
    res = run_cli(two)
    assert "resuming training at step" in res.stdout + res.stderr
    run_cli([*common, "--out", tmp_path / "one", "--grad-accum", 2])
    one, two_summary = (read_json(tmp_path / d / "summary.json") for d in ("one", "two"))
    assert (one["processes"], two_summary["processes"]) == (1, 2)  # really two processes, each with its batches
    assert one["planned_steps"] == two_summary["planned_steps"] == one["steps"] == two_summary["steps"] == 20
    m1, m2 = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert [m["step"] for m in m1] == [m["step"] for m in m2] == list(range(1, 21))
    for a, b in zip(m1, m2):
        assert abs(a["loss"] - b["loss"]) < ATOL and abs(a["lr"] - b["lr"]) < 1e-12, (a, b)
        assert abs(a["rewards/margins"] - b["rewards/margins"]) < 1e-5
    assert m1[-1]["loss"] < 0.6  # it trained (0.693 at the start)
    w1, w2, w0 = weights(tmp_path / "one" / "model"), weights(tmp_path / "two" / "model"), weights(tiny_model)
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < ATOL
    assert max((w1[k] - w0[k]).abs().max().item() for k in w1) > 1e-3  # the weights did move


@pytest.mark.xdist_group("one_process_loop")  # one worker builds the module fixture once
def test_loop_on_two_machines_with_the_follower_killed_then_rerun_equals_one_process(
        tiny_model, tmp_path, one_process_loop):
    """Two "machines" on this host, one process each, one shared run directory: machine 0 keeps the books
    (state, merges, evaluation), machine 1 samples its shard and joins training through accelerate's
    multi-node rendezvous at machine 0's address. Kill machine 1's loop while it samples its shard: machine 0
    must not wait for that shard (or at the training rendezvous) forever: it stops within seconds naming
    machine 1, and both machines' rerun ends where one process ends."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    args = loop_args(tiny_model, run, "--set", "launch.num_processes=2", "--set", "launch.num_machines=2",
                     "--set", "launch.main_process_ip=127.0.0.1", "--set", f"launch.main_process_port={port}",
                     "--set", "generate.batch_size=1", iters=1)

    def start(rank: int) -> cli_process.CLIProcess:
        return cli_process.CLIProcess([*args, "--set", f"launch.machine_rank={rank}"], command_env())

    machines = [start(0), start(1)]
    shard = run / "iter_0" / "generate" / "shard-00001-of-00002.jsonl"
    _wait_for(lambda: shard.exists() and shard.read_text().count("\n") >= 2, 300, "machine 1's first samples")
    machines[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    machines[1].communicate()
    _, err = machines[0].communicate(timeout=300)
    stopped_after = time.monotonic() - killed_at
    assert machines[0].returncode == 2 and stopped_after < 60, (stopped_after, err[-3000:])
    assert "Error: machine 1 of 2 stopped: its process (PID" in err and "is gone" in err, err[-3000:]
    assert "Traceback" not in err
    assert not (run / "iter_0" / "generate.jsonl").exists()  # killed before the merge: nothing half-done is used

    machines = [start(0), start(1)]
    logs = [m.communicate(timeout=900)[1] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert "generate shard 1/2" in logs[0] and "generate shard 2/2" in logs[1]  # each sampled its own shard
    assert "machine 1 of 2" in logs[1] and (run / "iter_0" / "train" / "launch_config.machine1.yaml").is_file()
    summary = read_json(run / "iter_0" / "train" / "summary.json")
    assert summary["processes"] == 2 and summary["planned_steps"] == read_json(
        one_process_loop / "iter_0" / "train" / "summary.json")["planned_steps"]
    assert samples(run / "iter_0" / "generate.jsonl") == samples(one_process_loop / "iter_0" / "generate.jsonl")
    rows, ref = read_jsonl(run / "eval" / "iterations.jsonl"), read_jsonl(one_process_loop / "eval" / "iterations.jsonl")
    assert [r["iteration"] for r in rows] == ["base", 0]
    assert all(u["done"] for u in read_json(run / "state.json")["units"].values())
    for a, b in zip(rows, ref):
        for key in ("real_loglik", "spin_margin", "accuracy", "train_loss"):
            if b.get(key) is not None:
                assert abs(a[key] - b[key]) < METRIC_ATOL, (a["iteration"], key, a[key], b[key])
