"""Evaluation inside an iteration and checkpoint selection (train.eval_every, loop.select, loop.patience), through
the real CLI on the tiny model: evaluation rows at the right steps, training unchanged by evaluating, the best
evaluation's weights kept, patience stopping early, the validation split, and resume after a kill."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import cli_process
import pytest
import torch

from selfplay.io import read_json, read_jsonl, write_jsonl
from test_train import make_pairs

FP32 = ["--set", "train.precision=fp32", "--set", "train.logging_steps=1", "--set", "eval.max_new_tokens=8"]


def val_records(path: Path, n: int = 4) -> Path:
    """SFT records with an arithmetic task (their greedy answers are checked by the arith verifier)."""
    write_jsonl(path, [{"id": f"v{i}", "messages": [{"role": "user", "content": f"What is {i} + 3?"}],
                        "reference": f"{i} + 3 = {i + 3}. The answer is {i + 3}.",
                        "meta": {"task": "arith", "answer": str(i + 3)}} for i in range(n)])
    return path


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (model_dir / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(model_dir / name)


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def steps_of(rows: list[dict], key: str) -> list[int]:
    return [r["step"] for r in rows if key in r]


def train_rows(rows: list[dict]) -> list[dict]:
    """The training steps' rows without their timing."""
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows if "loss" in r]


@pytest.mark.parametrize("lora", [False, True])
def test_evaluating_leaves_training_unchanged(cli, tiny_model, tmp_path, monkeypatch, lora):
    """select: last with an evaluation at every step trains exactly the weights of a run without one, even when
    the evaluation draws from every random generator (LoRA's dropout draws from torch's during training)."""
    import numpy as np

    from selfplay.core.samplers import HFSampler

    generate = HFSampler.generate

    def drawing(self, *args, **kw):  # an evaluation that draws random numbers: the training must not notice
        torch.rand(3), random.random(), np.random.rand()
        return generate(self, *args, **kw)

    monkeypatch.setattr(HFSampler, "generate", drawing)
    pairs, val = make_pairs(tmp_path / "pairs.jsonl", n=8), val_records(tmp_path / "val.jsonl")
    common = ["train", "--model", tiny_model, "--data", pairs, "--lr", "1e-3", "--batch-size", "2", "--epochs", "2",
              *FP32, *(["--lora"] if lora else [])]
    assert cli([*common, "--out", tmp_path / "plain"]).exit_code == 0
    res = cli([*common, "--out", tmp_path / "eval", "--val-data", val, "--set", "train.eval_every=1"])
    assert res.exit_code == 0, res.output
    assert "eval at step 8 (ep 2/2)" in res.stderr
    assert same_weights(tmp_path / "plain" / "model", tmp_path / "eval" / "model")
    plain, evaluated = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("plain", "eval"))
    assert train_rows(plain) == train_rows(evaluated)
    assert steps_of(evaluated, "eval/real_loglik") == steps_of(evaluated, "eval/accuracy") == list(range(1, 9))
    row = next(r for r in evaluated if "eval/accuracy" in r)
    assert row["eval/n"] == 4 and 0 <= row["eval/accuracy"] <= 1 and row["eval/real_loglik"] < 0
    assert row["epoch"] == 0.25
    summary = read_json(tmp_path / "eval" / "summary.json")
    assert "kept" not in summary and [e["step"] for e in summary["evaluations"]] == list(range(1, 9))
    assert "evaluations" not in read_json(tmp_path / "plain" / "summary.json")


def scripted_accuracy(monkeypatch, trajectory: list[float], n: int = 4) -> None:
    """Evaluation e (0-based) scores trajectory[e] (the last repeats): the task's verifier is replaced by one
    that counts its calls (n per evaluation, one per validation prompt)."""
    import selfplay.stages.evaluate as evaluate

    calls = []

    def verifier(records, configured):
        def check(answer: str, gold: str) -> bool:
            e, i = divmod(len(calls), n)
            calls.append(answer)
            return i < round(trajectory[min(e, len(trajectory) - 1)] * n)

        return check, lambda record: record["meta"]["answer"]

    monkeypatch.setattr(evaluate, "task_verifier", verifier)


