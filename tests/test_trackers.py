"""The metric logger: JSONL always, trackers by name, resume without logging a step twice, config checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfplay.errors import ConfigError, UserError
from selfplay.io import read_jsonl
from selfplay.trackers import JsonlLogger, flat_config, open_metric_logger, report_to


def test_jsonl_always_and_resume_drops_steps_to_be_redone(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    logger = open_metric_logger(path, [], project="p", logging_dir=tmp_path / "trackers")
    for step in (1, 2, 3):
        logger.log({"loss": 1.0 / step, "note": "text kept in JSONL"}, step)
    logger.close()
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3] and read_jsonl(path)[0]["note"] == "text kept in JSONL"
    assert not (tmp_path / "trackers").exists()  # no tracker named: nothing else written
    resumed = JsonlLogger(path, keep_through=2)  # resuming at step 2: step 3 will be logged again
    resumed.log({"loss": 0.3}, 3)
    resumed.close()
    assert [(r["step"], r["loss"]) for r in read_jsonl(path)] == [(1, 1.0), (2, 0.5), (3, 0.3)]


def test_tensorboard_gets_the_numbers(tmp_path: Path):
    pytest.importorskip("tensorboard", reason="needs the dev extra (tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = open_metric_logger(tmp_path / "m.jsonl", ["tensorboard"], project="proj", logging_dir=tmp_path / "tb")
    logger.log_config({"train": {"lr": 1e-3, "loss": "sigmoid"}, "report_to": ["tensorboard"]})
    logger.log({"accuracy": 0.5, "n": 4, "model": "a/path", "multiturn": {"acc": [1]}, "ok": True}, 0)
    logger.log({"accuracy": 0.75, "n": 4}, 1)
    logger.close()
    acc = EventAccumulator(str(tmp_path / "tb" / "proj"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["accuracy", "n"]  # numbers only: no strings, dicts or booleans
    assert [(e.step, e.value) for e in acc.Scalars("accuracy")] == [(0, 0.5), (1, 0.75)]


def test_unknown_tracker_is_a_user_error(tmp_path: Path):
    pytest.importorskip("accelerate")
    with pytest.raises(UserError, match="report_to"):
        open_metric_logger(tmp_path / "m.jsonl", ["tensorbored"], project="p", logging_dir=tmp_path)


def test_report_to_and_its_alias():
    from selfplay.config import load_config

    assert report_to(load_config(None, ["report_to=[tensorboard]"])) == ["tensorboard"]
    assert report_to(load_config(None, ["train.report_to=[tensorboard]"])) == ["tensorboard"]  # the old key
    assert report_to(load_config(None, ["report_to=[wandb]", "train.report_to=[wandb]"])) == ["wandb"]
    with pytest.raises(ConfigError, match="alias"):
        load_config(None, ["report_to=[wandb]", "train.report_to=[tensorboard]"])
    assert flat_config({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "[1, 2]", "d": None}
