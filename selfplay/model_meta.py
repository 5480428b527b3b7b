"""What a trained model is: ``selfplay_model.json`` beside its weights (the shared source for model cards).

Written by the train stage next to every model it saves (``model/``, and ``merged/`` for LoRA)::

    {"format": 1,
     "base_model": "alignment-handbook/zephyr-7b-sft-full",  # the model self-play started from
     "base_revision": "ac6e600e...",   # model.revision as configured (None: not pinned)
     "base_commit": "ac6e600e...",     # the hub snapshot actually loaded (None: a local directory or alias)
     "method": "spin", "loss": "sigmoid",
     "iteration": 0,                   # rounds of training before this one (0: trained from the base model)
     "parent": "...",                  # the model this round trained from (the base, or the previous round)
     "adapter": false,                 # true for a LoRA adapter directory (model/ of a LoRA run)
     "data": "...", "examples": 120, "steps": 30,
     "train": {"lr": ..., "beta": ..., "epochs": ..., "optimizer": ..., "scheduler": ..., "batch_size": ...,
               "grad_accum": ..., "max_length": ...},
     "run_dir": "runs/spin_zephyr", "selfplay_version": "0.1.0", "created": "2026-12-05T19:15:26+00:00",
     "kept": {"select": "best", "metric": "accuracy", "step": 12, "epoch": 2.0, "epochs": 6.0, ...}}

``kept`` (only with ``loop.select: best``): the evaluation inside training whose weights these are
(:mod:`selfplay.stages.train_eval`).

A model trained from a model that has this file inherits its base (model, revision, commit) and counts its
iteration one further, so the chain base -> iteration 0 -> iteration 1 ... keeps naming the original base.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from selfplay.config import Config
from selfplay.io import read_json, write_json

META_FILE = "selfplay_model.json"
FORMAT = 1
# The training settings a model card reports (the full resolved config is the run's config.yaml).
TRAIN_FIELDS = ("lr", "beta", "epochs", "optimizer", "scheduler", "batch_size", "grad_accum", "max_length")


def read_model_meta(model_dir: str | Path) -> dict[str, Any] | None:
    """The metadata of a selfplay-trained model directory, or None (a hub model, an alias, an older run)."""
    path = Path(model_dir) / META_FILE
    return read_json(path) if path.is_file() else None


def hub_commit(local_dir: str | Path) -> str | None:
    """The commit of a hub snapshot directory (the HF cache keeps them as ``.../snapshots/<commit>``)."""
    path = Path(local_dir)
    return path.name if path.parent.name == "snapshots" else None


def base_of(cfg: Config, parent: str, parent_dir: str | Path) -> dict[str, Any]:
    """``base_model``, ``base_revision``, ``base_commit`` and ``iteration`` of a model trained from ``parent``
    (as the user named it; ``parent_dir`` the local directory it resolved to)."""
    inherited = read_model_meta(parent_dir)
    if inherited is not None:
        return {"base_model": inherited.get("base_model"), "base_revision": inherited.get("base_revision"),
                "base_commit": inherited.get("base_commit"), "iteration": int(inherited.get("iteration", -1)) + 1}
    # model.revision pins the configured model: it applies when that is the model training starts from.
    revision = cfg.model.revision if parent == cfg.model.name_or_path else None
    return {"base_model": parent, "base_revision": revision, "base_commit": hub_commit(parent_dir), "iteration": 0}


def model_meta(cfg: Config, *, loss: str, parent: str, parent_dir: str | Path, data: str | Path | None = None,
               **facts: Any) -> dict[str, Any]:
    """The metadata record of a model trained with ``cfg`` and ``loss`` (the method's when ``train.loss`` is
    auto: the caller resolves it, this module knows no method) from ``parent`` (``facts``: steps, examples, ...)."""
    return {"format": FORMAT, **base_of(cfg, parent, parent_dir), "method": cfg.method, "loss": loss,
            "parent": str(parent), "adapter": False, "data": str(data) if data is not None else None, **facts,
            "train": {k: getattr(cfg.train, k) for k in TRAIN_FIELDS}, "run_dir": cfg.run_dir,
            "selfplay_version": _version(), "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}


def write_model_meta(model_dir: str | Path, meta: dict[str, Any], **overrides: Any) -> Path:
    """Write ``meta`` (with ``overrides``, e.g. ``adapter=True``) as ``model_dir/selfplay_model.json``."""
    path = Path(model_dir) / META_FILE
    write_json(path, {**meta, **overrides})
    return path


def epoch_text(x: float) -> str:
    """2, 1.5, 0.33: an epoch count without trailing zeros."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


def kept_text(kept: dict[str, Any]) -> str:
    """Which evaluation inside training a model's weights are (a ``kept`` record), for tables: ``step 12 (ep 2/6)``."""
    return f"step {kept['step']} (ep {epoch_text(kept['epoch'])}/{epoch_text(kept['epochs'])})"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("selfplay")
    except PackageNotFoundError:
        return "unknown"