def test_best_keeps_the_best_evaluation_and_patience_stops(cli, tiny_model, tmp_path, monkeypatch):
    scripted_accuracy(monkeypatch, [0.25, 0.75, 0.5, 0.5, 1.0])
    pairs, val = make_pairs(tmp_path / "pairs.jsonl", n=8), val_records(tmp_path / "val.jsonl")
    # A constant learning rate: the first 2 steps of any run are the same steps, whatever its length.
    common = ["train", "--model", tiny_model, "--data", pairs, "--lr", "1e-3", "--batch-size", "2", "--epochs", "3",
              *FP32, "--set", "train.scheduler=constant", "--set", "train.warmup_ratio=0"]
    res = cli([*common, "--out", tmp_path / "best", "--val-data", val, "--set", "train.eval_every=1",
               "--set", "loop.select=best", "--set", "loop.patience=2"])
    assert res.exit_code == 0, res.output
    assert "kept step 2 (ep 0.5/3): best accuracy 0.7500" in res.stderr
    summary = read_json(tmp_path / "best" / "summary.json")
    # evaluations 3 and 4 did not improve on step 2: stopped at step 4 of 12, the 1.0 at step 5 never seen
    assert summary["steps"] == 4 and summary["planned_steps"] == 12
    assert summary["kept"] == {"select": "best", "metric": "accuracy", "step": 2, "epoch": 0.5, "epochs": 3.0,
                               "value": 0.75, "trained_steps": 4, "planned_steps": 12, "evaluations": 4,
                               "stopped_early": True}
    rows = read_jsonl(tmp_path / "best" / "metrics.jsonl")
    assert steps_of(rows, "loss") == steps_of(rows, "eval/accuracy") == [1, 2, 3, 4]
    assert [r["eval/accuracy"] for r in rows if "eval/accuracy" in r] == [0.25, 0.75, 0.5, 0.5]
    assert not (tmp_path / "best" / "best").exists() and not (tmp_path / "best" / "checkpoint").exists()
    # model/ holds the weights after step 2: those of a run that stops there
    assert cli([*common, "--out", tmp_path / "two", "--max-steps", "2"]).exit_code == 0
    assert same_weights(tmp_path / "best" / "model", tmp_path / "two" / "model")
    assert not same_weights(tmp_path / "best" / "model", tiny_model)
    meta = read_json(tmp_path / "best" / "model" / "selfplay_model.json")
    assert meta["kept"]["step"] == 2 and meta["steps"] == 4
    card = (tmp_path / "best" / "model" / "README.md").read_text()
    assert "| weights kept | step 2 (ep 0.5/3): the best validation accuracy (0.75) of 4 evaluations, stopped early " \
           "at step 4 |" in card


