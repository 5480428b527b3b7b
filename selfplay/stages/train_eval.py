"""Evaluation inside an iteration and checkpoint selection (``train.eval_every``, ``loop.select``).

Every ``train.eval_every`` optimizer steps (or at the end of every epoch), and at the last step, the model
being trained answers the validation prompts (``data.val_num`` of the loop's training records, or
``selfplay train --val-data``) greedily. The answers are checked by the task's verifier and the real answers
scored by their log-likelihood with the functions the loop's per-iteration evaluation uses
(:func:`~selfplay.stages.evaluate.task_verifier`, :func:`~selfplay.stages.evaluate.response_logps`), and
logged through the metric logger at that step: ``eval/accuracy`` (when the records have a task),
``eval/real_loglik`` (mean per-token log-probability of the real answers), ``eval/n``, ``epoch``.

``loop.select: best`` keeps the weights of the best evaluation by ``loop.select_metric`` (higher is better;
an accuracy tie goes to the higher log-likelihood — a few dozen prompts tie often —, a full tie to the earlier
evaluation) and the train stage's ``model/`` is saved from them; ``loop.patience`` stops the
training after that many evaluations without improvement. ``select: last`` (the default) only logs.

Why it is built this way:

- **Training is unchanged by it.** The evaluation runs without gradients, in eval mode (dropout off, restored
  after), under the training loop's autocast, and inside a forked RNG state (torch, CUDA, ``random``, numpy):
  greedy decoding draws nothing, but nothing it calls may move the training stream either. A test trains
  with and without evaluation and compares the weights bit for bit.
- **Every process evaluates its share of the prompts** (prompt i on process i mod P) with its replica of the
  model, and the values are gathered: every process then computes the same numbers in the same order, so
  every process takes the same decision (stop, save) and none waits for another in a collective while it
  evaluates alone (a long evaluation on one GPU would run into NCCL's timeout). ZeRO-3 and FSDP partition
  the weights, so no process holds a whole model to decode with: they are refused with evaluation on.
- **The best weights are saved atomically** (``best/``: the trained parameters, a LoRA run's adapters only,
  plus ``best.json``) right after a trainer checkpoint at the same step, which carries the evaluation history
  (``trainer_state.json``). The checkpoint a rerun resumes from is therefore never older than the best
  weights on disk, and a rerun after a kill replays exactly what the first run would have done. At the last
  step the weights in memory are the candidate, so nothing is saved there.
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfplay.errors import ConfigError, UserError
from selfplay.io import atomic_dir, read_json, write_json
from selfplay.model_meta import epoch_text
from selfplay.progress import console
from selfplay.stages.train_io import recover_checkpoint, save_checkpoint, state_bytes

BEST_DIR = "best"
BEST_FILE = "best.json"  # written last into best/: marks a complete copy
WEIGHTS_FILE = "weights.safetensors"


def check_validation(cfg: Any, val_path: Path | None) -> None:
    """Validation records exactly when train.eval_every asks for them, readable, before any output exists."""
    from selfplay.data.records import load_sft

    if cfg.train.eval_every and val_path is None:
        raise ConfigError("train.eval_every evaluates on validation prompts: give them (`selfplay train --val-data "
                          "FILE`, SFT records), or in a loop set data.val_num")
    if val_path is not None:
        if not cfg.train.eval_every:
            raise ConfigError("validation records are read only by the evaluation inside training: set "
                              "train.eval_every (N optimizer steps, or epoch)")
        selected_metric(cfg, load_sft(val_path, "val"), val_path)


def selected_metric(cfg: Any, records: list[dict[str, Any]], val_path: Path) -> tuple[str, Any]:
    """(the metric loop.select picks by, the records' (check, gold) verifier or None)."""
    from selfplay.stages.evaluate import task_verifier

    verifier = task_verifier(records, cfg.eval.task)
    metric = cfg.loop.select_metric
    if metric == "auto":
        metric = "accuracy" if verifier is not None else "real_loglik"
    if metric == "accuracy" and verifier is None:
        raise ConfigError(f"loop.select_metric: accuracy needs validation records with a task (meta.task, or "
                          f"eval.task); {val_path} has none: select by real_loglik")
    return metric, verifier


@contextmanager
def kept_rng(device: torch.device) -> Iterator[None]:
    """Run the block on a copy of every random state the training draws from (torch's CPU and the device's
    generators, ``random``, numpy); they are as before afterwards, whatever the block drew."""
    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)


