"""loop.stop_patience: the loop stops between iterations when the validation metric stops improving."""

from __future__ import annotations

import json

import pytest

from selfplay.errors import ConfigError
from selfplay.io import read_json, read_jsonl
from selfplay.loop_stop import StopRule, final_text, resolve_stop_metric
from selfplay.methods import get_method
from test_select import loop_args


def rule(patience: int, *values: tuple[float, float], metric: str = "auto") -> StopRule:
    """A StopRule fed (accuracy, real_loglik) per evaluation, base first."""
    stop = StopRule(metric, patience)
    for i, (acc, loglik) in enumerate(values):
        stop.add("base" if i == 0 else i - 1, {"accuracy": acc, "real_loglik": loglik, "n": 8})
    return stop


def test_stop_rule_counts_evaluations_since_the_best_and_breaks_ties_by_loglik():
    # Up, then down: one evaluation since the best.
    stop = rule(1, (0.2, -1.0), (0.4, -0.9), (0.3, -0.8))
    assert stop.metric == "accuracy" and stop.best() == (0, 0.4) and stop.should_stop()
    assert not rule(2, (0.2, -1.0), (0.4, -0.9), (0.3, -0.8)).should_stop()
    assert rule(2, (0.2, -1.0), (0.4, -0.9), (0.3, -0.8), (0.4, -0.95)).should_stop()  # a tie is no improvement
    # An accuracy tie goes to the higher log-likelihood (as loop.select breaks it); a full tie to the earlier.
    assert rule(1, (0.2, -1.0), (0.2, -0.5)).best() == (0, 0.2)
    assert rule(1, (0.2, -1.0), (0.2, -1.0)).best() == ("base", 0.2)
    # The base model can be the result: every iteration worse.
    stop = rule(1, (0.5, -1.0), (0.1, -2.0))
    final = stop.final({"base": "BASE", 0: "M0"}, stopped_after=0, planned=3)
    assert final["iteration"] == "base" and final["model"] == "BASE" and final["validation"] == {"base": 0.5, "0": 0.1}
    assert final_text(final).startswith("Result: the base model (validation accuracy 0.5")
    assert "stopped after iteration 0 of 3" in final_text(final)


def test_stop_metric_is_resolved_against_what_the_validation_evaluation_has():
    assert resolve_stop_metric("auto", {"real_loglik": -1.0, "n": 4}) == "real_loglik"
    assert resolve_stop_metric("auto", {"accuracy": 0.5, "real_loglik": -1.0}) == "accuracy"
    # auto prefers what the method trains for (Method.target_metric) where the evaluation has it
    rise_metrics = {"accuracy": 0.5, "mt_acc_tlast": 0.2, "real_loglik": -1.0}
    assert resolve_stop_metric("auto", rise_metrics, get_method("rise").target_metric) == "mt_acc_tlast"
    assert resolve_stop_metric("auto", {"accuracy": 0.5}, get_method("spin-agent").target_metric) == "accuracy"
    assert resolve_stop_metric("auto", rise_metrics, get_method("spin").target_metric) == "accuracy"
    assert StopRule("auto", 1, "mt_acc_tlast").add("base", rise_metrics) == 0.2
    assert resolve_stop_metric("mt_acc_tlast", {"mt_acc_tlast": 0.1, "real_loglik": -1.0}) == "mt_acc_tlast"
    with pytest.raises(ConfigError, match=r"'mt_acc_tlast' is not a metric.*it has: accuracy, n, real_loglik"):
        resolve_stop_metric("mt_acc_tlast", {"accuracy": 0.5, "real_loglik": -1.0, "n": 4, "task": "arith"})


def test_loop_stops_after_a_worse_iteration_and_names_the_best_model(cli, tiny_model, tmp_path):
    """Iteration 1 trains at a learning rate that wrecks the model: the loop stops after it, iteration 2 never
    runs, and the result is iteration 0's model, chosen on the validation split (never the held-out one)."""
    run = tmp_path / "run"
    args = loop_args(tiny_model, run, "--set", "data.val_num=4", "--set", "loop.stop_patience=1",
                     "--set", 'loop.schedule={"train.lr": [3e-3, 1.0]}', iters=3)
    res = cli(args)
    assert res.exit_code == 0, res.output
    rows = read_jsonl(run / "eval" / "iterations.jsonl")
    assert [r["iteration"] for r in rows] == ["base", 0, 1] and not (run / "iter_2").exists()
    # Accuracy ties at 0 on the tiny model: the log-likelihood decides, up in iteration 0, collapsed in 1.
    assert rows[1]["real_loglik"] > rows[0]["real_loglik"] and rows[2]["real_loglik"] < rows[1]["real_loglik"]
    assert all("validation" in r for r in rows)
    final = read_json(run / "eval" / "final.json")
    assert (final["iteration"], final["stopped_after"], final["metric"]) == (0, 1, "accuracy")
    assert final["model"] == str(run / "iter_0" / "train" / "model") and set(final["validation"]) == {"base", "0", "1"}
    said = " ".join(res.output.split())  # the console wraps at its width
    assert "Result: iteration 0" in said and "stopped after iteration 1 of 3" in said
    assert "Result: iteration 0" in (run / "eval" / "report.md").read_text()
    assert "Result: iteration 0" in (run / "eval" / "report.html").read_text()
    # The validation evaluations answered the validation records, none of the held-out ones.
    val_ids = {r["id"] for r in read_jsonl(run / "data" / "val.jsonl")}
    test_ids = {r["id"] for r in read_jsonl(run / "data" / "test.jsonl")}
    for d in ("val/base", "iter_0/val", "iter_1/val"):
        assert {r["id"] for r in read_jsonl(run / d / "samples.jsonl")} == val_ids, d
    assert not val_ids & test_ids
    units = json.loads((run / "state.json").read_text())["units"]
    assert {"val/base", "iter_0/val", "iter_1/val"} <= units.keys() and "iter_2/generate" not in units

    # A rerun reaches the same decision from what was recorded, evaluating nothing again.
    mtime = (run / "iter_1" / "val" / "metrics.json").stat().st_mtime_ns
    res = cli(args)
    assert res.exit_code == 0 and "stopped after iteration 1 of 3" in " ".join(res.output.split())
    assert (run / "iter_1" / "val" / "metrics.json").stat().st_mtime_ns == mtime and not (run / "iter_2").exists()
    assert read_json(run / "eval" / "final.json") == final

    # Rerun without the stop (only iteration 0 asked for): the earlier result no longer describes the run.
    res = cli(loop_args(tiny_model, run, "--set", "data.val_num=4", "--set", 'loop.schedule={"train.lr": [3e-3, 1.0]}',
                        iters=1))
    assert res.exit_code == 0, res.output
    assert not (run / "eval" / "final.json").exists() and "Result:" not in (run / "eval" / "report.md").read_text()


def test_stop_settings_are_checked_before_any_output(cli, tiny_model, tmp_path):
    res = cli(loop_args(tiny_model, tmp_path / "a", "--set", "loop.stop_patience=1"))
    assert res.exit_code != 0 and "set data.val_num" in res.output and not (tmp_path / "a").exists()
    res = cli(loop_args(tiny_model, tmp_path / "b", "--set", "loop.stop_metric=accuracy"))
    assert res.exit_code != 0 and "loop.stop_patience is 0" in res.output
    res = cli(loop_args(tiny_model, tmp_path / "c", "--set", "loop.stop_patience=-1"))
    assert res.exit_code != 0 and "loop.stop_patience" in res.output