@pytest.mark.parametrize("lora", [False, True])
def test_best_per_epoch(cli, tiny_model, tmp_path, monkeypatch, lora):
    """Per-epoch evaluation; a best last evaluation keeps the final weights (nothing is loaded back). With LoRA
    an earlier best is kept as its adapters, and the merged model is built from them."""
    scripted_accuracy(monkeypatch, [0.5, 0.25] if lora else [0.25, 0.5])
    pairs, val = make_pairs(tmp_path / "pairs.jsonl", n=8), val_records(tmp_path / "val.jsonl")
    common = ["train", "--model", tiny_model, "--data", pairs, "--lr", "1e-3", "--batch-size", "2", "--epochs", "2",
              *FP32, "--set", "train.scheduler=constant", "--set", "train.warmup_ratio=0",
              *(["--lora", "--save-merged"] if lora else [])]
    try:
        import tensorboard  # noqa: F401  (the dev extra)
        trackers = ["--set", "report_to=[tensorboard]"]
    except ImportError:
        trackers = []
    res = cli([*common, "--out", tmp_path / "best", "--val-data", val, "--set", "train.eval_every=epoch",
               "--set", "loop.select=best", *trackers])
    assert res.exit_code == 0, res.output
    if trackers:  # the evaluation rows reach the trackers at their steps, as the training rows do
        from test_loop import _tensorboard_scalars

        scalars = _tensorboard_scalars(tmp_path / "best" / "trackers")
        assert scalars["eval/accuracy"] == [(4, 0.5 if lora else 0.25), (8, 0.25 if lora else 0.5)]
        assert [s for s, _ in scalars["eval/real_loglik"]] == [4, 8] and len(scalars["loss"]) == 8
    kept = read_json(tmp_path / "best" / "summary.json")["kept"]
    step = 4 if lora else 8
    assert (kept["step"], kept["epoch"], kept["evaluations"], kept["stopped_early"]) == (step, step / 4, 2, False)
    rows = read_jsonl(tmp_path / "best" / "metrics.jsonl")
    assert steps_of(rows, "eval/accuracy") == [4, 8] and steps_of(rows, "loss") == list(range(1, 9))
    assert cli([*common, "--out", tmp_path / "plain", "--max-steps", str(step)]).exit_code == 0
    for name in ("model", "merged") if lora else ("model",):
        assert same_weights(tmp_path / "best" / name, tmp_path / "plain" / name), name


def test_bad_evaluation_settings_are_refused(cli, tiny_model, tmp_path):
    pairs, val = make_pairs(tmp_path / "pairs.jsonl", n=4), val_records(tmp_path / "val.jsonl")
    open_ended = tmp_path / "open.jsonl"
    write_jsonl(open_ended, [{k: v for k, v in r.items() if k != "meta"} for r in read_jsonl(val)])
    train = ["train", "--model", tiny_model, "--data", pairs, "--out", tmp_path / "out"]
    for args, message in [
        (["--set", "train.eval_every=2"], "--val-data"),
        (["--val-data", val], "set train.eval_every"),
        (["--set", "loop.select=best"], "loop.select: best keeps the best evaluation"),
        (["--set", "train.eval_every=1", "--set", "loop.patience=2", "--val-data", val], "needs loop.select: best"),
        (["--set", "train.eval_every=-1"], "train.eval_every' must be >= 0"),
        (["--set", "train.eval_every=epochs"], "expected int or 'epoch'"),
        (["--set", "train.eval_every=1", "--val-data", tmp_path / "missing.jsonl"], "missing.jsonl"),
        (["--set", "train.eval_every=1", "--method", "gpm"], "a judge being trained"),
    ]:
        res = cli([*train, *args])
        assert res.exit_code == 2 and message in res.stderr, (args, res.stderr)
        assert not (tmp_path / "out").exists(), args
    res = cli([*train, "--val-data", open_ended, "--set", "train.eval_every=1", "--set", "loop.select=best",
               "--set", "loop.select_metric=accuracy", *FP32])
    assert res.exit_code == 2 and "select_metric: accuracy needs validation records with a task" in res.stderr
    assert not (tmp_path / "out").exists()
    # without a task, auto selects by the log-likelihood
    res = cli([*train, "--val-data", open_ended, "--set", "train.eval_every=1", "--set", "loop.select=best", *FP32])
    assert res.exit_code == 0, res.output
    kept = read_json(tmp_path / "out" / "summary.json")["kept"]
    assert kept["metric"] == "real_loglik"
    rows = [r for r in read_jsonl(tmp_path / "out" / "metrics.jsonl") if "eval/real_loglik" in r]
    assert kept["value"] == max(r["eval/real_loglik"] for r in rows) and "eval/accuracy" not in rows[0]


