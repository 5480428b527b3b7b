"""One metric logger for everything a run logs over time (in the spirit of torchtune's
``MetricLoggerInterface``): training steps and the loop's per-iteration evaluation rows.

:func:`open_metric_logger` gives a :class:`MetricLogger` that always writes JSONL (one ``{"step", ...}``
line per call) and also logs to the experiment trackers named by the config's ``report_to`` — any tracker
accelerate supports (tensorboard, wandb, trackio, mlflow, comet_ml, aim, ...; ``train.report_to`` is an
alias kept from before the loop logged too). Trackers are built the way ``Accelerator.init_trackers`` builds
them, without an ``Accelerator``, so the loop's own process logs its rows as the training processes log
their steps; trackers that keep files write under the given directory (TensorBoard:
``<logging_dir>/<project>/``). Trackers get the numbers of a row only (strings, lists and nested
results stay in the JSONL and the run's other files).
"""

from __future__ import annotations

import dataclasses
import numbers
from pathlib import Path
from typing import Any, Protocol

from selfplay.errors import UserError
from selfplay.io import JsonlAppender, read_jsonl, write_jsonl


class MetricLogger(Protocol):
    """Where metrics go: ``log`` one row per step, ``log_config`` once, ``close`` at the end."""

    def log(self, metrics: dict[str, Any], step: int) -> None: ...

    def log_config(self, config: Any) -> None: ...

    def close(self) -> None: ...


def flat_config(config: Any) -> dict[str, Any]:
    """A config (dataclass or nested dict) flattened to ``a.b.c`` keys with scalar values (what trackers
    accept as hyperparameters)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix.rstrip(".")] = node if isinstance(node, (int, float, str, bool)) or node is None else str(node)

    walk(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config, "")
    return flat


class JsonlLogger:
    """Each row as one JSON line ``{"step": step, **metrics}``, flushed as written.

    ``keep_through``: when the run resumes at that step, lines of later steps (logged before the
    interruption, about to be redone) are dropped first, so no step is logged twice."""

    def __init__(self, path: Path, *, keep_through: int | None = None) -> None:
        path = Path(path)
        if keep_through is not None and path.exists():
            kept = [row for row in read_jsonl(path, tolerate_torn_tail=True) if row.get("step", 0) <= keep_through]
            write_jsonl(path, kept)
        self.path = path
        self._out = JsonlAppender(path)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._out.write({"step": step, **{k: v for k, v in metrics.items() if k != "step"}})

    def log_config(self, config: Any) -> None:
        """Nothing: the run directory keeps its resolved config.yaml."""

    def close(self) -> None:
        self._out.close()


class TrackerLogger:
    """The accelerate trackers named by ``names``, built and started as ``Accelerator.init_trackers`` does."""

    def __init__(self, names: list[str], project: str, logging_dir: Path) -> None:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS, filter_trackers

        try:
            kinds = filter_trackers(list(names), str(logging_dir))
        except ValueError as e:
            raise UserError(f"report_to: {e}") from None
        self.trackers = []
        for kind in kinds:
            tracker_cls = LOGGER_TYPE_TO_CLASS[str(kind)]
            tracker = (tracker_cls(project, str(logging_dir)) if tracker_cls.requires_logging_directory
                       else tracker_cls(project))
            tracker.start()
            self.trackers.append(tracker)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        numeric = {k: v for k, v in metrics.items()
                   if k != "step" and isinstance(v, numbers.Real) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(numeric, step=step)

    def log_config(self, config: Any) -> None:
        for tracker in self.trackers:
            tracker.store_init_configuration(flat_config(config))

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


class MultiLogger:
    """Several loggers as one."""

    def __init__(self, loggers: list[MetricLogger]) -> None:
        self.loggers = loggers

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for logger in self.loggers:
            logger.log(metrics, step)

    def log_config(self, config: Any) -> None:
        for logger in self.loggers:
            logger.log_config(config)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def report_to(cfg: Any) -> list[str]:
    """The trackers a config names: ``report_to``, else its alias ``train.report_to``."""
    return list(cfg.report_to or cfg.train.report_to)


def open_metric_logger(jsonl: Path, trackers: list[str], *, project: str, logging_dir: Path,
                       keep_through: int | None = None) -> MetricLogger:
    """JSONL at ``jsonl`` (see :class:`JsonlLogger`), plus ``trackers`` (none: JSONL alone, and accelerate is
    not even imported)."""
    loggers: list[MetricLogger] = [JsonlLogger(jsonl, keep_through=keep_through)]
    if trackers:
        loggers.append(TrackerLogger(trackers, project, logging_dir))
    return MultiLogger(loggers)
