"""One round of training for every method: one accelerate loop, objectives behind one interface.

The method (:mod:`selfplay.methods`) names an objective (:mod:`selfplay.core.objectives`): a pairwise
preference objective against a precomputed reference (SPIN, SPPO, GPO, DPO), a weighted likelihood
objective without one (SFT, RISE's reward-weighted regression), or a judge's head trained on preference pairs
(GPM, Bradley-Terry); the objective's hooks say how its records load, what model trains and how a batch looks. The loop — batching, accumulation,
autocast, checkpoint/resume, metrics, trackers, save — is the same for all.

Why a lean accelerate loop rather than TRL's ``DPOTrainer``: the reference is the model the iteration
starts from, so its log-probs are computed ONCE with the very same weights before the first step and only
the policy stays resident (the anchors held two full models; OOM was their users' top complaint). SPPO's
probability targets, GPO's raw scores and RISE's rewards ride along each record, which TRL's loss
signatures have no room for. The loop is plain ``accelerate``: it runs unchanged under ``accelerate
launch`` (DDP, FSDP, DeepSpeed).

Outputs in ``out_dir``: ``ref_logps.jsonl`` (+ meta; preference objective only), ``checkpoint/`` while
running (resume point), ``best/`` while running with ``loop.select: best`` (:mod:`selfplay.stages.train_eval`),
``metrics.jsonl``, ``model/`` (full model or PEFT adapter), ``merged/`` (LoRA merged, on request),
``summary.json`` (written last: the stage is done).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfplay.config import Config, save_config
from selfplay.core.examples import RESPONSE_FIELDS, TokenizedExample
from selfplay.core.lean_activations import keep_fewer_activations
from selfplay.core.logprobs import training_batch
from selfplay.core.memory import large_blocks_unmapped, release_memory
from selfplay.core.objectives import Objective, batch_values, get_objective
from selfplay.core.packing import sequence_tokens
from selfplay.hardware import fast_bf16
from selfplay.io import read_json, read_jsonl, write_json, write_jsonl
from selfplay.methods import get_method, loss_of
from selfplay.progress import console, progress_bar
from selfplay.runs import fingerprint, output_lock
from selfplay.stages.train_eval import Validation, check_validation
from selfplay.stages.train_io import (TrainResult, batch_order, finish, recover_checkpoint, save_checkpoint,
                                      state_bytes, summary_result)
from selfplay.trackers import MetricLogger, open_metric_logger, report_to


def _precision(cfg: Config) -> str:
    """accelerate mixed-precision mode: bf16 where the hardware has it (CUDA or CPU with bf16 units)."""
    if cfg.train.precision == "fp32":
        return "no"
    if cfg.train.precision == "bf16":
        return "bf16"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return "bf16" if fast_bf16(device).name == "bfloat16" else "no"


def precompute_reference(accelerator: Any, scorer: torch.nn.Module, policy: torch.nn.Module,
                         examples: list[TokenizedExample], pad_id: int, batch_size: int, out_path: Path, fp: str,
                         fields: tuple[str, ...]) -> dict[str, list[float]]:
    """Reference log-probs {id: [one per response]} computed once; reused if ``out_path`` matches ``fp``.

    ``scorer``: the prepared :class:`SequenceLogps` (under ZeRO-3 only the engine can run the partitioned
    model); ``policy`` the model inside it (it decides the batch layout). Each process scores its shard of batches; results are gathered and the main process writes the
    file (one line per record, keyed by the response fields, e.g. ``{"id", "chosen", "rejected"}``). Leaves
    ``scorer`` in eval mode.
    """
    meta_path = out_path.with_suffix(".meta.json")
    if out_path.exists() and meta_path.exists() and read_json(meta_path).get("fingerprint") == fp:
        return {r["id"]: [r[f] for f in fields] for r in read_jsonl(out_path)}
    k = len(fields)
    batches = [list(range(i, min(i + batch_size, len(examples)))) for i in range(0, len(examples), batch_size)]
    loader = accelerator.prepare_data_loader(torch.utils.data.DataLoader(torch.arange(len(batches)), batch_size=1))
    scorer.eval()
    results: dict[int, list[float]] = {}
    with progress_bar("reference log-probs", total=len(batches), disable=not accelerator.is_main_process) as bar:
        for (b,) in loader:
            idx = batches[int(b)]
            exs = [examples[i] for i in idx]
            batch = {key: v.to(accelerator.device) for key, v in training_batch(policy, exs, pad_id).items()}
            with torch.no_grad(), accelerator.autocast():
                logps, _ = scorer(**batch)
            rows = torch.cat([torch.tensor(idx, dtype=torch.float64, device=logps.device)[:, None],
                              logps.double().view(k, -1).T], dim=1)  # [B, 1 + k]
            # The last batches can be shorter on some processes: pad to equal shapes (index -1) to gather.
            rows = accelerator.pad_across_processes(rows, dim=0, pad_index=-1)
            for i, *values in accelerator.gather(rows).tolist():
                if i >= 0:
                    results[int(i)] = values
            bar.advance(accelerator.num_processes)
    ref = {examples[i].id: v for i, v in results.items()}
    if accelerator.is_main_process:
        write_jsonl(out_path, ({"id": key, **dict(zip(fields, v))} for key, v in ref.items()))
        write_json(meta_path, {"fingerprint": fp, "count": len(ref)})
    accelerator.wait_for_everyone()
    return ref


def _autocast_kwargs() -> Any:
    """bf16 autocast without its weight cache: the cache keeps a bf16 copy of every weight until the step's
    backward ends (~270 MB for a 135M model), and under gradient checkpointing the recomputed forward casts
    again anyway; without checkpointing each weight is cast once per forward either way."""
    from accelerate.utils import AutocastKwargs

    return AutocastKwargs(cache_enabled=False)


def _accelerator(cfg: Config, out_dir: Path) -> Any:
    from accelerate import Accelerator

    from selfplay.core.launchers import under_distributed_launcher

    if not under_distributed_launcher():
        # accelerate keeps one process-wide state; the loop trains several times in one process, so start clean.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    t = cfg.train
    # Trackers are the metric logger's (selfplay.trackers), not the accelerator's: the loop logs through it too.
    accelerator = Accelerator(mixed_precision=_precision(cfg), gradient_accumulation_steps=t.grad_accum,
                              project_dir=str(out_dir / "trackers"))
    why = f"train.precision={t.precision}" if t.precision != "auto" else fast_bf16(accelerator.device.type).reason
    autocast = "bf16 autocast" if _precision(cfg) == "bf16" else "no autocast"
    accelerator.print(f"train: on {accelerator.device}, float32 weights, {autocast} ({why})")
    return accelerator


def _policy(cfg: Config, policy: Any) -> Any:
    """LoRA adapters, gradient checkpointing and lean activations as configured."""
    if cfg.train.lean_activations and not (cfg.launch.deepspeed_config or cfg.launch.accelerate_config):
        keep_fewer_activations(policy)
    if cfg.model.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lc = cfg.model.lora
        policy = get_peft_model(policy, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                   target_modules=lc.target_modules, task_type="CAUSAL_LM"))
    if cfg.train.gradient_checkpointing:
        # transformers 5.24 renamed it (the old name warns of its removal in v6); earlier 5.x have only the old one.
        if hasattr(policy, "activation_checkpointing_enable"):
            policy.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.model.lora.enabled:
            policy.enable_input_require_grads()
    return policy


@dataclass
class _Training:
    """Everything one training run holds between its parts (:func:`run_train`)."""

    cfg: Config
    model: str  # the model training starts from, as given
    model_dir: str  # ... resolved to a directory
    data_path: Path  # the training records
    out_dir: Path
    names: tuple[str, str]  # how metrics name the two responses (the method's)
    objective: Objective
    loss_name: str
    fields: tuple[str, ...]  # the numeric record fields the loss reads
    accelerator: Any
    policy: Any  # the model (with LoRA adapters when enabled)
    tok: Any
    examples: list[TokenizedExample]
    n_cut: int  # records truncated to train.max_length
    scorer: Any  # the prepared SequenceLogps around the policy
    optimizer: Any
    loader: Any  # the prepared index loader over ``order``
    scheduler: Any
    params: list[torch.nn.Parameter]
    order: list[list[int]]  # example indices of each batch, in training order
    total_steps: int
    ref: dict[str, list[float]] = field(default_factory=dict)  # reference log-probs by record id
    validation: Any = None  # the evaluation inside the run (train_eval.Validation), with train.eval_every


def run_train(cfg: Config, model: str, data_path: Path, out_dir: Path, val_path: Path | None = None) -> TrainResult:
    """Train ``model`` on the training records in ``data_path`` with the method's objective; resumable.
    ``val_path``: SFT records evaluated on inside the run (``train.eval_every``, :mod:`selfplay.stages.train_eval`).

    The trainer itself, in this process: :func:`train_stage` (which checks the inputs and locks ``out_dir``)
    calls it, and so do the processes it launches. Set-up, the reference pass, resuming, the loop and the
    teardown are the functions below, in that order.
    """
    out_dir = Path(out_dir)
    if (out_dir / "summary.json").exists():
        return summary_result(out_dir)
    run = _set_up(cfg, model, data_path, out_dir)
    if val_path is not None:
        run.validation = Validation.set_up(run, Path(val_path))
    if run.objective.needs_reference:
        run.ref = _reference_pass(run)
    run.scorer.train()
    state = _resume(run)
    logger = _metric_logger(run, state) if run.accelerator.is_main_process else None
    try:
        last = _train_loop(run, state, logger)
    finally:
        if logger is not None:
            logger.close()
    return _tear_down(run, state, last)


def _set_up(cfg: Config, model: str, data_path: Path, out_dir: Path) -> _Training:
    """Records checked, accelerator, seed, policy and tokenized examples, batch order, optimizer and
    schedule, all prepared by accelerate."""
    from transformers import get_scheduler
    from transformers.integrations import is_deepspeed_zero3_enabled

    from accelerate.utils import set_seed
    from selfplay.models import load_model, resolve_model

    t = cfg.train
    method = get_method(cfg.method)
    objective: Objective = get_objective(method.objective)
    loss_name = loss_of(cfg)
    fields = objective.required_fields(loss_name)
    records = objective.load_records(data_path, fields)  # validate before loading any model
    model_dir = resolve_model(model, cfg.model.revision)
    accelerator = _accelerator(cfg, out_dir)
    set_seed(t.seed)
    # Under ZeRO-3 the weights are partitioned across the GPUs while they load: moving them would break that.
    device = None if is_deepspeed_zero3_enabled() else str(accelerator.device)
    policy, tok = load_model(model_dir, dtype="float32", device=device, trust_remote_code=cfg.model.trust_remote_code)
    examples, n_cut = objective.tokenize(records, tok, prompt_format=cfg.generate.prompt_format,
                                         max_length=t.max_length, max_prompt_length=t.max_prompt_length)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    policy = objective.trained_model(_policy(cfg, policy), t, model_dir, device)
    processes = accelerator.num_processes
    # What DDP/FSDP/DeepSpeed wrap: the log-prob computation itself, so the chunked path runs inside them.
    scorer = objective.scorer(policy, processes > 1)

    order = batch_order([e.length for e in examples], t.batch_size, t.epochs, t.seed)
    if t.max_steps > 0:
        order = order[: t.max_steps * t.grad_accum * processes]
    # Batch i goes to process i % P (accelerate's sharding of this index loader), so a step of P processes
    # consumes the same batches as P accumulation steps of one process; the last step may repeat a few of the
    # first batches so that every process has one (accelerate's even_batches).
    loader = torch.utils.data.DataLoader(torch.arange(len(order)), batch_size=1)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer_cls = torch.optim.RMSprop if t.optimizer == "rmsprop" else torch.optim.AdamW
    betas = {"betas": tuple(t.adam_betas)} if t.optimizer == "adamw" else {}
    # AdamW's fused kernel (all tensors in one pass) where torch has it for the device: on a CPU the default
    # per-tensor loop took 1.93 s per step of SmolLM2-135M's 128M weights against 0.45 s fused (median of 5 steps
    # each, 2 cores, on a machine busy with another job; the same update up to float rounding). HF's Trainer, and so TRL, defaults to it as well.
    fused = {"fused": True} if t.optimizer == "adamw" and all(p.device.type in ("cpu", "cuda") for p in params) else {}
    optimizer = optimizer_cls(params, lr=t.lr, weight_decay=t.weight_decay, **betas, **fused)
    total_steps = max(1, math.ceil(len(order) / (t.grad_accum * processes)))
    # accelerate steps a prepared scheduler once per process at every optimizer step (it assumes a schedule
    # written for one process), so the schedule is laid out over total_steps x P scheduler steps.
    warmup = t.warmup_steps if t.warmup_steps > 0 else int(t.warmup_ratio * total_steps)  # HF's rule: steps win
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=warmup * processes,
                              num_training_steps=total_steps * processes)
    scorer, optimizer, loader, scheduler = accelerator.prepare(scorer, optimizer, loader, scheduler)
    return _Training(cfg, model, model_dir, data_path, out_dir, method.names, objective, loss_name, fields,
                     accelerator, policy, tok, examples, n_cut, scorer, optimizer, loader, scheduler, params, order,
                     total_steps)


def _reference_pass(run: _Training) -> dict[str, list[float]]:
    """The reference log-probs, once, before the first step. After prepare: under ZeRO-3 only the engine can
    run the partitioned model. LoRA's B = 0 at the start, so the adapters change nothing: the reference is the
    model training starts from."""
    examples = run.examples
    ref_fp = fingerprint(run.model_dir, [(e.id, e.prompt_ids, e.responses, e.masks) for e in examples],
                         _precision(run.cfg))
    t = run.cfg.train
    return precompute_reference(run.accelerator, run.scorer, run.policy, examples, run.tok.pad_token_id,
                                t.reference_batch_size or t.batch_size, run.out_dir / "ref_logps.jsonl", ref_fp,
                                RESPONSE_FIELDS[run.objective.record_kind])


def _resume(run: _Training) -> dict[str, Any]:
    """The training state: fresh, or the last checkpoint's (optimizer, scheduler and RNG states restored;
    with evaluation inside the run, its history and best so far)."""
    accelerator, ckpt = run.accelerator, run.out_dir / "checkpoint"
    state: dict[str, Any] = {"batches_done": 0, "step": 0, "tokens": 0}
    if accelerator.is_main_process:
        recover_checkpoint(ckpt)
    accelerator.wait_for_everyone()
    if (ckpt / "trainer_state.json").exists():
        accelerator.load_state(str(ckpt))
        state = read_json(ckpt / "trainer_state.json")
        accelerator.print(f"resuming training at step {state['step']} from {ckpt}")
    if run.validation is not None:
        run.validation.resume(run, state)
    return state


def _metric_logger(run: _Training, state: dict[str, Any]) -> MetricLogger:
    """metrics.jsonl (steps after ``state`` — logged before an interruption, about to be redone — dropped)
    plus the configured trackers, which keep their files under ``trackers/``."""
    logger = open_metric_logger(run.out_dir / "metrics.jsonl", report_to(run.cfg),
                                project=f"selfplay-{Path(run.cfg.run_dir).name}",
                                logging_dir=run.out_dir / "trackers", keep_through=state["step"])
    logger.log_config(run.cfg)
    return logger


def _train_loop(run: _Training, state: dict[str, Any], logger: MetricLogger | None) -> dict[str, float]:
    """The optimizer steps from ``state`` on (updated in place), evaluating where ``train.eval_every`` asks
    (which may stop them early); returns the last logged metrics."""
    t, accelerator = run.cfg.train, run.accelerator
    processes, ckpt = accelerator.num_processes, run.out_dir / "checkpoint"
    # batches_done counts the batches of all processes; each process skips its own share of them.
    skip = state["batches_done"] // processes
    active = accelerator.skip_first_batches(run.loader, skip) if skip else run.loader
    window: list[dict[str, float]] = []
    last: dict[str, float] = {}
    t0, tokens0 = time.perf_counter(), state["tokens"]
    with large_blocks_unmapped(run.cfg.train.mmap_threshold), \
            progress_bar("train", total=run.total_steps, completed=state["step"],
                         disable=not accelerator.is_main_process) as bar:
        for (b,) in active:
            exs = [run.examples[i] for i in run.order[int(b)]]
            # The objective's layout: for log-probs packed (each prompt once) where the model allows it, else
            # left-padded (same log-probs); for a judge's head, whole conversations left-padded.
            batch = run.objective.batch(run.policy, exs, run.tok.pad_token_id)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.accumulate(run.scorer), accelerator.autocast(autocast_handler=_autocast_kwargs()):
                logps, ntok = run.scorer(**batch)
                ref_t = torch.tensor([run.ref[e.id] for e in exs], device=logps.device) if run.ref else None
                loss, metrics = run.objective.compute(run.loss_name, logps, ntok,
                                                      batch_values(exs, run.fields, logps.device), ref_t, t, run.names)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(run.params, 1.0)
                run.optimizer.step()
                run.scheduler.step()
                run.optimizer.zero_grad()
            state["batches_done"] += processes
            # Tokens as separate prompt + response sequences (what TRL counts), whichever layout ran them.
            state["tokens"] += int(accelerator.reduce(torch.tensor(sequence_tokens(exs), device=logps.device), "sum"))
            values = accelerator.reduce(torch.stack([v.float() for v in metrics.values()]), "mean").tolist()
            window.append(dict(zip(metrics, values)))
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            bar.advance(1)
            if state["step"] % t.logging_steps == 0 or state["step"] == run.total_steps:
                last = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                last.update(step=state["step"], lr=run.scheduler.get_last_lr()[0],
                            tokens_per_s=(state["tokens"] - tokens0) / (time.perf_counter() - t0))
                window = []
                if logger is not None:
                    logger.log(last, state["step"])
                shown = f" acc {last['rewards/accuracies']:.2f}" if "rewards/accuracies" in last else ""
                bar.update(description=f"train loss {last['loss']:.4f}{shown}")
            saved = False
            if run.validation is not None and state["step"] in run.validation.due_steps:
                stop, saved = run.validation.evaluate(run, state, logger)
                if stop:
                    getattr(active, "end", lambda: None)()  # accelerate's loader: no longer the active one
                    break
            if not saved and t.save_steps > 0 and state["step"] % t.save_steps == 0 and state["step"] < run.total_steps:
                needed = state_bytes(run.policy.state_dict(), run.optimizer.state_dict())
                save_checkpoint(accelerator, ckpt, state, needed=needed)
    return last


def _tear_down(run: _Training, state: dict[str, Any], last: dict[str, float]) -> TrainResult:
    """Save the model (with ``loop.select: best``, the best evaluation's weights) and the summary, then drop
    every reference to the model and optimizer before the next stage loads a model (the accelerator holds
    them too)."""
    v = run.validation
    kept = v.restore_best(run, state) if v is not None else None
    result = finish(run.accelerator, run.cfg, run.scorer, run.tok, run.out_dir, state, last, run.n_cut,
                    len(run.examples), run.total_steps, parent=run.model, parent_dir=run.model_dir,
                    data=run.data_path, evaluations=state.get("evaluations") if v is not None else None, kept=kept)
    if v is not None:
        v.clean_up(run)
    run.accelerator.free_memory(run.scorer, run.optimizer, run.loader, run.scheduler)
    run.policy = run.scorer = run.optimizer = run.loader = run.scheduler = run.accelerator = None
    release_memory()
    return result


def train_stage(cfg: Config, model: str, data_path: Path, out_dir: Path, val_path: Path | None = None) -> TrainResult:
    """Train in this process, or under ``accelerate launch`` when ``launch`` asks for several processes or
    machines (or ``launch.backend`` is ``accelerate``); the launched processes run :func:`run_train`. The
    entry point of ``selfplay train`` and the loop: inputs are checked before ``out_dir`` is created, and
    ``out_dir`` is locked while training (a second run on it is refused, naming this one). ``val_path``: the
    validation records of ``train.eval_every`` (given exactly when it is on)."""
    from selfplay.core.launchers import machine_file, run_launched, several_processes, under_distributed_launcher
    from selfplay.models import resolve_model

    out_dir = Path(out_dir)
    launch = cfg.launch
    if (out_dir / "summary.json").exists() or under_distributed_launcher():
        # done already (reads the summary), or a launched rank
        return run_train(cfg, model, data_path, out_dir, val_path)
    method = get_method(cfg.method)
    objective = get_objective(method.objective)
    objective.load_records(data_path, objective.required_fields(loss_of(cfg)))
    check_validation(cfg, val_path)
    resolve_model(model, cfg.model.revision)
    out_dir.mkdir(parents=True, exist_ok=True)
    # One lock per output: the main machine holds it; the other machines of a multi-node run train the same
    # output with it (and the processes a launcher starts run under their parent's).
    with output_lock(out_dir, "train", enabled=launch.machine_rank == 0):
        if not (several_processes(launch) or launch.backend == "accelerate"):
            return _with_cards(run_train(cfg, model, data_path, out_dir, val_path), cfg, model, data_path, out_dir)
        launch_cfg = out_dir / machine_file(launch, "launch_config.yaml")
        save_config(cfg, launch_cfg)
        where = f" on machine {launch.machine_rank} of {launch.num_machines}" if launch.num_machines > 1 else ""
        console.print(f"train: launching {launch.num_processes} process(es) under accelerate{where}")
        run_launched(launch, "selfplay.stages.worker",
                     ["train", "--config", str(launch_cfg), "--model", model, "--data", str(data_path), "--out",
                      str(out_dir), *(["--val", str(val_path)] if val_path is not None else [])])
        return _with_cards(summary_result(out_dir), cfg, model, data_path, out_dir)


def _with_cards(result: TrainResult, cfg: Config, model: str, data_path: Path, out_dir: Path) -> TrainResult:
    """Model cards (README.md) for the saved model(s), written by the main machine (selfplay.model_card)."""
    from selfplay.model_card import write_model_cards

    if cfg.launch.machine_rank == 0:
        write_model_cards(out_dir, cfg, model, data_path)
    return result
