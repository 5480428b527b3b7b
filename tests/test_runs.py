"""The output lock (selfplay.runs.output_lock): a second process is refused at once with the holder's PID, a
killed holder blocks nothing, nested use in one process is free; `train` and `generate` hold it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfplay.runs import OutputInUseError, output_lock

REPO = Path(__file__).resolve().parents[1]


def hold_in_child(output: Path, what: str = "loop") -> subprocess.Popen:
    """Another process holding ``output``'s lock until killed; returns once it holds it."""
    code = ("import sys, time; from pathlib import Path; from selfplay.runs import output_lock\n"
            "with output_lock(Path(sys.argv[1]), sys.argv[2]):\n    print('held', flush=True); time.sleep(600)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", code, str(output), what], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def holder() -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(output: Path, what: str = "loop") -> subprocess.Popen:
        procs.append(hold_in_child(output, what))
        return procs[-1]

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_second_process_is_refused_with_the_holders_pid_and_a_killed_holder_blocks_nothing(tmp_path, holder):
    out = tmp_path / "run"
    out.mkdir()
    proc = holder(out)
    start = time.perf_counter()
    with pytest.raises(OutputInUseError) as refused:
        with output_lock(out, "loop"):
            pass
    message = str(refused.value)
    assert f"PID {proc.pid}, selfplay loop" in message and str(out) in message and "\n" not in message
    assert time.perf_counter() - start < 5  # at once, not after a wait
    proc.send_signal(signal.SIGKILL)  # no cleanup runs: its lock file and owner file stay behind
    proc.wait()
    assert (out / ".selfplay.lock").exists()
    with output_lock(out, "loop"):  # the OS released the dead holder's lock
        assert f'"pid": {os.getpid()}' in (out / ".selfplay.lock.owner").read_text()
    assert not (out / ".selfplay.lock.owner").exists()


def test_nested_use_in_one_process_does_not_lock_again(tmp_path, holder):
    out = tmp_path / "run"
    (out / "iter_0" / "train").mkdir(parents=True)
    with output_lock(out, "loop"):
        with output_lock(out / "iter_0" / "train", "train"), output_lock(out, "loop"):
            pass
        assert not (out / "iter_0" / "train" / ".selfplay.lock").exists()
        with output_lock(tmp_path / "elsewhere.jsonl", "generate"):  # an unrelated output locks on its own
            assert (tmp_path / ".elsewhere.jsonl.lock.owner").exists()
    with output_lock(out, "x", enabled=False):  # a launched worker: its parent holds the lock
        pass
    proc = holder(out)
    with pytest.raises(OutputInUseError, match=f"PID {proc.pid}"):
        with output_lock(out, "loop"):
            pass


def test_train_and_generate_refuse_an_output_in_use(cli, tiny_model, tmp_path, holder):
    from test_generate import gen_args, write_sft
    from test_train import make_pairs

    pairs = make_pairs(tmp_path / "pairs.jsonl", n=2)
    out = tmp_path / "trained"
    out.mkdir()
    proc = holder(out, "train")
    res = cli(["train", "--model", tiny_model, "--data", pairs, "--out", out])
    assert res.exit_code == 2 and f"in use by another selfplay process (PID {proc.pid}" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == [".selfplay.lock", ".selfplay.lock.owner"]

    data = write_sft(tmp_path / "sft.jsonl", 4)
    gen = tmp_path / "gen"
    gen.mkdir()
    proc = holder(gen / "shard-00000-of-00002.jsonl", "generate")
    res = cli(gen_args(tiny_model, data, gen, "--num-fracs", 2, "--data-frac", 0))
    assert res.exit_code == 2 and f"PID {proc.pid}, selfplay generate" in res.stderr
    assert not (gen / "shard-00000-of-00002.jsonl").exists()
    # the other shard of the same directory is free: shards are generated in parallel by design
    assert cli(gen_args(tiny_model, data, gen, "--num-fracs", 2, "--data-frac", 1)).exit_code == 0
