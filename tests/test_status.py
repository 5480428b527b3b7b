"""`selfplay status` on a loop killed mid-generation, while another process holds it, resumed, and reconfigured."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import cli_process
from test_loop import loop_args
from test_runs import hold_in_child


def status(cli, run: Path, *extra: str) -> dict:
    res = cli(["status", run, "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def states(info: dict) -> dict[str, str]:
    return {u["unit"]: u["state"] for u in info["units"]}


def test_status_of_a_killed_held_resumed_and_reconfigured_loop(cli, tiny_model: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = loop_args(tiny_model, run, "--set", "generate.batch_size=1", iters=1)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = cli_process.CLIProcess(args, env, capture=False)
    shards = run / "iter_0" / "generate"
    deadline = time.time() + 120
    while time.time() < deadline and not (shards.exists() and sum(
            f.read_text().count("\n") for f in shards.glob("shard-*.jsonl")) >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "iter_0" / "generate.jsonl").exists(), "killed too late: generation had finished"

    killed = status(cli, run)
    assert killed["lock"] is None and killed["config"] == "the run's saved config.yaml"
    assert states(killed) == {"data": "done", "eval/base": "done", "iter_0/generate": "resume",
                              "iter_0/train": "todo", "iter_0/eval": "todo"}
    assert killed["current"] == {"unit": "iter_0/generate", "iteration": 0, "stage": "generate", "state": "resume"}
    gen = next(u for u in killed["units"] if u["unit"] == "iter_0/generate")
    written = int(gen["detail"].split()[0])
    assert 3 <= written < 16 and gen["detail"].endswith("of 16 records in 1 shard(s)")
    assert killed["rerun"] == "continues iter_0/generate, then 2 more unit(s); skips 2 done"
    assert killed["last_row"] is None  # no iteration finished; the base row is only in state.json yet

    holder = hold_in_child(run)  # another process holds the run, as a running loop would
    try:
        held = status(cli, run)
        assert held["lock"]["pid"] == holder.pid and states(held)["iter_0/generate"] == "running"
        assert held["rerun"].startswith(f"refused while PID {holder.pid}")
    finally:
        holder.kill()
        holder.wait()

    assert cli_process.run_cli(args, env).returncode == 0  # the rerun resumes and finishes
    done = status(cli, run)
    assert set(states(done).values()) == {"done"} and done["current"] is None
    assert done["rerun"] == "nothing: every unit is done for these inputs" and done["last_row"]["iteration"] == 0
    table = cli(["status", run])
    assert table.exit_code == 0 and "finished: every unit done" in table.stdout and "not in use" in table.stdout

    # A changed training input: what a rerun with it would redo (training and what follows, not generation).
    changed = status(cli, run, "--set", "train.beta=0.2", "--set", "loop.iters=2")
    assert states(changed) == {"data": "done", "eval/base": "done", "iter_0/generate": "done",
                               "iter_0/train": "stale", "iter_0/eval": "stale", "iter_1/generate": "todo",
                               "iter_1/train": "todo", "iter_1/eval": "todo"}
    assert not (run / "iter_1").exists()  # status computed, never wrote
    other_data = status(cli, run, "--set", "data.num=18")  # every fingerprint depends on the data
    assert set(states(other_data).values()) == {"stale"} and other_data["current"]["unit"] == "data"

    res = cli(["status", tmp_path])
    assert res.exit_code == 2 and "no state.json" in res.stderr
