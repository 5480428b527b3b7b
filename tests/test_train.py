"""`selfplay train` through the real CLI on the tiny model: SPIN training, errors, LoRA, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import cli_process
import pytest

from selfplay.io import read_jsonl, write_jsonl

FAST = ["--set", "train.precision=fp32", "--set", "train.logging_steps=1"]


def make_pairs(path: Path, n: int = 12) -> Path:
    rows = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
             "chosen": f"{i} + {i} = {2 * i}. #### {2 * i}", "rejected": f"The answer is {i + 7}."} for i in range(n)]
    write_jsonl(path, rows)
    return path


def test_spin_train_cli(cli, tiny_model, tmp_path):
    pairs = make_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "out"
    res = cli(["train", "--model", tiny_model, "--data", pairs, "--out", out, "--method", "spin", "--lr", "1e-3",
               "--batch-size", "4", "--epochs", "2", *FAST])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6  # 12 pairs / batch 4 * 2 epochs
    metrics = read_jsonl(out / "metrics.jsonl")
    for key in ("loss", "rewards/real", "rewards/generated", "rewards/margins", "rewards/accuracies",
                "logps/real", "logps/generated"):
        assert key in metrics[-1]
    # Step 1 sees the untouched policy: log-ratios against the precomputed reference are exactly 0.
    assert abs(metrics[0]["rewards/margins"]) < 1e-5 and abs(metrics[0]["loss"] - 0.693147) < 1e-4
    # With a large lr the margin must grow: SPIN pushes real answers up and generated ones down.
    assert metrics[-1]["rewards/margins"] > 0.01
    ref = read_jsonl(out / "ref_logps.jsonl")
    assert len(ref) == 12 and all(r["chosen"] < 0 for r in ref)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "model") is not None
    assert (out / "config.yaml").exists() and not (out / "checkpoint").exists()


def test_train_lora_merged(cli, tiny_model, tmp_path):
    pairs = make_pairs(tmp_path / "pairs.jsonl", n=4)
    out = tmp_path / "out"
    res = cli(["train", "--model", tiny_model, "--data", pairs, "--out", out, "--lora", "--save-merged",
               "--batch-size", "2", "--lr", "1e-3", *FAST])
    assert res.exit_code == 0, res.output
    assert (out / "model" / "adapter_config.json").exists()
    assert (out / "merged" / "config.json").exists()
    assert json.loads((out / "summary.json").read_text())["model_path"].endswith("merged")


@pytest.mark.parametrize("row, message", [
    ({"id": "a", "prompt": [{"role": "user", "content": "hi"}], "chosen": "", "rejected": "x"}, "field 'chosen'"),
    ({"id": "a", "prompt": [{"role": "user", "content": "hi"}], "chosen": "y"}, "field 'rejected'"),
    ({"id": "a", "prompt": [], "chosen": "y", "rejected": "x"}, "field 'prompt'"),
    ({"id": "a", "prompt_messages": [{"role": "user", "content": "hi"}], "samples": ["x"]}, "sample-set record"),
])
def test_train_bad_pairs(cli, tiny_model, tmp_path, row, message):
    good = {"id": "g", "prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [good, row])
    res = cli(["train", "--model", tiny_model, "--data", path, "--out", tmp_path / "o"])
    assert res.exit_code == 2
    assert "bad.jsonl" in res.output and "line 2" in res.output and message in res.output


def test_train_missing_model(cli, tmp_path):
    pairs = make_pairs(tmp_path / "pairs.jsonl", n=2)
    res = cli(["train", "--model", tmp_path / "nope", "--data", pairs, "--out", tmp_path / "o"])
    assert res.exit_code == 2 and "nope" in res.output


def test_sppo_train_needs_probs(cli, tiny_model, tmp_path):
    pairs = make_pairs(tmp_path / "pairs.jsonl", n=2)
    res = cli(["train", "--model", tiny_model, "--data", pairs, "--out", tmp_path / "o", "--method", "sppo"])
    assert res.exit_code == 2 and "chosen_prob" in res.output
    rows = [dict(r, chosen_prob=0.8, rejected_prob=0.3) for r in read_jsonl(pairs)]
    write_jsonl(pairs, rows)
    res = cli(["train", "--model", tiny_model, "--data", pairs, "--out", tmp_path / "o", "--method", "sppo",
               "--beta", "0.1", *FAST])
    assert res.exit_code == 0, res.output
    logged = read_jsonl(tmp_path / "o" / "metrics.jsonl")[-1]
    assert "rewards/chosen" in logged and "logps/rejected" in logged and "rewards/real" not in logged


def test_train_resumes_after_sigkill(tiny_model, tmp_path):
    """Kill training once a checkpoint exists; the rerun resumes there and finishes the planned steps."""
    pairs = make_pairs(tmp_path / "pairs.jsonl", n=40)
    out = tmp_path / "out"
    cmd = ["train", "--model", str(tiny_model), "--data", str(pairs),
           "--out", str(out), "--batch-size", "2", "--set", "train.save_steps=2", *FAST]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = cli_process.CLIProcess(cmd, env, capture=False)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoint" / "trainer_state.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint" / "trainer_state.json").exists(), "no checkpoint was written before the kill"
    done_before = json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"]
    assert not (out / "summary.json").exists()
    res = cli_process.run_cli(cmd, env)
    assert res.returncode == 0, res.stderr
    assert "resuming training at step" in res.stdout + res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and done_before >= 2
    steps = [m["step"] for m in read_jsonl(out / "metrics.jsonl")]
    assert steps[-1] == 20 and max(steps) == 20


@pytest.mark.parametrize("killed_at", ["before the swap", "between the renames", "between the renames, new one torn",
                                       "after the swap"])
def test_a_checkpoint_swap_killed_midway_is_recovered(tmp_path: Path, killed_at: str) -> None:
    """save_checkpoint swaps checkpoint.tmp in with two renames; a kill between them leaves no `checkpoint`.
    The rerun takes the newer complete one (tmp), else the previous one (old)."""
    from selfplay.io import write_json
    from selfplay.stages.train_io import recover_checkpoint

    ckpt, tmp, old = tmp_path / "checkpoint", tmp_path / "checkpoint.tmp", tmp_path / "checkpoint.old"
    for path, step in ((ckpt, 2), (tmp, 4)):
        path.mkdir()
        write_json(path / "trainer_state.json", {"step": step})
    if killed_at.startswith("between the renames"):
        ckpt.rename(old)
        if killed_at.endswith("torn"):
            (tmp / "trainer_state.json").unlink()  # killed before its state was written: not complete
    elif killed_at == "after the swap":
        ckpt.rename(old)
        tmp.rename(ckpt)
    recover_checkpoint(ckpt)
    expected = {"before the swap": 2, "between the renames": 4, "between the renames, new one torn": 2,
                "after the swap": 4}[killed_at]
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == expected
    assert not old.exists()  # the next swap renames checkpoint onto that name


class _OneProcessAccelerator:
    """What save_checkpoint calls on an accelerator, for one process: ``save_state`` writes a file; each
    barrier records whether the copy was already marked complete."""

    is_main_process = True

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.barriers = tmp, []

    def save_state(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "random_states_0.pkl").write_bytes(b"rng")

    def wait_for_everyone(self) -> None:
        self.barriers.append((self.tmp / "trainer_state.json").exists())


def test_a_checkpoint_after_a_swap_killed_while_deleting_the_old_one(tmp_path: Path) -> None:
    """A kill after the swap, while the previous checkpoint was being deleted, leaves a half-deleted
    checkpoint.old: the rerun's next checkpoint must still swap in (rename() onto a non-empty directory fails),
    and every rank's files are in the copy before it is marked complete (a barrier after save_state)."""
    from selfplay.io import write_json
    from selfplay.stages.train_io import recover_checkpoint, save_checkpoint

    ckpt, old = tmp_path / "checkpoint", tmp_path / "checkpoint.old"
    ckpt.mkdir()
    write_json(ckpt / "trainer_state.json", {"step": 4})
    old.mkdir()
    (old / "optimizer.bin").write_bytes(b"half deleted")  # its trainer_state.json already gone
    recover_checkpoint(ckpt)
    assert not old.exists()

    old.mkdir()  # the same leftover, where a resume did not pass through recover_checkpoint
    (old / "optimizer.bin").write_bytes(b"half deleted")
    accelerator = _OneProcessAccelerator(tmp_path / "checkpoint.tmp")
    save_checkpoint(accelerator, ckpt, {"step": 6})
    assert json.loads((ckpt / "trainer_state.json").read_text()) == {"step": 6}
    assert (ckpt / "random_states_0.pkl").exists() and not old.exists()
    assert not (tmp_path / "checkpoint.tmp").exists()
    assert accelerator.barriers[:2] == [False, False]  # before save_state, and after it before the marker