TINY_LOOP = ["--set", "data.num=24", "--set", "data.eval_num=4", "--set", "generate.max_new_tokens=12",
             "--set", "generate.batch_size=4", "--set", "train.batch_size=4", "--set", "train.lr=1e-3",
             "--set", "train.precision=fp32", "--set", "eval.max_new_tokens=12", "--set", "train.logging_steps=1"]


def loop_args(model: Path, run_dir: Path, *extra: str, iters: int = 1) -> list[str]:
    return ["loop", "--method", "spin", "--iters", str(iters), "--model", str(model), "--data", "synth:arith",
            "--run-dir", str(run_dir), *TINY_LOOP, *extra]


def test_loop_selects_on_a_validation_split(cli, tiny_model, tmp_path):
    run = tmp_path / "run"
    res = cli(loop_args(tiny_model, run, "--set", "data.val_num=5", "--set", "train.epochs=3",
                        "--set", "train.eval_every=epoch", "--set", "loop.select=best", iters=2))
    assert res.exit_code == 0, res.output
    val = read_jsonl(run / "data" / "val.jsonl")
    test_ids = {r["id"] for r in read_jsonl(run / "data" / "test.jsonl")}
    val_ids = {r["id"] for r in val}
    assert len(val) == 5 and not val_ids & test_ids
    for k in (0, 1):  # no iteration samples for, or trains on, a validation prompt
        it = run / f"iter_{k}"
        trained = {r["id"].split("#")[0] for f in ("generate.jsonl", "train_data/pairs.jsonl")
                   for r in read_jsonl(it / f)}
        assert len(trained) == 24 - 4 - 5 and not trained & (val_ids | test_ids)
    # 15 records in batches of 4: 4 steps per epoch in iteration 0, evaluated at every epoch's end
    rows = read_jsonl(run / "iter_0" / "train" / "metrics.jsonl")
    assert steps_of(rows, "eval/accuracy") == [4, 8, 12]
    assert [r["epoch"] for r in rows if "eval/accuracy" in r] == [1.0, 2.0, 3.0]
    kept = [read_json(run / f"iter_{k}" / "train" / "summary.json")["kept"] for k in (0, 1)]
    table = read_jsonl(run / "eval" / "iterations.jsonl")
    assert [r.get("kept") for r in table] == [None] + [f"step {c['step']} (ep {c['epoch']:g}/3)" for c in kept]
    report = (run / "eval" / "report.md").read_text()
    assert "| kept |" in report and f"| {table[1]['kept']} |" in report
    html = (run / "eval" / "report.html").read_text()
    assert "validation accuracy per step" in html and "validation real_loglik per step" in html
    assert table[2]["kept"] in html
    # iteration 1 started from iteration 0's kept model
    parent = read_json(run / "iter_1" / "train" / "model" / "selfplay_model.json")["parent"]
    assert parent.endswith("iter_0/train/model")
    state = read_json(run / "state.json")["units"]
    assert state["data/val"]["info"] == {"records": 5} and state["iter_0/train"]["info"]["kept"] == kept[0]
    assert cli(loop_args(tiny_model, run, "--set", "data.val_num=5", "--set", "train.epochs=3",
                         "--set", "train.eval_every=epoch", "--set", "loop.select=best", iters=2)).exit_code == 0
    assert read_json(run / "state.json")["units"] == state  # a rerun redoes nothing
    from selfplay.stages.status import run_status

    details = {u["unit"]: u["detail"] for u in run_status(run)["units"]}
    assert details["iter_1/train"] == f"kept {table[2]['kept']}" and details["data/val"] == ""


