"""Thread counts and the OpenMP wait policy (selfplay.threads): settings honoured in order, cores from affinity
and cgroup quota, launched workers sharing the threads, and a real process's torch picking them up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfplay import threads
from selfplay.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean(monkeypatch):
    for key in ("SELFPLAY_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", *threads.KERNEL_CACHE_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(threads, "_setup_done", {})
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    return monkeypatch


def test_cgroup_quota_caps_the_cores(tmp_path: Path, clean) -> None:
    clean.undo()  # the real cgroup reader
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    assert threads.cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert threads.cgroup_cpu_limit(v1) == 2.0
    clean.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    clean.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert threads.usable_cores() == 4  # affinity alone
    clean.setattr(threads, "cgroup_cpu_limit", lambda: 1.5)
    assert threads.usable_cores() == 2  # a quota of 1.5 CPUs: 2 threads, not 4


def test_settings_in_order_and_shared_between_workers(clean) -> None:
    assert threads.process_threads(1) == (4, "usable cores")
    assert threads.process_threads(2)[0] == 2 and threads.process_threads(8)[0] == 1
    clean.setenv("OMP_NUM_THREADS", "3")  # per process: passed to each worker as it is
    assert threads.process_threads(2) == (3, "OMP_NUM_THREADS")
    clean.setenv("SELFPLAY_NUM_THREADS", "6")  # the whole run's budget: shared, and it wins over OMP
    assert threads.process_threads(1) == (6, "SELFPLAY_NUM_THREADS")
    assert threads.worker_env(3) == {"OMP_NUM_THREADS": "2", "SELFPLAY_NUM_THREADS": "2", "GOMP_SPINCOUNT": "10000"}
    clean.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's wait policy is left alone
    assert "GOMP_SPINCOUNT" not in threads.worker_env(3)
    for bad in ("0", "two", "-1"):
        clean.setenv("SELFPLAY_NUM_THREADS", bad)
        with pytest.raises(UserError, match="SELFPLAY_NUM_THREADS must be a positive integer"):
            threads.process_threads(1)


def test_setup_keeps_the_users_setting_for_workers(clean) -> None:
    assert threads.setup() == 4
    assert os.environ["OMP_NUM_THREADS"] == "4" and os.environ["GOMP_SPINCOUNT"] == "10000"
    # This process now has OMP_NUM_THREADS=4 in its environment, but its workers still share the cores.
    assert threads.worker_env(2)["OMP_NUM_THREADS"] == "2"


def test_setup_bounds_onednn_kernel_caches_unless_the_user_set_them(clean) -> None:
    clean.setenv("LRU_CACHE_CAPACITY", "512")
    threads.setup()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(threads.KERNEL_CACHE_CAPACITY) == "64"
    assert os.environ["LRU_CACHE_CAPACITY"] == "512"


@pytest.mark.parametrize("env, affinity, expected", [
    ({"SELFPLAY_NUM_THREADS": "1"}, None, 1),
    ({"OMP_NUM_THREADS": "1"}, None, 1),
    ({}, [0], 1),  # taskset -c 0: one core, one thread
])
def test_a_real_process_uses_its_threads(env: dict[str, str], affinity: list[int] | None, expected: int) -> None:
    code = ("import json, os\n"
            + (f"os.sched_setaffinity(0, {affinity})\n" if affinity else "")
            + "from selfplay.threads import setup\nsetup()\nimport torch\n"
            "print(json.dumps([torch.get_num_threads(), os.environ.get('GOMP_SPINCOUNT')]))")
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SELFPLAY_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [expected, "10000"]


def test_the_cli_names_a_bad_setting(cli, monkeypatch) -> None:
    monkeypatch.setenv("SELFPLAY_NUM_THREADS", "lots")
    monkeypatch.setattr(threads, "_setup_done", {})
    result = cli(["config", "show"])
    assert result.exit_code == 2 and "SELFPLAY_NUM_THREADS must be a positive integer" in result.output