def test_adamw_runs_its_fused_kernel(cli, tiny_model, tmp_path, monkeypatch):
    """AdamW with fused=True on a CPU (measured 4x faster per step than torch's default per-tensor loop there;
    HF's Trainer, and so TRL, default to it too); RMSprop, which has no fused CPU kernel, as it is."""
    import torch

    made: list[tuple[str, dict]] = []
    for cls in (torch.optim.AdamW, torch.optim.RMSprop):
        class Recording(cls):  # type: ignore[misc, valid-type]
            def __init__(self, params, _name=cls.__name__, **kw):
                made.append((_name, kw))
                super().__init__(params, **kw)
        monkeypatch.setattr(torch.optim, cls.__name__, Recording)
    pairs = make_pairs(tmp_path / "pairs.jsonl", n=4)
    for optimizer in ("adamw", "rmsprop"):
        res = cli(["train", "--model", tiny_model, "--data", pairs, "--out", tmp_path / optimizer, "--method", "spin",
                   "--batch-size", 2, "--max-steps", 1, "--set", f"train.optimizer={optimizer}", *FAST])
        assert res.exit_code == 0, res.output
    assert [(name, kw.get("fused")) for name, kw in made] == [("AdamW", True), ("RMSprop", None)]


def test_training_maps_blocks_from_train_mmap_threshold(cli, tiny_model, tmp_path, monkeypatch):
    """train.mmap_threshold is the glibc mmap threshold while training (1 MiB by default), handed back after it;
    out of its range (a page .. glibc's 32 MiB) it is refused before anything is written."""
    from selfplay.core import memory

    calls: list[int] = []
    monkeypatch.setattr(memory, "_mallopt", lambda param, value: calls.append(value) or True)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    pairs = make_pairs(tmp_path / "pairs.jsonl", n=4)
    common = ["train", "--model", tiny_model, "--data", pairs, "--method", "spin", "--batch-size", 2, "--max-steps", 1,
              *FAST]
    for out, extra, wanted in (("default", [], 1 << 20), ("small", ["--set", "train.mmap_threshold=131072"], 131072)):
        calls.clear()
        res = cli([*common, "--out", tmp_path / out, *extra])
        assert res.exit_code == 0, res.output
        assert calls == [wanted, 32 << 20], out
    res = cli([*common, "--out", tmp_path / "huge", "--set", f"train.mmap_threshold={64 << 20}"])
    assert res.exit_code == 2 and "train.mmap_threshold" in res.output and not (tmp_path / "huge").exists()


