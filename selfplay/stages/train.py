"""Preference training (SPIN, SPPO, GPO, DPO) with a precomputed reference.

Why a lean accelerate loop rather than TRL's ``DPOTrainer``: the reference is the model the iteration
starts from, so its log-probs are computed ONCE with the very same weights before the first step and only
the policy stays resident (the anchors held two full models; OOM was their users' top complaint). SPPO's
probability targets and GPO's raw scores ride along each pair, which TRL's loss signature has no room for.
The loop is plain ``accelerate``: it runs unchanged under ``accelerate launch`` (DDP, FSDP, DeepSpeed).

Outputs in ``out_dir``: ``ref_logps.jsonl`` (+ meta), ``checkpoint/`` while running (resume point),
``metrics.jsonl``, ``model/`` (full model or PEFT adapter), ``merged/`` (LoRA merged, on request),
``summary.json`` (written last: the stage is done).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfplay.config import Config, save_config
from selfplay.core.logprobs import pair_batch, sequence_logps, split_chosen_rejected
from selfplay.core.losses import get_loss
from selfplay.core.memory import release_memory
from selfplay.hardware import fast_bf16
from selfplay.io import JsonlAppender, read_json, read_jsonl, write_json, write_jsonl
from selfplay.methods import default_loss, prob_fields
from selfplay.methods.pairs import PairExample, load_pairs, tokenize_pairs


@dataclass
class TrainResult:
    model_path: Path  # what the next iteration should load (merged dir for LoRA, else model/)
    steps: int
    metrics: dict[str, float]


def _precision(cfg: Config) -> str:
    """accelerate mixed-precision mode: bf16 where the hardware has it (CUDA or CPU with bf16 units)."""
    if cfg.train.precision == "fp32":
        return "no"
    if cfg.train.precision == "bf16":
        return "bf16"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return "bf16" if fast_bf16(device).name == "bfloat16" else "no"


def _batches(examples: list[PairExample], batch_size: int, epochs: float, seed: int) -> list[list[int]]:
    """Deterministic batch order over all epochs: shuffled, then length-grouped in windows of 50 batches.

    Grouping similar lengths cuts padding (the cost of a batch is its longest row); the windowed shuffle
    keeps batches random. Being a pure function of the seed makes resume a matter of skipping batches.
    """
    g = torch.Generator().manual_seed(seed)
    length = [len(e.tokens.prompt_ids) + max(len(e.tokens.chosen_ids), len(e.tokens.rejected_ids or []))
              for e in examples]
    per_epoch = math.ceil(len(examples) / batch_size)
    total = max(1, round(per_epoch * epochs))
    order: list[list[int]] = []
    while len(order) < total:
        idx = torch.randperm(len(examples), generator=g).tolist()
        window = batch_size * 50
        epoch_batches = []
        for w in range(0, len(idx), window):
            chunk = sorted(idx[w:w + window], key=lambda i: length[i], reverse=True)
            epoch_batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
        perm = torch.randperm(len(epoch_batches), generator=g).tolist()
        order += [epoch_batches[p] for p in perm]
    return order[:total]


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def precompute_reference(accelerator: Any, model: torch.nn.Module, examples: list[PairExample], pad_id: int,
                         batch_size: int, out_path: Path, fingerprint: str) -> dict[str, tuple[float, float]]:
    """Reference log-probs {id: (chosen, rejected)} computed once; reused if ``out_path`` matches ``fingerprint``.

    Each process scores its shard of batches; results are gathered and the main process writes the file.
    """
    meta_path = out_path.with_suffix(".meta.json")
    if out_path.exists() and meta_path.exists() and read_json(meta_path).get("fingerprint") == fingerprint:
        return {r["id"]: (r["chosen"], r["rejected"]) for r in read_jsonl(out_path)}
    from selfplay.stages.progress import progress_bar

    batches = [list(range(i, min(i + batch_size, len(examples)))) for i in range(0, len(examples), batch_size)]
    loader = accelerator.prepare_data_loader(torch.utils.data.DataLoader(
        torch.arange(len(batches)), batch_size=1))
    model.eval()
    results: dict[int, tuple[float, float]] = {}
    with progress_bar("reference log-probs", total=len(batches), disable=not accelerator.is_main_process) as bar:
        for (b,) in loader:
            idx = batches[int(b)]
            batch = {k: v.to(accelerator.device) for k, v in pair_batch([examples[i].tokens for i in idx], pad_id).items()}
            with torch.no_grad(), accelerator.autocast():
                logps, _ = sequence_logps(model, batch)
            chosen, rejected = split_chosen_rejected(logps)
            rows = torch.stack([torch.tensor(idx, dtype=torch.float64, device=chosen.device),
                                chosen.double(), rejected.double()], dim=1)
            for i, c, r in accelerator.gather(rows).tolist():
                results[int(i)] = (c, r)
            bar.advance(accelerator.num_processes)
    ref = {examples[i].id: v for i, v in results.items()}
    if accelerator.is_main_process:
        write_jsonl(out_path, ({"id": k, "chosen": c, "rejected": r} for k, (c, r) in ref.items()))
        write_json(meta_path, {"fingerprint": fingerprint, "count": len(ref)})
    accelerator.wait_for_everyone()
    return ref


def run_train(cfg: Config, model: str, pairs_path: Path, out_dir: Path) -> TrainResult:
    """Train ``model`` on the pairs in ``pairs_path`` against itself as reference; resumable."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from selfplay.core.launchers import under_distributed_launcher
    from selfplay.models import load_model, resolve_model
    from selfplay.stages.progress import progress_bar

    t = cfg.train
    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    if summary_path.exists():
        s = read_json(summary_path)
        return TrainResult(Path(s["model_path"]), s["steps"], s["metrics"])
    loss_name = default_loss(t.method) if t.loss == "auto" else t.loss
    loss_fn = get_loss(loss_name)
    fields = prob_fields(loss_name)
    rows = load_pairs(pairs_path, prob_fields=fields)  # validate the input before loading any model
    if not under_distributed_launcher():
        # accelerate keeps one process-wide state; the loop trains several times in one process, so start clean.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=_precision(cfg), gradient_accumulation_steps=t.grad_accum)
    autocast = "bf16 autocast" if _precision(cfg) == "bf16" else "no autocast"
    accelerator.print(f"train: on {accelerator.device}, float32 weights, {autocast} "
                      f"({'train.precision=' + t.precision if t.precision != 'auto' else fast_bf16(accelerator.device.type).reason})")
    set_seed(t.seed)
    model_dir = resolve_model(model, cfg.model.revision)
    policy, tok = load_model(model_dir, dtype="float32", device=str(accelerator.device),
                             trust_remote_code=cfg.model.trust_remote_code)
    examples, n_cut = tokenize_pairs(rows, tok, prompt_format=cfg.generate.prompt_format,
                                     max_length=t.max_length, max_prompt_length=t.max_prompt_length)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ref_fp = _fingerprint(model_dir, [(e.id, e.tokens.prompt_ids, e.tokens.chosen_ids, e.tokens.rejected_ids)
                                      for e in examples], _precision(cfg))
    ref = precompute_reference(accelerator, policy, examples, pad_id, t.batch_size,
                               out_dir / "ref_logps.jsonl", ref_fp)

    if cfg.model.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lc = cfg.model.lora
        policy = get_peft_model(policy, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                   target_modules=lc.target_modules, task_type="CAUSAL_LM"))
    if t.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.model.lora.enabled:
            policy.enable_input_require_grads()
    policy.train()

    order = _batches(examples, t.batch_size, t.epochs, t.seed)
    if t.max_steps > 0:
        order = order[: t.max_steps * t.grad_accum * accelerator.num_processes]
    loader = torch.utils.data.DataLoader(torch.arange(len(order)), batch_size=1)
    params = [p for p in policy.parameters() if p.requires_grad]
    if t.optimizer == "rmsprop":
        optimizer = torch.optim.RMSprop(params, lr=t.lr, weight_decay=t.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    total_steps = max(1, math.ceil(len(order) / (t.grad_accum * accelerator.num_processes)))
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=int(t.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    policy, optimizer, loader, scheduler = accelerator.prepare(policy, optimizer, loader, scheduler)

    ckpt = out_dir / "checkpoint"
    state = {"batches_done": 0, "step": 0, "tokens": 0}
    if (ckpt / "trainer_state.json").exists():
        accelerator.load_state(str(ckpt))
        state = read_json(ckpt / "trainer_state.json")
        accelerator.print(f"resuming training at step {state['step']} from {ckpt}")
        if accelerator.is_main_process and (out_dir / "metrics.jsonl").exists():
            # Steps logged after the checkpoint will be redone: drop them so no step is logged twice.
            kept = [m for m in read_jsonl(out_dir / "metrics.jsonl", tolerate_torn_tail=True) if m["step"] <= state["step"]]
            write_jsonl(out_dir / "metrics.jsonl", kept)
    active = accelerator.skip_first_batches(loader, state["batches_done"]) if state["batches_done"] else loader
    metrics_file = JsonlAppender(out_dir / "metrics.jsonl") if accelerator.is_main_process else None
    window: list[dict[str, float]] = []
    last: dict[str, float] = {}
    t0, tokens0 = time.perf_counter(), state["tokens"]
    with progress_bar("train", total=total_steps, completed=state["step"],
                      disable=not accelerator.is_main_process) as bar:
        for (b,) in active:
            idx = order[int(b)]
            exs = [examples[i] for i in idx]
            batch = {k: v.to(accelerator.device) for k, v in pair_batch([e.tokens for e in exs], pad_id).items()}
            with accelerator.accumulate(policy), accelerator.autocast():
                logps, ntok = sequence_logps(policy, batch)
                pc, pr = split_chosen_rejected(logps)
                dev = pc.device
                rc = torch.tensor([ref[e.id][0] for e in exs], device=dev, dtype=pc.dtype)
                rr = torch.tensor([ref[e.id][1] for e in exs], device=dev, dtype=pc.dtype)
                probs = {f: torch.tensor([getattr(e, f) for e in exs], device=dev, dtype=pc.dtype) for f in fields}
                out = loss_fn(pc, pr, rc, rr, beta=t.beta, label_smoothing=t.label_smoothing, **probs)
                loss = out.losses.mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state["batches_done"] += accelerator.num_processes
            state["tokens"] += int(accelerator.reduce(batch["attention_mask"].sum(), "sum"))
            window.append(_batch_metrics(accelerator, loss, out, pc, pr, cfg.train.method))
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            bar.advance(1)
            if state["step"] % t.logging_steps == 0 or state["step"] == total_steps:
                last = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                last.update(step=state["step"], lr=scheduler.get_last_lr()[0],
                            tokens_per_s=(state["tokens"] - tokens0) / (time.perf_counter() - t0))
                window = []
                if metrics_file:
                    metrics_file.write(last)
                bar.update(description=f"train loss {last['loss']:.4f} acc {last['rewards/accuracies']:.2f}")
            if t.save_steps > 0 and state["step"] % t.save_steps == 0 and state["step"] < total_steps:
                _save_checkpoint(accelerator, ckpt, state)
    if metrics_file:
        metrics_file.close()
    result = _finish(accelerator, cfg, policy, tok, out_dir, state, last, n_cut, len(examples), total_steps)
    # The accelerator holds the model and optimizer; drop every reference before the next stage loads a model.
    accelerator.free_memory(policy, optimizer, loader, scheduler)
    del policy, optimizer, loader, scheduler, accelerator
    release_memory()
    return result


def _batch_metrics(accelerator: Any, loss: torch.Tensor, out: Any, pc: torch.Tensor, pr: torch.Tensor,
                   method: str) -> dict[str, float]:
    """The anchors' logged metrics, averaged over processes: SPIN's names (real = chosen, generated =
    rejected) for SPIN, TRL's (chosen, rejected), which the SPPO code kept, for the others."""
    cr, rr = out.chosen_rewards.detach(), out.rejected_rewards.detach()
    vals = torch.stack([loss.detach().float(), cr.mean(), rr.mean(), (cr - rr).mean(), (cr > rr).float().mean(),
                        pc.detach().mean(), pr.detach().mean()])
    vals = accelerator.reduce(vals, "mean").tolist()
    win, lose = ("real", "generated") if method == "spin" else ("chosen", "rejected")
    names = ["loss", f"rewards/{win}", f"rewards/{lose}", "rewards/margins", "rewards/accuracies",
             f"logps/{win}", f"logps/{lose}"]
    return dict(zip(names, vals))


def _save_checkpoint(accelerator: Any, ckpt: Path, state: dict[str, int]) -> None:
    """accelerate state + our counters, swapped in atomically so a kill never leaves half a checkpoint."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        write_json(tmp / "trainer_state.json", state)
        old = ckpt.with_name(ckpt.name + ".old")
        if ckpt.exists():
            ckpt.rename(old)
        tmp.rename(ckpt)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _finish(accelerator: Any, cfg: Config, policy: Any, tok: Any, out_dir: Path, state: dict[str, int],
            last: dict[str, float], n_cut: int, n_examples: int, total_steps: int) -> TrainResult:
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(policy)
    model_dir = out_dir / "model"
    next_model = model_dir
    if accelerator.is_main_process:
        for d in (model_dir, out_dir / "merged"):
            shutil.rmtree(d, ignore_errors=True)
        state_dict = accelerator.get_state_dict(policy)
        unwrapped.save_pretrained(model_dir, state_dict=state_dict, safe_serialization=True)
        tok.save_pretrained(model_dir)
        if cfg.model.lora.enabled and cfg.train.save_merged:
            merged = unwrapped.merge_and_unload()
            merged.save_pretrained(out_dir / "merged", safe_serialization=True)
            tok.save_pretrained(out_dir / "merged")
    if cfg.model.lora.enabled and cfg.train.save_merged:
        next_model = out_dir / "merged"
    summary = {"model_path": str(next_model), "steps": state["step"], "metrics": last,
               "examples": n_examples, "truncated": n_cut, "planned_steps": total_steps}
    if accelerator.is_main_process:
        write_json(out_dir / "summary.json", summary)
        shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)
    accelerator.wait_for_everyone()
    return TrainResult(next_model, state["step"], last)
