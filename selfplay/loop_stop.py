"""Stopping a loop between iterations when the validation metric stops improving (``loop.stop_patience``).

Self-play iterations do not improve a model without end: in our CPU experiments (docs/RESULTS-efficacy.md) SPIN,
iterative DPO and SPIN for agents each lose ground in a later iteration after a good one. With
``loop.stop_patience: p`` the loop evaluates the base model and every iteration's model on the validation split
(``data.val_num`` training records set aside, never a held-out test prompt), and stops after p iterations in a
row whose ``loop.stop_metric`` is not above the best so far (an accuracy tie goes to the higher log-likelihood of
the real answers, as ``loop.select`` breaks it). The run's result is then the best model seen, the base model
included: ``eval/final.json`` names it, and the table's ``validation`` column shows every value.

The decision is a pure function of the recorded validation metrics, so a resumed run reaches the same one without
evaluating anything again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfplay.errors import ConfigError
from selfplay.io import read_json

FINAL_FILE = "final.json"  # under run_dir/eval/


def final_path(run_dir: str | Path) -> Path:
    """``run_dir/eval/final.json``: the run's result under ``loop.stop_patience``."""
    return Path(run_dir) / "eval" / FINAL_FILE


def read_final(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's recorded result (:meth:`StopRule.final`), or None for a run without ``loop.stop_patience``."""
    path = final_path(run_dir)
    return read_json(path) if path.is_file() else None


def resolve_stop_metric(setting: str, metrics: dict[str, Any], target: str | None = None) -> str:
    """The metric key ``loop.stop_metric`` names in a validation evaluation's ``metrics``: auto is the method's
    ``target`` metric where the evaluation has it (RISE: mt_acc_tlast; agents: agent_em), else the task
    accuracy where the records have a task, else the real answers' log-likelihood."""
    if setting == "auto":
        for key in (target, "accuracy"):
            if key is not None and isinstance(metrics.get(key), (int, float)):
                return key
        return "real_loglik"
    if not isinstance(metrics.get(setting), (int, float)):
        numeric = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise ConfigError(f"loop.stop_metric '{setting}' is not a metric of this run's validation evaluation; "
                          f"it has: {', '.join(numeric)}")
    return setting


@dataclass
class StopRule:
    """The validation values seen so far, in order (base first), and the stop decision on them."""

    setting: str  # loop.stop_metric as configured
    patience: int  # loop.stop_patience (> 0)
    target: str | None = None  # the method's target metric, which auto prefers (Method.target_metric)
    metric: str | None = None  # resolved on the first value
    # (iteration, comparison key): the metric, then (as loop.select breaks accuracy ties) the real answers'
    # log-likelihood; higher is better.
    keys: list[tuple[str | int, list[float]]] = field(default_factory=list)

    def add(self, iteration: str | int, metrics: dict[str, Any]) -> float:
        """Record one validation evaluation; returns its value of the stop metric."""
        if self.metric is None:
            self.metric = resolve_stop_metric(self.setting, metrics, self.target)
        key = [metrics.get(m) for m in dict.fromkeys((self.metric, "real_loglik"))]
        if not all(isinstance(v, (int, float)) for v in key):
            raise ConfigError(f"loop.stop_metric '{self.metric}' is missing from iteration {iteration}'s "
                              "validation evaluation")
        self.keys.append((iteration, [float(v) for v in key]))
        return float(key[0])

    @property
    def values(self) -> list[tuple[str | int, float]]:
        """(iteration, value of the stop metric), in order."""
        return [(it, key[0]) for it, key in self.keys]

    def best_index(self) -> int:
        """Index of the best evaluation; a full tie goes to the earlier (fewer iterations of training)."""
        best = 0
        for i, (_, key) in enumerate(self.keys):
            if key > self.keys[best][1]:
                best = i
        return best

    def best(self) -> tuple[str | int, float]:
        return self.values[self.best_index()]

    def should_stop(self) -> bool:
        """True after ``patience`` evaluations without a better one."""
        return len(self.keys) - 1 - self.best_index() >= self.patience

    def final(self, models: dict[str | int, str], stopped_after: int | None, planned: int) -> dict[str, Any]:
        """What ``eval/final.json`` records: the best iteration, its model, every value, where the loop stopped."""
        iteration, value = self.best()
        return {"iteration": iteration, "model": models[iteration], "metric": self.metric, "value": value,
                "split": "validation", "validation": {str(it): v for it, v in self.values},
                "stopped_after": stopped_after, "iterations_planned": planned, "patience": self.patience}


def final_text(final: dict[str, Any]) -> str:
    """One sentence for the report and the terminal."""
    which = "the base model" if final["iteration"] == "base" else f"iteration {final['iteration']}"
    text = (f"Result: {which} (validation {final['metric']} {final['value']:.4g}, the best of "
            f"{len(final['validation'])} evaluations; model {final['model']})")
    if final["stopped_after"] is not None:
        text += (f"; the loop stopped after iteration {final['stopped_after']} of {final['iterations_planned']}: "
                 f"{final['patience']} iteration(s) without a better validation {final['metric']}")
    return text + "."
