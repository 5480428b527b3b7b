"""What the train stage writes besides the loop: batch order, checkpoints, the final model.

Kept apart from :mod:`selfplay.stages.train` so the training loop reads in one sitting.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfplay.config import Config
from selfplay.io import atomic_dir, fsync_tree, swap_in, write_json, writing


@dataclass
class TrainResult:
    model_path: Path  # what the next iteration should load (merged dir for LoRA, else model/)
    steps: int
    metrics: dict[str, float]
    kept: dict[str, Any] | None = None  # loop.select: best: which evaluation's weights were kept


def summary_result(out_dir: Path) -> TrainResult:
    """The result of a finished training, from its ``summary.json``."""
    from selfplay.io import read_json

    s = read_json(Path(out_dir) / "summary.json")
    return TrainResult(Path(s["model_path"]), s["steps"], s["metrics"], s.get("kept"))


def batch_order(lengths: list[int], batch_size: int, epochs: float, seed: int) -> list[list[int]]:
    """Deterministic batch order over all epochs: shuffled, then length-grouped in windows of 50 batches.

    Grouping similar lengths cuts padding (the cost of a batch is its longest row); the windowed shuffle
    keeps batches random. Being a pure function of the seed makes resume a matter of skipping batches.
    The unit is the micro-batch: with accumulation, another ``batch_size`` regroups which examples share an
    optimizer step (1 x 8 is not 2 x 4 in another rounding), so changing it starts a different run.
    """
    g = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(lengths) / batch_size)
    total = max(1, round(per_epoch * epochs))
    order: list[list[int]] = []
    while len(order) < total:
        idx = torch.randperm(len(lengths), generator=g).tolist()
        window = batch_size * 50
        epoch_batches = []
        for w in range(0, len(idx), window):
            chunk = sorted(idx[w:w + window], key=lambda i: lengths[i], reverse=True)
            epoch_batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
        perm = torch.randperm(len(epoch_batches), generator=g).tolist()
        order += [epoch_batches[p] for p in perm]
    return order[:total]


def state_bytes(*trees: Any) -> int:
    """Bytes of the tensors in (nested) state dicts: what saving them needs on disk, about."""
    total = 0
    for tree in trees:
        if isinstance(tree, torch.Tensor):
            total += tree.numel() * tree.element_size()
        elif isinstance(tree, dict):
            total += state_bytes(*tree.values())
        elif isinstance(tree, (list, tuple)):
            total += state_bytes(*tree)
    return total


def save_checkpoint(accelerator: Any, ckpt: Path, state: dict[str, int], needed: int | None = None) -> None:
    """accelerate state + our counters, fsynced and swapped in atomically so neither a kill nor a full disk
    leaves half a checkpoint (a full disk: :class:`~selfplay.errors.DiskFullError` naming it, ``needed`` bytes,
    the partial copy removed and the previous checkpoint kept)."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        with writing(ckpt, needed):
            accelerator.save_state(str(tmp))
            # save_state ends without a barrier and every rank writes its RNG state into the directory: a rank
            # still writing must not find it renamed (or its file missing from a copy marked complete).
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                write_json(tmp / "trainer_state.json", state)  # last: marks the copy complete
                fsync_tree(tmp)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        swap_in(tmp, ckpt)
    accelerator.wait_for_everyone()


def recover_checkpoint(ckpt: Path, marker: str = "trainer_state.json") -> None:
    """Finish a swap that :func:`save_checkpoint` (or :func:`~selfplay.io.atomic_dir`) was killed in the middle
    of (main process only).

    Between its two renames ``ckpt`` is missing: ``ckpt.tmp`` then holds the newer, complete checkpoint
    (its ``marker`` file is written last, atomically), ``ckpt.old`` the previous one. Whatever ``ckpt.old``
    is left afterwards (a kill after the swap, or while it was being deleted) is removed: the next swap
    renames ``ckpt`` onto that name.
    """
    old = ckpt.with_name(ckpt.name + ".old")
    if not (ckpt / marker).exists():
        for candidate in (ckpt.with_name(ckpt.name + ".tmp"), old):
            if (candidate / marker).exists():
                shutil.rmtree(ckpt, ignore_errors=True)
                candidate.rename(ckpt)
                break
    if (ckpt / marker).exists():
        shutil.rmtree(old, ignore_errors=True)


def finish(accelerator: Any, cfg: Config, scorer: Any, tok: Any, out_dir: Path, state: dict[str, int],
           last: dict[str, float], n_cut: int, n_examples: int, total_steps: int, *, parent: str = "",
           parent_dir: str | Path = "", data: str | Path | None = None,
           evaluations: list[dict[str, Any]] | None = None, kept: dict[str, Any] | None = None) -> TrainResult:
    """Save the model (and the merged LoRA model on request) with its ``selfplay_model.json``
    (:mod:`selfplay.model_meta`), then ``summary.json`` last: the stage is done.

    ``scorer``: the prepared ``SequenceLogps`` wrapping the policy, or ``HeadScorer`` wrapping a judge (their
    state-dict keys carry a ``model.`` prefix, removed here so the checkpoint is the wrapped model's own).
    ``parent``: the model training started from (as named, and ``parent_dir`` where it resolved to); ``data``:
    the training records. ``evaluations``: the evaluations inside the run (train.eval_every), into the summary;
    ``kept``: which of them the saved weights are (loop.select: best), into the summary and the model's metadata.
    """
    from selfplay.methods import loss_of
    from selfplay.model_meta import model_meta, write_model_meta

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(scorer).model
    model_dir = out_dir / "model"
    merged = cfg.model.lora.enabled and cfg.train.save_merged
    # Every process takes part: ZeRO-3 and FSDP gather the full weights collectively.
    state_dict = {k.removeprefix("model."): v for k, v in accelerator.get_state_dict(scorer).items()}
    if accelerator.is_main_process:
        # Into a temporary directory, swapped in when complete: a full disk leaves no half-written model.
        meta = model_meta(cfg, loss=loss_of(cfg), parent=parent, parent_dir=parent_dir, data=data,
                          examples=n_examples, steps=state["step"], **({"kept": kept} if kept else {}))
        with atomic_dir(model_dir, needed=state_bytes(state_dict)) as tmp:
            unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            tok.save_pretrained(tmp)
            write_model_meta(tmp, meta, adapter=cfg.model.lora.enabled)
        if merged:
            full = unwrapped.merge_and_unload()
            with atomic_dir(out_dir / "merged", needed=state_bytes(full.state_dict())) as tmp:
                full.save_pretrained(tmp, safe_serialization=True)
                tok.save_pretrained(tmp)
                write_model_meta(tmp, meta)
        else:
            shutil.rmtree(out_dir / "merged", ignore_errors=True)  # an earlier run's, with other settings
    next_model = out_dir / "merged" if merged else model_dir
    summary = {"model_path": str(next_model), "steps": state["step"], "metrics": last,
               "examples": n_examples, "truncated": n_cut, "planned_steps": total_steps,
               "processes": accelerator.num_processes}
    if evaluations is not None:
        summary["evaluations"] = evaluations
    if kept is not None:
        summary["kept"] = kept
    if accelerator.is_main_process:
        write_json(out_dir / "summary.json", summary)
        shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
    accelerator.wait_for_everyone()
    return TrainResult(next_model, state["step"], last, kept)
