"""The launcher: the accelerate command line (multi-node, multi-CPU), data-parallel workers and their
devices, shard assignment, launch checks, and DeepSpeed's own parser on our ZeRO-2/3 configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfplay.config import ConfigError, LaunchConfig
from selfplay.core.launchers import accelerate_command, run_workers, worker_devices
from selfplay.errors import UserError
from selfplay.methods import load_config

REPO = Path(__file__).resolve().parents[1]
ZERO = {2: REPO / "configs" / "accelerate" / "deepspeed_zero2.yaml", 3: REPO / "configs" / "accelerate" / "deepspeed_zero3.yaml"}


def parsed_by_accelerate(cmd: list[str]):
    """Our command line as accelerate's own `launch` reads it (its parser, then its validation)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    return _validate_launch_command(launch_command_parser().parse_args(cmd[3:]))


def test_multi_node_arguments_reach_accelerate_and_torchrun():
    """The paper's 2 x 8-GPU run: machine 1 of 2 joins machine 0 at its address (ZeRO-3 config file)."""
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    launch = LaunchConfig(num_processes=16, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1",
                          main_process_port=29555, accelerate_config=str(ZERO[3]))
    cmd, env = accelerate_command(launch, "selfplay.stages.worker", ["train", "--out", "o"], cuda=True)
    assert cmd[cmd.index("--num_machines") + 1] == "2" and cmd[cmd.index("--machine_rank") + 1] == "1"
    assert cmd[cmd.index("--main_process_ip") + 1] == "10.0.0.1" and "--cpu" not in cmd and env == {}
    args, defaults, _ = parsed_by_accelerate(cmd)
    assert (args.num_processes, args.num_machines, args.machine_rank) == (16, 2, 1)
    assert (args.main_process_ip, args.main_process_port, args.use_deepspeed) == ("10.0.0.1", 29555, True)
    assert args.module and args.training_script == "selfplay.stages.worker" and args.training_script_args == ["train", "--out", "o"]
    # What torchrun is then given on this machine: 8 local processes, node 1 of 2, rendezvous at machine 0.
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, ds_env = prepare_deepspeed_cmd_env(args)
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "8")
    assert args.rdzv_endpoint == "10.0.0.1:29555" and ds_env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"


def test_cpu_processes_use_accelerates_multi_cpu_mode():
    two, env = accelerate_command(LaunchConfig(num_processes=2), "m", [], cuda=False)
    # `--cpu` alone would start a single process: torchrun starts them, each picks the CPU + gloo.
    assert "--multi_gpu" in two and "--cpu" not in two and env["ACCELERATE_USE_CPU"] == "true"
    assert two[two.index("--main_process_port") + 1] == "0"  # a free port: runs may share the machine
    args, _, _ = parsed_by_accelerate(two)
    assert args.multi_gpu and args.num_processes == 2 and args.main_process_port == 0
    one, env = accelerate_command(LaunchConfig(backend="accelerate"), "m", [], cuda=False)
    assert "--cpu" in one and "--multi_gpu" not in one and "ACCELERATE_USE_CPU" not in env