def test_reference_pass_batches_by_reference_batch_size(cli, tiny_model, tmp_path, monkeypatch):
    """train.reference_batch_size sets the reference pass's batches (default: train.batch_size); the log-probs are
    the same up to float rounding (other matrix shapes); 0 is refused."""
    import selfplay.stages.train as train_stage

    seen: list[int] = []
    real = train_stage.precompute_reference

    def recording(accelerator, scorer, policy, examples, pad_id, batch_size, *rest):
        seen.append(batch_size)
        return real(accelerator, scorer, policy, examples, pad_id, batch_size, *rest)

    monkeypatch.setattr(train_stage, "precompute_reference", recording)
    pairs = make_pairs(tmp_path / "pairs.jsonl", n=6)
    refs = []
    for name, extra in (("default", []), ("six", ["--set", "train.reference_batch_size=6"])):
        res = cli(["train", "--model", tiny_model, "--data", pairs, "--out", tmp_path / name, "--method", "spin",
                   "--batch-size", 2, "--max-steps", 1, *FAST, *extra])
        assert res.exit_code == 0, res.output
        refs.append({r["id"]: (r["chosen"], r["rejected"]) for r in read_jsonl(tmp_path / name / "ref_logps.jsonl")})
    assert seen == [2, 6]
    assert refs[0].keys() == refs[1].keys() and len(refs[0]) == 6
    assert all(abs(a - b) < 1e-4 for k in refs[0] for a, b in zip(refs[0][k], refs[1][k]))
    res = cli(["train", "--model", tiny_model, "--data", pairs, "--out", tmp_path / "zero", "--method", "spin",
               "--set", "train.reference_batch_size=0", *FAST])
    assert res.exit_code != 0 and "train.reference_batch_size" in res.output
