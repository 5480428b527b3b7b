"""Progress shows in logs: when stderr is not a terminal, a heartbeat prints each running task's line."""

import time

import selfplay.progress as progress_mod
from selfplay.core.samplers import generation_progress
from selfplay.progress import progress_bar


def test_heartbeat_prints_running_tasks_when_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(progress_mod, "HEARTBEAT_S", 0.05)
    with progress_bar("train", total=10) as bar:
        bar.advance(3)
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert err.count("train") >= 3  # several heartbeat lines while running, then rich's final render
    assert "3/10" in err


def test_generation_progress_heartbeat_has_rates(monkeypatch, capsys):
    monkeypatch.setattr(progress_mod, "HEARTBEAT_S", 0.05)
    with generation_progress(4) as bar:
        bar.add(prompts=1, tokens=50)
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert "1/4" in err and "tok/s" in err


def test_no_heartbeat_when_disabled(monkeypatch, capsys):
    monkeypatch.setattr(progress_mod, "HEARTBEAT_S", 0.05)
    with progress_bar("quiet", total=2, disable=True) as bar:
        bar.advance()
        time.sleep(0.2)
    assert "quiet" not in capsys.readouterr().err