@pytest.mark.parametrize("sets, message", [
    (["launch.num_processes=3", "launch.num_machines=2", "launch.main_process_ip=h"], "multiple of launch.num_machines"),
    (["launch.num_machines=2", "launch.num_processes=2", "launch.machine_rank=2", "launch.main_process_ip=h"],
     r"machine_rank must be in 0\.\.1"),
    (["launch.num_machines=2", "launch.num_processes=2"], "needs launch.main_process_ip"),
    (["launch.backend=local", "launch.num_processes=2"], "backend=local runs everything in this one process"),
    (["launch.num_processes=0"], "'launch.num_processes' must be >= 1, got 0"),
    (["launch.num_machines=0"], "'launch.num_machines' must be >= 1, got 0"),
])
def test_launch_settings_are_checked_before_anything_runs(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_workers_take_global_shards_and_their_own_gpus(monkeypatch):
    from selfplay.stages.parallel import sampling_workers

    cfg = load_config(None, ["launch.num_processes=16", "launch.num_machines=2", "launch.machine_rank=1",
                             "launch.main_process_ip=h"])
    w = sampling_workers(cfg)
    assert (w.total, w.local, w.first) == (16, 8, 8)
    assert w.shards(16)[0] == [8] and w.shards(20)[1] == [9]  # global worker g takes shards g, g + 16, ...
    assert w.shards(32)[7] == [15, 31]
    tp = sampling_workers(cfg, devices_per_worker=4)  # vLLM engines of 4 GPUs: 2 per machine, 4 in all
    assert (tp.total, tp.local, tp.first) == (4, 2, 2)
    with pytest.raises(UserError, match="tensor_parallel_size=16 needs that many processes per machine"):
        sampling_workers(cfg, devices_per_worker=16)
    # Judges that gain nothing from replicas (verifiers, HTTP) run once, on the main machine only.
    assert (sampling_workers(cfg, parallel=False).local, sampling_workers(load_config(), parallel=False).local) == (0, 1)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert worker_devices(2, 2, cuda=True) == ["4,5", "6,7"] and worker_devices(4, 1, cuda=True) == ["4", "5", "6", "7"]
    with pytest.raises(UserError, match="need 6 GPUs on this machine, 4 are visible"):
        worker_devices(3, 2, cuda=True)
    assert worker_devices(2, 1, cuda=False) == [None, None]


@pytest.fixture
def helper_env(monkeypatch):
    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests, str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_a_failing_worker_stops_the_others_and_is_named(tmp_path, helper_env):
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"worker 2 of 2 \(PID \d+\) failed \(exit code 3\) \(its message above "
                                        r"says why\); the others were stopped: launch_helper .* fail"):
        run_workers(LaunchConfig(num_processes=2), "launch_helper", [[str(tmp_path), "sleep"], [str(tmp_path), "fail"]])
    assert time.monotonic() - t0 < 30  # the sleeper (60 s) was stopped, not waited for
    seen = {int(p.stem): json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert sorted(v["action"] for v in seen.values()) == ["fail", "sleep"]
    for pid, v in seen.items():
        assert v["SELFPLAY_PARENT_PID"] == str(os.getpid()) and v["CUDA_VISIBLE_DEVICES"] is None
        assert int(v["OMP_NUM_THREADS"]) >= 1  # the cores shared out between the workers
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_exits_when_the_run_that_launched_it_is_killed(tmp_path, helper_env):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    env = dict(os.environ, SELFPLAY_PARENT_PID=str(parent.pid))
    worker = subprocess.Popen([sys.executable, "-m", "launch_helper", str(tmp_path), "sleep", "watch"], env=env)
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.poll() is None, "the worker should live while the run does"
    parent.kill()
    parent.wait()
    assert worker.wait(timeout=10) == 1  # gone within a second or so, not after its 60 s sleep


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_configs_pass_deepspeeds_own_parser(stage, monkeypatch):
    """configs/accelerate/deepspeed_zero{2,3}.yaml as accelerate turns them into a DeepSpeed config for our
    training (the environment its launcher sets, its plugin, the "auto" values it fills at prepare time),
    then parsed by DeepSpeed's DeepSpeedConfig, which rejects what DeepSpeed would reject."""
    pytest.importorskip("deepspeed", reason="pip install deepspeed (CPU import is enough)")
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env
    from deepspeed.runtime.config import DeepSpeedConfig

    cmd, _ = accelerate_command(LaunchConfig(num_processes=8, accelerate_config=str(ZERO[stage])), "m", [], cuda=True)
    args, defaults, _ = parsed_by_accelerate(cmd)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision("bf16")
    micro, accum = 4, 2  # train.batch_size, train.grad_accum; world size 1 for the parse
    plugin.deepspeed_config_process(must_match=False, train_micro_batch_size_per_gpu=micro,
                                    gradient_accumulation_steps=accum, train_batch_size=micro * accum,
                                    gradient_clipping=1.0)
    parsed = DeepSpeedConfig(plugin.deepspeed_config)
    assert parsed.zero_optimization_stage == stage and parsed.bfloat16_config.enabled
    assert parsed.train_micro_batch_size_per_gpu == micro and parsed.gradient_accumulation_steps == accum
    assert parsed.zero_config.gather_16bit_weights_on_model_save == (stage == 3)  # ZeRO-3 saves a whole model
    broken = {**plugin.deepspeed_config, "zero_optimization": {**plugin.deepspeed_config["zero_optimization"],
                                                               "stage": 7}}
    with pytest.raises(Exception, match="stage"):
        DeepSpeedConfig(broken)


def test_a_machine_whose_heartbeat_stopped_is_named(tmp_path, monkeypatch):
    """Another host's machine is judged by its heartbeat's age; one from before this machine started (an
    earlier attempt of the run), or one that finished, is not held against it."""
    import time

    import pytest

    from selfplay import liveness
    from selfplay.io import write_json

    monkeypatch.setattr(liveness, "HEARTBEAT_S", 0.05)
    with liveness.heartbeat(tmp_path, 0, 2, timeout=1.0):
        liveness.check_peers()  # machine 1 has not started: waited for, as before
        beat = tmp_path / ".machines" / "machine1.json"
        write_json(beat, {"pid": 1, "host": "elsewhere", "time": time.time() - 3600, "started": 0, "finished": False})
        liveness.check_peers()  # a heartbeat of an earlier attempt
        write_json(beat, {"pid": 1, "host": "elsewhere", "time": time.time(), "started": 0, "finished": False})
        liveness.check_peers()  # alive
        time.sleep(1.2)  # the age printed is at least 1 s: more on a loaded machine (seen: 5 s)
        with pytest.raises(liveness.MachineLostError, match=r"machine 1 of 2 stopped: no heartbeat from it "
                                                            r"\(PID 1 on elsewhere\) for \d+s \(launch.heartbeat_timeout=1\)"):
            liveness.check_peers()
        write_json(beat, {"pid": 1, "host": "elsewhere", "time": time.time() - 5, "started": 0, "finished": True})
        liveness.check_peers()  # it finished its part
    assert read_json_file(tmp_path / ".machines" / "machine0.json")["finished"]
    liveness.check_peers()  # outside a multi-node loop: nothing to watch


def read_json_file(path):
    import json

    return json.loads(path.read_text())
