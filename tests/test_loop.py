"""`selfplay loop` through the real CLI on the tiny model: 2 SPIN iterations, resume, invalidation, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import cli_process
from selfplay.io import read_jsonl

TINY = ["--set", "data.num=20", "--set", "data.eval_num=4", "--set", "generate.max_new_tokens=16",
        "--set", "generate.batch_size=4", "--set", "train.batch_size=4", "--set", "train.lr=1e-3",
        "--set", "train.precision=fp32", "--set", "eval.max_new_tokens=16", "--set", "train.logging_steps=1"]


def loop_args(model: Path, run_dir: Path, *extra: str, iters: int = 2) -> list[str]:
    # --iters is an explicit flag: it wins over any `--set loop.iters=...` among ``extra``.
    return ["loop", "--method", "spin", "--iters", str(iters), "--model", str(model), "--data", "synth:arith",
            "--run-dir", str(run_dir), *TINY, *extra]


def test_two_iteration_spin_loop(cli, tiny_model, tmp_path):
    run = tmp_path / "run"
    res = cli(loop_args(tiny_model, run))
    assert res.exit_code == 0, res.output
    rows = read_jsonl(run / "eval" / "iterations.jsonl")
    assert [r["iteration"] for r in rows] == ["base", 0, 1]
    assert all(r["task"] == "arith" and 0 <= r["accuracy"] <= 1 for r in rows)
    assert "spin_margin" in rows[1] and "spin_margin" in rows[2]
    # iteration 1 trains on its own pairs plus iteration 0's (a few empty generations may be dropped)
    own = [len(read_jsonl(run / f"iter_{k}" / "train_data" / "own.jsonl")) for k in (0, 1)]
    assert rows[1]["pairs"] == own[0] >= 12 and rows[2]["pairs"] == own[0] + own[1]
    assert (run / "eval" / "plots" / "iterations.png").stat().st_size > 1000
    assert "| iter |" in (run / "eval" / "report.md").read_text()
    assert "train loss (" not in (run / "eval" / "report.md").read_text()  # SPIN's logistic loss needs no note
    state = json.loads((run / "state.json").read_text())["units"]
    assert all(u["done"] for u in state.values()) and "iter_1/train" in state
    assert (run / "config.yaml").exists() and (run / "iter_1" / "train" / "model" / "config.json").exists()

    # A rerun with the same command redoes nothing.
    mtime = (run / "iter_0" / "generate.jsonl").stat().st_mtime_ns
    res = cli(loop_args(tiny_model, run))
    assert res.exit_code == 0 and (run / "iter_0" / "generate.jsonl").stat().st_mtime_ns == mtime
    assert read_jsonl(run / "eval" / "iterations.jsonl") == rows

    # A changed training input redoes training and what follows, not iteration 0's generation.
    res = cli(loop_args(tiny_model, run, "--set", "train.beta=0.2"))
    assert res.exit_code == 0, res.output
    assert (run / "iter_0" / "generate.jsonl").stat().st_mtime_ns == mtime
    state2 = json.loads((run / "state.json").read_text())["units"]
    assert state2["iter_0/generate"] == state["iter_0/generate"]
    assert state2["iter_0/train"]["fingerprint"] != state["iter_0/train"]["fingerprint"]
    assert state2["iter_1/generate"]["fingerprint"] != state["iter_1/generate"]["fingerprint"]

    res = cli(["eval", "compare", run, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["iteration"] == "base"


def test_loop_resumes_after_sigkill_mid_generation(tiny_model, tmp_path):
    args = loop_args(tiny_model, tmp_path / "killed", "--set", "generate.batch_size=1", iters=1)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = cli_process.CLIProcess(args, env, capture=False)
    shard_dir = tmp_path / "killed" / "iter_0" / "generate"
    deadline = time.time() + 120
    while time.time() < deadline:
        lines = sum(f.read_text().count("\n") for f in shard_dir.glob("shard-*.jsonl")) if shard_dir.exists() else 0
        if lines >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "iter_0" / "generate.jsonl").exists(), "killed too late: generation had finished"
    res = cli_process.run_cli(args, env)
    assert res.returncode == 0, res.stderr

    clean = loop_args(tiny_model, tmp_path / "clean", "--set", "generate.batch_size=1", iters=1)
    res = cli_process.run_cli(clean, env)
    assert res.returncode == 0, res.stderr
    killed = read_jsonl(tmp_path / "killed" / "iter_0" / "generate.jsonl")
    clean_rows = read_jsonl(tmp_path / "clean" / "iter_0" / "generate.jsonl")
    assert [r["id"] for r in killed] == [r["id"] for r in clean_rows]
    assert len({r["id"] for r in killed}) == len(killed) == 16
    pairs_k = read_jsonl(tmp_path / "killed" / "iter_0" / "train_data" / "pairs.jsonl")
    pairs_c = read_jsonl(tmp_path / "clean" / "iter_0" / "train_data" / "pairs.jsonl")
    assert len(pairs_k) == len(pairs_c)


def test_two_iteration_sppo_loop(cli, tiny_model, tiny_reward, tmp_path):
    """SPPO: K samples ranked by a (tiny random) reward model, disjoint prompts, squared loss to win rates."""
    run = tmp_path / "sppo"
    res = cli(["loop", "--method", "sppo", "--iters", "2", "--model", tiny_model, "--data", "synth:arith",
               "--run-dir", run, *TINY, "--set", "generate.n=3", "--set", "loop.prompts_per_iter=6",
               "--set", f"rank.judge=reward-model:{tiny_reward}", "--set", "train.beta=0.1",
               "--set", "eval.num_samples=2"])
    assert res.exit_code == 0, res.output
    rows = read_jsonl(run / "eval" / "iterations.jsonl")
    assert [r["iteration"] for r in rows] == ["base", 0, 1]
    assert all(isinstance(r["mean_score"], float) for r in rows)
    # fresh samples on the held-out prompts, scored by the verifier and by the judge
    assert all(r["samples_per_prompt"] == 2 and 0 <= r["sample_accuracy"] <= 1 and isinstance(r["sample_score"], float)
               for r in rows)
    report = (run / "eval" / "report.md").read_text()
    assert "sample acc" in report
    # The SPIN margin is SPIN's (and its baselines'): an SPPO evaluation scores only the real answers.
    assert not any("spin_margin" in r for r in rows) and "SPIN margin" not in report
    samples = read_jsonl(run / "iter_1" / "eval" / "samples.jsonl")
    assert all("answer_logp" not in r and r["real_logp"] < 0 for r in samples)
    # The squared loss's scale is explained under the table, in the terminal and in the report (beta = 0.1 here).
    assert "train loss (sppo): the squared distance" in report and "1/beta = 10;" in report
    assert "train loss (sppo): the squared distance" in " ".join(res.output.split())
    ids = [{r["id"] for r in read_jsonl(run / f"iter_{k}" / "generate.jsonl")} for k in (0, 1)]
    assert len(ids[0]) == len(ids[1]) == 6 and not ids[0] & ids[1]  # disjoint prompt slices
    for rec in read_jsonl(run / "iter_0" / "rank.jsonl"):
        m = rec["win_matrix"]
        assert len(m) == 3 and all(abs(m[i][j] + m[j][i] - 1) < 1e-6 for i in range(3) for j in range(3))
    pairs = read_jsonl(run / "iter_1" / "train_data" / "pairs.jsonl")
    assert len(pairs) == 6 and all(p["chosen_prob"] >= p["rejected_prob"] for p in pairs)
    html = (run / "eval" / "report.html").read_text()  # K samples with scores, the win matrix, the pair marked
    assert 'class="heatmap"' in html and "badge chosen" in html and "badge rejected" in html and "score " in html
    assert "train loss (sppo): the squared distance" in html
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"] == "sppo" and saved["generate"]["temperature"] == 0.7  # the SPPO preset


def test_a_second_loop_on_a_run_directory_in_use_is_refused(cli, tiny_model, tmp_path):
    """A rerun started while the first still runs used to replace its files under it; now it is refused at
    once, naming the first's PID, and the first finishes with what an undisturbed run produces."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    small = ["--set", "data.num=12", "--set", "generate.max_new_tokens=8"]
    first, alone = (loop_args(tiny_model, tmp_path / name, *small, iters=1) for name in ("run", "alone"))
    proc = cli_process.CLIProcess(first, env)
    owner = tmp_path / "run" / ".selfplay.lock.owner"
    deadline = time.time() + 120
    while not owner.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    second = cli(first)
    assert proc.poll() is None, "the first loop ended before the second started"
    assert second.exit_code == 2
    assert f"is in use by another selfplay process (PID {proc.pid}, selfplay loop" in second.stderr
    assert cli(alone).exit_code == 0  # the undisturbed run, while the first still runs
    assert proc.wait(timeout=300) == 0, proc.communicate()[1]

    def result(run: Path) -> list[dict]:
        timing = {"seconds", "iteration_seconds", "model"}
        return [{k: v for k, v in row.items() if k not in timing} for row in read_jsonl(run / "eval" / "iterations.jsonl")]

    assert result(tmp_path / "run") == result(tmp_path / "alone")
    for name in ("iter_0/generate.jsonl", "iter_0/train_data/pairs.jsonl", "iter_0/train/model/model.safetensors"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes(), name


def test_zero_iterations_evaluate_the_base_model_only_and_bad_inputs_leave_no_run_directory(cli, tiny_model, tmp_path):
    run = tmp_path / "base-only"
    res = cli(loop_args(tiny_model, run, "--iters", "0"))
    assert res.exit_code == 0 and "done: 0 iteration(s)" in res.stderr
    assert [r["iteration"] for r in read_jsonl(run / "eval" / "iterations.jsonl")] == ["base"]
    assert not list(run.glob("iter_*")) and (run / "eval" / "report.md").exists()
    (tmp_path / "no-config").mkdir()
    for args, message in [
        (["--iters", "-1"], "loop.iters"),
        (["--data", str(tmp_path / "missing.jsonl")], "file not found"),
        (["--model", str(tmp_path / "no-config")], "has no config.json"),
        (["--set", "generate.top_p=0"], "generate.top_p"),
    ]:
        res = cli([*loop_args(tiny_model, tmp_path / "never"), *args])
        assert res.exit_code == 2 and message in res.stderr, (args, res.stderr)
        assert not (tmp_path / "never").exists(), args


def _tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every TensorBoard event file under ``directory``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for run_dir in sorted({events.parent for events in directory.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run_dir))  # reads every event file of the directory
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return scalars


def test_per_iteration_rows_reach_tensorboard(cli, tiny_model, tmp_path):
    """report_to names the trackers of training and of the loop's per-iteration rows: TensorBoard shows the
    base row at step 0 and iteration k at step k + 1, with the same numbers as iterations.jsonl; a rerun that
    redoes nothing logs nothing again."""
    import pytest

    pytest.importorskip("tensorboard", reason="needs the dev extra (tensorboard)")
    run = tmp_path / "run"
    args = ["loop", "--method", "spin", "--iters", "1", "--model", str(tiny_model), "--data", "synth:arith",
            "--run-dir", str(run), *TINY, "--set", "report_to=[tensorboard]"]
    res = cli(args)
    assert res.exit_code == 0, res.output
    rows = read_jsonl(run / "eval" / "iterations.jsonl")
    scalars = _tensorboard_scalars(run / "trackers")
    assert scalars["real_loglik"] == [(0, pytest.approx(rows[0]["real_loglik"])),
                                      (1, pytest.approx(rows[1]["real_loglik"]))]
    assert scalars["accuracy"] == [(0, pytest.approx(rows[0]["accuracy"])), (1, pytest.approx(rows[1]["accuracy"]))]
    assert [step for step, _ in scalars["train_loss"]] == [1] and "spin_margin" in scalars
    logged = read_jsonl(run / "eval" / "metrics.jsonl")  # the same rows as JSONL, whatever the trackers
    assert [r["step"] for r in logged] == [0, 1] and logged[1]["iteration"] == 0
    # training steps went to their own TensorBoard run under the iteration's train directory
    assert "loss" in _tensorboard_scalars(run / "iter_0" / "train" / "trackers")

    assert cli(args).exit_code == 0  # everything done: nothing is logged twice
    assert len(read_jsonl(run / "eval" / "metrics.jsonl")) == 2
    assert [step for step, _ in _tensorboard_scalars(run / "trackers")["real_loglik"]] == [0, 1]


def test_runs_made_before_lean_activations_keep_their_training_fingerprint():
    """train.lean_activations joins the training unit's inputs only when off: on (the default) what a run made
    before the setting existed hashed is unchanged, so resuming it after an upgrade trains nothing again.
    train.mmap_threshold (memory and time only) never joins."""
    import dataclasses

    from selfplay.config import Config
    from selfplay.stages.loop import _train_inputs

    cfg = Config()
    before = dataclasses.asdict(cfg.train)
    before.pop("eval_every")
    before.pop("lean_activations")
    before.pop("mmap_threshold")
    assert _train_inputs(cfg, "data")[0] == before
    cfg.train.mmap_threshold = 131072
    assert _train_inputs(cfg, "data")[0] == before
    cfg.train.lean_activations = False
    assert _train_inputs(cfg, "data")[0] == {**before, "lean_activations": False}


def test_evaluation_without_the_margin_scores_the_real_answers_alike(tiny_model, tmp_path):
    """An evaluation for a method without the SPIN margin scores only the real answers: the same real
    log-likelihoods and answers as with the margin (the packed layout scores each response on its own)."""
    from selfplay.config import load_config
    from selfplay.data.synth_arith import make_problems
    from selfplay.stages.evaluate import evaluate_model

    cfg = load_config(sets=["model.dtype=float32", "eval.max_new_tokens=12", "eval.batch_size=4"])
    records = make_problems(6, seed=3)
    base = evaluate_model(cfg, tiny_model, records, tmp_path / "base")
    previous = tmp_path / "base" / "samples.jsonl"
    with_margin = evaluate_model(cfg, tiny_model, records, tmp_path / "with", previous=previous)
    without = evaluate_model(cfg, tiny_model, records, tmp_path / "without", previous=previous, margin=False)
    assert "spin_margin" in with_margin and "spin_margin" not in without and "spin_margin" not in base
    assert abs(with_margin["real_loglik"] - without["real_loglik"]) < 1e-5
    a, b = (read_jsonl(tmp_path / name / "samples.jsonl") for name in ("with", "without"))
    assert [r["answer"] for r in a] == [r["answer"] for r in b]
    assert all(abs(x["real_logp"] - y["real_logp"]) < 1e-4 and "answer_logp" in x and "answer_logp" not in y
               for x, y in zip(a, b))


def test_an_evaluation_without_the_margin_is_redone_for_a_method_with_it(cli, tiny_model, tmp_path):
    """The base model evaluated for SPPO (no answer log-probs) is evaluated again when the run directory goes on
    with SPIN, so SPIN's first margin has the base model's answers to compare with."""
    run = tmp_path / "run"
    # How far SPPO gets on the random tiny model does not matter: its base evaluation is written first.
    cli(loop_args(tiny_model, run, "--method", "sppo", "--set", "rank.judge=verifier:arith", "--set", "generate.n=2",
                  iters=1))
    assert "answer_logp" not in read_jsonl(run / "eval" / "base" / "samples.jsonl")[0]
    res = cli(loop_args(tiny_model, run, iters=1))
    assert res.exit_code == 0, res.output
    assert all("answer_logp" in r for r in read_jsonl(run / "eval" / "base" / "samples.jsonl"))
    assert [("spin_margin" in r) for r in read_jsonl(run / "eval" / "iterations.jsonl")] == [False, True]