def test_loop_refuses_evaluation_without_validation_prompts(cli, tiny_model, tmp_path):
    for args, message in [
        (["--set", "train.eval_every=2"], "set data.val_num"),
        (["--set", "loop.schedule={train.eval_every: [0, 2]}"], "inside iteration 1"),
        (["--set", "data.val_num=20"], "data.val_num 20 leaves no training prompts"),
        (["--set", "loop.patience=1"], "needs loop.select: best"),
    ]:
        res = cli(loop_args(tiny_model, tmp_path / "never", *args, iters=2))
        assert res.exit_code == 2 and message in res.stderr, (args, res.stderr)
        assert not (tmp_path / "never").exists(), args


def test_loop_resumes_a_killed_iteration_with_its_evaluations_and_best(tiny_model, tmp_path):
    """Killed once the best weights of an evaluation are saved, the rerun continues from the checkpoint saved
    with them; also when the kill came between that checkpoint and the weights (best/ then holds an older
    evaluation's). Both end as the uninterrupted run: evaluation rows, kept step, weights."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    select = ["--set", "data.val_num=4", "--set", "train.epochs=4", "--set", "train.batch_size=2",
              "--set", "train.eval_every=2", "--set", "loop.select=best", "--set", "loop.select_metric=real_loglik",
              "--set", "train.save_steps=0"]

    from selfplay.stages.status import run_status

    def command(name: str) -> list[str]:
        return loop_args(tiny_model, tmp_path / name, *select)

    def finish(name: str, resumes: bool = False) -> Path:
        res = cli_process.run_cli(command(name), env)
        assert res.returncode == 0, res.stderr[-3000:]
        # a rerun that redid the iteration from scratch would end the same: it must continue the checkpoint
        assert ("resuming training at step" in res.stdout + res.stderr) == resumes, res.stderr[-3000:]
        return tmp_path / name

    clean = finish("clean")
    kept = read_json(clean / "iter_0" / "train" / "summary.json")["kept"]
    rows = read_jsonl(clean / "iter_0" / "train" / "metrics.jsonl")
    evaluated = steps_of(rows, "eval/real_loglik")
    planned = kept["planned_steps"]
    assert evaluated == sorted(set(range(2, planned + 1, 2)) | {planned}) and kept["evaluations"] == len(evaluated)

    # One kill, once the best weights of an evaluation are saved; a copy of what it left, with best/ taken away,
    # is a run killed between the checkpoint and the weights.
    train = tmp_path / "killed" / "iter_0" / "train"
    proc = cli_process.CLIProcess(command("killed"), env, capture=False)
    deadline = time.time() + 300
    while time.time() < deadline and not (train / "best" / "best.json").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (train / "best" / "best.json").exists() and not (train / "summary.json").exists(), "killed too late"
    state = read_json(train / "checkpoint" / "trainer_state.json")
    assert state["best"]["step"] == state["step"] and state["evaluations"]  # the checkpoint of the best
    detail = {u["unit"]: u["detail"] for u in run_status(tmp_path / "killed")["units"]}["iter_0/train"]
    assert detail.endswith(f"best evaluation so far at step {state['best']['step']} "
                           f"({state['best']['value']:.4g})"), detail
    shutil.copytree(tmp_path / "killed", tmp_path / "killed_between", symlinks=True)
    between = tmp_path / "killed_between" / "iter_0" / "train"
    (between / "best").rename(between / "best.lost")  # as if killed before best/ was written

    for name, how in (("killed", "after the saves"), ("killed_between", "between the saves")):
        resumed = finish(name, resumes=True)
        train = resumed / "iter_0" / "train"
        assert read_json(train / "summary.json")["kept"] == kept, how
        assert [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_jsonl(train / "metrics.jsonl")] == \
            [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows], how
        assert same_weights(train / "model", clean / "iter_0" / "train" / "model"), how
        timing = {"seconds", "iteration_seconds", "model"}

        def table(run_dir: Path) -> list[dict]:
            lines = read_jsonl(run_dir / "eval" / "iterations.jsonl")
            return [{k: v for k, v in r.items() if k not in timing} for r in lines]

        assert table(resumed) == table(clean), how