@dataclass
class Validation:
    """The evaluation inside one training run: prompts, scorer, schedule and selection settings."""

    cfg: Any  # the run's Config
    records: list[dict[str, Any]]
    prompts: list[str]  # formatted as generation formats them
    verifier: Any  # (check, gold) of the records' task, or None
    metric: str  # "accuracy" | "real_loglik"
    select: str  # "last" | "best"
    patience: int
    due_steps: set[int]  # the optimizer steps evaluated at
    steps_per_epoch: float  # optimizer steps per epoch (fractional: an epoch may end inside a step)
    epochs: float  # epochs planned (after train.max_steps)
    total_steps: int
    best_dir: Path

    @classmethod
    def set_up(cls, run: Any, val_path: Path) -> Validation:
        """The evaluation of training run ``run`` (:class:`selfplay.stages.train._Training`) on the SFT records
        in ``val_path``. Refuses what it cannot do before the first step."""
        from transformers.integrations import is_deepspeed_zero3_enabled

        from accelerate.utils import DistributedType
        from selfplay.core.samplers import format_prompt
        from selfplay.data.records import load_sft
        cfg, accelerator = run.cfg, run.accelerator
        if is_deepspeed_zero3_enabled() or accelerator.distributed_type == DistributedType.FSDP:
            raise UserError("train.eval_every decodes with a whole model in every process; DeepSpeed ZeRO-3 and "
                            "FSDP partition the weights across processes: train with DDP or ZeRO-2 "
                            "(configs/accelerate/deepspeed_zero2.yaml), or set train.eval_every: 0")
        records = load_sft(val_path, "val")  # a .jsonl file, or a prepared directory's val.jsonl
        metric, verifier = selected_metric(cfg, records, val_path)
        t = cfg.train
        per_epoch_batches = math.ceil(len(run.examples) / t.batch_size)
        batches_per_step = t.grad_accum * accelerator.num_processes
        steps_per_epoch = per_epoch_batches / batches_per_step
        epochs = len(run.order) / per_epoch_batches
        if t.eval_every == "epoch":  # the step holding the last batch of epoch e
            whole = len(run.order) // per_epoch_batches
            due = {-(-e * per_epoch_batches // batches_per_step) for e in range(1, whole + 1)}
        else:
            due = set(range(t.eval_every, run.total_steps + 1, t.eval_every))
        due = {s for s in due if 0 < s < run.total_steps} | {run.total_steps}
        prompts = [format_prompt(run.tok, r["messages"], cfg.generate.prompt_format) for r in records]
        return cls(cfg, records, prompts, verifier, metric, cfg.loop.select, cfg.loop.patience, due, steps_per_epoch,
                   epochs, run.total_steps, run.out_dir / BEST_DIR)

    def epoch_at(self, step: int) -> float:
        return min(step / self.steps_per_epoch, self.epochs)

    # ---- measuring

    def measure(self, run: Any) -> dict[str, float]:
        """``eval/*`` metrics of the model as it is now: every process scores its share, all get the whole."""
        from accelerate.utils import gather_object

        from selfplay.core.samplers import HFSampler
        from selfplay.stages.evaluate import response_logps

        cfg, accelerator = self.cfg, run.accelerator
        mine = list(range(accelerator.process_index, len(self.records), accelerator.num_processes))
        prompts = [self.prompts[i] for i in mine]
        model = run.policy  # the model inside the DDP wrapper (with its LoRA adapters): no collectives
        training = run.scorer.training
        run.scorer.eval()
        try:
            with kept_rng(accelerator.device), torch.no_grad(), accelerator.autocast():
                sums, counts = response_logps(model, run.tok, prompts, [self.records[i]["reference"] for i in mine],
                                              batch_size=cfg.eval.batch_size, max_length=cfg.train.max_length)
                hits: list[float | None] = [None] * len(mine)
                if self.verifier is not None and mine:
                    check, gold = self.verifier
                    sampler = HFSampler.from_loaded(model, run.tok, batch_size=cfg.eval.batch_size)
                    answers = sampler.generate(prompts, n=1, temperature=0.0, top_p=1.0,
                                               max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.seed, progress=False)
                    hits = [float(check(a[0], gold(self.records[i]))) for a, i in zip(answers, mine)]
        finally:
            run.scorer.train(training)
        rows = sorted(gather_object(list(zip(mine, sums, counts, hits))))
        metrics = {"eval/real_loglik": sum(r[1] for r in rows) / max(1, sum(r[2] for r in rows)), "eval/n": len(rows)}
        if self.verifier is not None:
            metrics["eval/accuracy"] = sum(r[3] for r in rows) / max(1, len(rows))
        return metrics

    # ---- at an optimizer step

    def evaluate(self, run: Any, state: dict[str, Any], logger: Any) -> tuple[bool, bool]:
        """Evaluate at ``state['step']``: log, record in ``state``, keep the best. Returns (stop training,
        a checkpoint was saved at this step)."""
        step = state["step"]
        metrics = self.measure(run)
        record = {"step": step, "epoch": self.epoch_at(step), **metrics}
        history = state.setdefault("evaluations", [])
        history.append(record)
        # Compared by the metric, then (accuracy ties) by the log-likelihood.
        key = [metrics[f"eval/{m}"] for m in dict.fromkeys((self.metric, "real_loglik"))]
        best = state.get("best")
        improved = best is None or key > best["key"]
        if improved:
            state["best"] = {"step": step, "epoch": record["epoch"], "value": key[0], "key": key}
            state["since_best"] = 0
        else:
            state["since_best"] = state.get("since_best", 0) + 1
        if logger is not None:
            logger.log({k: v for k, v in record.items() if k != "step"}, step)
        if run.accelerator.is_main_process:
            shown = "  ".join(f"{k.removeprefix('eval/')} {v:.4f}" for k, v in metrics.items() if k != "eval/n")
            mark = " (best)" if improved and self.select == "best" else ""
            console.print(f"eval at step {step} (ep {epoch_text(record['epoch'])}/{epoch_text(self.epochs)}): "
                          f"{shown}{mark}", highlight=False)
        saved = False
        if self.select == "best" and improved and step < self.total_steps:
            # The resume point first, then the weights (see the module docstring).
            save_checkpoint(run.accelerator, run.out_dir / "checkpoint", state,
                            needed=state_bytes(run.policy.state_dict(), run.optimizer.state_dict()))
            self.save_best(run, state["best"])
            saved = True
        stop = (self.select == "best" and self.patience > 0 and state["since_best"] >= self.patience
                and step < self.total_steps)
        if stop and run.accelerator.is_main_process:
            console.print(f"eval: no improvement of {self.metric} in {self.patience} evaluation(s): stopping at "
                          f"step {step}, keeping step {state['best']['step']}", highlight=False)
        return stop, saved

    # ---- the best weights on disk

    def save_best(self, run: Any, best: dict[str, Any]) -> None:
        """The trained parameters of the model as it is now, as ``best/`` (atomically)."""
        from safetensors.torch import save_file

        if run.accelerator.is_main_process:
            tensors = {n: p.detach().contiguous().cpu() for n, p in run.policy.named_parameters() if p.requires_grad}
            with atomic_dir(self.best_dir, needed=state_bytes(tensors)) as tmp:
                save_file(tensors, str(tmp / WEIGHTS_FILE))
                write_json(tmp / BEST_FILE, best)
        run.accelerator.wait_for_everyone()

    def saved_step(self) -> int | None:
        path = self.best_dir / BEST_FILE
        return read_json(path)["step"] if path.is_file() else None

    def resume(self, run: Any, state: dict[str, Any]) -> None:
        """After resuming at ``state``: a kill between the checkpoint at an improving step and the save of its
        weights left older weights in ``best/``; the resumed weights are that step's, so save them now."""
        if run.accelerator.is_main_process:
            recover_checkpoint(self.best_dir, marker=BEST_FILE)
        run.accelerator.wait_for_everyone()
        best = state.get("best")
        if self.select == "best" and best is not None and best["step"] == state["step"] \
                and self.saved_step() != best["step"]:
            self.save_best(run, best)

    def restore_best(self, run: Any, state: dict[str, Any]) -> dict[str, Any] | None:
        """``select: best``: load the best weights into the model (every process) before it is saved, and say
        which were kept (None for ``select: last``)."""
        from safetensors.torch import load_file

        if self.select != "best":
            return None
        best = state["best"]
        if best["step"] != state["step"]:  # else the weights in memory are the best ones
            if self.saved_step() != best["step"]:
                raise UserError(f"{self.best_dir}: holds the weights of step {self.saved_step()}, the run's best "
                                f"evaluation was at step {best['step']}; remove {run.out_dir} and train again")
            saved = load_file(str(self.best_dir / WEIGHTS_FILE))
            with torch.no_grad():
                for name, p in run.policy.named_parameters():
                    if p.requires_grad:
                        p.copy_(saved[name].to(p.device))
        return {"select": "best", "metric": self.metric, "step": best["step"], "epoch": best["epoch"],
                "epochs": self.epochs, "value": best["value"], "trained_steps": state["step"],
                "planned_steps": self.total_steps, "evaluations": len(state.get("evaluations", [])),
                "stopped_early": state["step"] < self.total_steps}

    def clean_up(self, run: Any) -> None:
        """The model is saved: the copy of the best weights is not needed any more."""
        if run.accelerator.is_main_process:
            shutil.rmtree(self.best_dir, ignore_errors=True)
