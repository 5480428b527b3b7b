"""The generate stage: ``generate.n`` samples per SFT prompt into resumable shards (:mod:`selfplay.stages.shards`).

Each shard file holds sample sets ``{id, prompt_messages, reference, samples, finish_reasons, sampler}``, one
line per finished prompt; :func:`selfplay.stages.shards.merge_shards` joins them into data order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfplay.config import Config
from selfplay.core.samplers import batch_size_for
from selfplay.io import JsonlAppender
from selfplay.stages.shards import ShardJob, ShardPlan, load_sampler, open_shard, with_one_sampler


def run_generate(cfg: Config, model: str, data: str | Path, out_dir: Path, *, split: str = "train",
                 shard: tuple[int, int] | None = None, ids: list[str] | None = None,
                 sampler: Any | None = None) -> Path:
    """Generate ``cfg.generate.n`` samples per prompt of one shard into ``out_dir``; returns the shard file.

    ``shard=(K, F)`` overrides the ``generate.data_frac/num_fracs/frac_len`` settings; ``ids`` restricts
    the prompts (in the given order); ``sampler`` reuses a loaded backend instead of loading ``model``.
    Rerunning with the same settings skips the prompts already in the shard file.
    """
    sampler_info = generation_info(cfg, model)
    with open_shard(cfg, model, data, out_dir, sampler_info, split=split, shard=shard, ids=ids,
                    check_model=sampler is None) as plan:
        if plan.todo:
            _sample_into(plan, cfg, model, sampler, sampler_info)
    return plan.path


# Prompts handed to the sampler at a time. The sampler tokenizes its prompts up front, sorts them by length
# and returns every completion at the end, so one call over a whole shard held all of that for every prompt
# (~14 KB per UltraChat prompt with a tiny model). Chunks keep it bounded; every sample is seeded by (seed,
# prompt, index), so chunking changes no sample, and many batches per chunk keep the length sorting useful.
SAMPLE_CHUNK_BATCHES, SAMPLE_CHUNK_MIN = 16, 256


def _sample_into(plan: ShardPlan, cfg: Config, model: str, sampler: Any, sampler_info: dict[str, Any]) -> None:
    """Sample the shard's remaining prompts chunk by chunk, appending each record as its prompt finishes."""
    from selfplay.core.samplers import format_prompt, generation_progress
    from selfplay.progress import console

    g = cfg.generate
    sampler = sampler or load_sampler(cfg, model, plan.label)
    todo = plan.todo
    chunk = max(SAMPLE_CHUNK_MIN, batch_size_for(g.batch_size) * SAMPLE_CHUNK_BATCHES)

    with JsonlAppender(plan.path) as out, generation_progress(len(todo), description=plan.label) as bar:
        for start in range(0, len(todo), chunk):
            records = todo[start:start + chunk]
            prompts = [format_prompt(sampler.tokenizer, r["messages"], g.prompt_format) for r in records]

            def write_record(i: int, completions: list[Any], records: list[dict[str, Any]] = records) -> None:
                record = records[i]
                row = {"id": record["id"], "prompt_messages": record["messages"],
                       "reference": record.get("reference"), "samples": [c.text for c in completions],
                       "finish_reasons": [c.finish_reason for c in completions], "sampler": sampler_info}
                if record.get("meta"):
                    row["meta"] = record["meta"]
                out.write(row)

            sampler.complete(prompts, n=g.n, temperature=g.temperature, top_p=g.top_p,
                             max_new_tokens=g.max_new_tokens, seed=g.seed, stop=g.stop or None,
                             on_result=write_record, progress=bar)
    console.print(f"{plan.label}: wrote {len(todo)} prompts x {g.n} samples to {plan.path}")


def generation_info(cfg: Config, model: str) -> dict[str, Any]:
    """The sampler settings every record of a generate directory must share (checked on resume)."""
    g = cfg.generate
    info = {"backend": g.backend, "model": model, "temperature": g.temperature, "top_p": g.top_p,
            "max_new_tokens": g.max_new_tokens, "seed": g.seed, "n": g.n, "prompt_format": g.prompt_format}
    if g.stop:
        info["stop"] = list(g.stop)
    return info


def generate_shards(cfg: Config, job: ShardJob, shards: list[int], num_shards: int) -> None:
    """Generate shards ``shards`` of ``num_shards`` of ``job`` in this process, with one sampler for all of them."""
    with_one_sampler(cfg, job.model, "generate", shards, num_shards, lambda shard, sampler: run_generate(
        cfg, job.model, job.data, job.out, split=job.split, shard=shard, sampler=sampler))
