"""``selfplay loop``: data → (generate → [rank] → pairs → train → eval) × iterations, resumable.

Iteration k generates with model k−1 (the base model for k = 0), builds pairs, trains from model k−1
against itself as the reference, and evaluates the result on held-out prompts. Each unit of work is
recorded in ``state.json`` with a fingerprint of its inputs (see :mod:`selfplay.runs`), so a killed loop
rerun with the same command continues at the first unfinished unit and a changed input redoes only what
depends on it.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any

from selfplay.config import Config, for_iteration, save_config
from selfplay.core.memory import release_memory
from selfplay.errors import UserError
from selfplay.io import read_json, read_jsonl, write_jsonl
from selfplay.runs import RunState, fingerprint


def _prepare_data(cfg: Config, run: RunState) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Prepare ``data.source`` into run_dir/data once; returns (train records, held-out records, fingerprint)."""
    from selfplay.data.records import load_sft, prepare_source

    data_dir = run.dir / "data"
    fp = fingerprint(dataclasses.asdict(cfg.data))
    if not run.done("data", fp):
        run.begin("data", fp, [data_dir])
        source = Path(cfg.data.source)
        if source.is_dir() and (source / "train.jsonl").exists():
            data_dir = source  # already prepared: read it where it is
        else:
            prepare_source(cfg.data.source, data_dir, split=cfg.data.split, num=cfg.data.num, seed=cfg.data.seed,
                           test_size=cfg.data.eval_num, format=cfg.data.format, overwrite=True)
        run.finish("data", fp, {"dir": str(data_dir)})
    data_dir = Path(run.info("data")["dir"])
    train = load_sft(data_dir, "train")
    held_out = load_sft(data_dir, "test") if (data_dir / "test.jsonl").exists() else []
    if not held_out:  # no test split: hold out the tail of train
        held_out, train = train[-cfg.data.eval_num:], train[:-cfg.data.eval_num]
    return train, held_out[: cfg.data.eval_num], fp


def iteration_prompt_ids(cfg: Config, train: list[dict[str, Any]], k: int) -> list[str]:
    """Prompts of iteration k: all (SPIN's default), a fixed seeded subset, or disjoint slices (SPPO)."""
    ids = [r["id"] for r in train]
    n = cfg.loop.prompts_per_iter
    if n is None:
        return ids
    random.Random(cfg.data.seed).shuffle(ids)
    if cfg.loop.disjoint_prompts:
        if (k + 1) * n > len(ids):
            raise UserError(f"loop.disjoint_prompts needs {(k + 1) * n} prompts for iteration {k}, "
                            f"the data has {len(ids)}: lower loop.prompts_per_iter or add data.")
        return ids[k * n:(k + 1) * n]
    return ids[:n]


def _pairs_for_iteration(ck: Config, k: int, it_dir: Path, samples_path: Path, run: RunState,
                         gen_fp: str) -> tuple[Path, str, dict[str, Any]]:
    """Build this iteration's training pairs (method-specific); returns (pairs path, fingerprint, stats)."""
    method = ck.method
    own = it_dir / "train_data" / "own.jsonl"
    if method == "spin":
        from selfplay.methods.spin import build_spin_pairs

        pairs, stats = build_spin_pairs(read_jsonl(samples_path), k)
        upstream = gen_fp
    elif method in ("sppo", "gpo"):
        from selfplay.methods.sppo import build_sppo_pairs
        from selfplay.stages.rank import run_rank

        rank_path = it_dir / "rank.jsonl"
        rank_fp = fingerprint(gen_fp, dataclasses.asdict(ck.rank))
        if not run.done(f"iter_{k}/rank", rank_fp):
            run.begin(f"iter_{k}/rank", rank_fp, [rank_path])
            run_rank(ck, samples_path, rank_path)
            run.finish(f"iter_{k}/rank", rank_fp)
        pairs, stats = build_sppo_pairs(read_jsonl(rank_path), method=method)
        upstream = rank_fp
    else:
        raise UserError(f"selfplay loop supports methods spin, sppo and gpo; got '{method}'.")
    if not pairs:
        raise UserError(f"iteration {k} produced no training pairs ({stats}); check the data and generation settings.")
    write_jsonl(own, pairs)
    mixed = list(pairs)
    prev_own = it_dir.parent / f"iter_{k - 1}" / "train_data" / "own.jsonl"
    if method == "spin" and ck.loop.mix_previous and k > 0 and prev_own.exists():
        mixed += read_jsonl(prev_own)  # SPIN trains on this iteration's synthetic data plus the previous one's
    path = it_dir / "train_data" / "pairs.jsonl"
    write_jsonl(path, mixed)
    stats["train_pairs"] = len(mixed)
    return path, fingerprint(upstream, ck.loop.mix_previous, k), stats


def _train(ck: Config, model: str, pairs_path: Path, train_dir: Path) -> dict[str, Any]:
    """Train in this process, or under ``accelerate launch`` when ``launch.backend`` says so."""
    if ck.model.lora.enabled and not ck.train.save_merged:
        # The next iteration loads this model as a whole: a bare adapter cannot be its starting point.
        ck = dataclasses.replace(ck, train=dataclasses.replace(ck.train, save_merged=True))
    if ck.launch.backend == "accelerate":
        from selfplay.core.launchers import run_launched

        train_dir.mkdir(parents=True, exist_ok=True)
        launch_cfg = train_dir / "launch_config.yaml"
        save_config(dataclasses.replace(ck, launch=dataclasses.replace(ck.launch, backend="local")), launch_cfg)
        run_launched(ck.launch, ["--config", str(launch_cfg), "--model", model, "--data", str(pairs_path),
                                 "--out", str(train_dir)])
        return read_json(train_dir / "summary.json")
    from selfplay.stages.train import run_train

    r = run_train(ck, model, pairs_path, train_dir)
    return {"model_path": str(r.model_path), "steps": r.steps, "metrics": r.metrics}


def run_loop(cfg: Config) -> list[dict[str, Any]]:
    """Run (or resume) ``cfg.loop.iters`` iterations; returns the per-iteration metrics rows."""
    from selfplay.stages.evaluate import evaluate_model
    from selfplay.stages.generate import merge_shards, run_generate
    from selfplay.stages.report import print_iteration_table, write_report

    # The loop's method decides the training method (and so the default loss) of every iteration.
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, method=cfg.method))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    run = RunState(run_dir)
    train, held_out, data_fp = _prepare_data(cfg, run)
    model, model_fp = cfg.model.name_or_path, fingerprint(cfg.model.name_or_path, cfg.model.revision, data_fp)
    rows: list[dict[str, Any]] = []

    # SPPO/GPO with a scoring judge (not a verifier: accuracy covers those) also report its mean score.
    judge = cfg.rank.judge if cfg.method in ("sppo", "gpo") and not cfg.rank.judge.startswith("verifier") else None
    # Every evaluation samples with the run's base generate settings (not an iteration's schedule), so
    # the rows stay comparable.
    sampling = (cfg.generate.temperature, cfg.generate.top_p) if cfg.eval.num_samples else None
    eval_fp = fingerprint(model_fp, dataclasses.asdict(cfg.eval), cfg.generate.prompt_format, judge, sampling)
    base_dir = run_dir / "eval" / "base"
    if not run.done("eval/base", eval_fp):
        run.begin("eval/base", eval_fp, [base_dir])
        t0 = time.perf_counter()
        evaluate_model(cfg, model, held_out, base_dir, judge=judge)
        run.finish("eval/base", eval_fp, {"seconds": time.perf_counter() - t0})
    rows.append({"iteration": "base", **read_json(base_dir / "metrics.json"), **run.info("eval/base")})
    prev_eval = base_dir / "samples.jsonl"
    by_id = {r["id"]: r for r in train}

    for k in range(cfg.loop.iters):
        ck = for_iteration(cfg, k)
        # A fresh sampling seed per iteration: samples must not repeat the previous iteration's draws.
        ck = dataclasses.replace(ck, generate=dataclasses.replace(ck.generate, seed=ck.generate.seed + k))
        it_dir = run_dir / f"iter_{k}"
        ids = iteration_prompt_ids(ck, train, k)
        t0 = time.perf_counter()
        gen_dir, samples = it_dir / "generate", it_dir / "generate.jsonl"
        gen_fp = fingerprint(model_fp, dataclasses.asdict(ck.generate), ids, k)
        if not run.done(f"iter_{k}/generate", gen_fp):
            run.begin(f"iter_{k}/generate", gen_fp, [gen_dir, samples])
            prompts_file = it_dir / "prompts.jsonl"
            write_jsonl(prompts_file, (by_id[i] for i in ids))
            run_generate(ck, model, prompts_file, gen_dir)
            merge_shards(gen_dir, samples)
            release_memory()
            run.finish(f"iter_{k}/generate", gen_fp)

        pairs_path, pairs_fp, stats = _pairs_for_iteration(ck, k, it_dir, samples, run, gen_fp)
        train_fp = fingerprint(model_fp, pairs_fp, dataclasses.asdict(ck.train), dataclasses.asdict(ck.model.lora))
        train_dir = it_dir / "train"
        if not run.done(f"iter_{k}/train", train_fp):
            run.begin(f"iter_{k}/train", train_fp, [train_dir])
            result = _train(ck, model, pairs_path, train_dir)
            run.finish(f"iter_{k}/train", train_fp, {"model": str(result["model_path"]), "steps": result["steps"],
                                                      "metrics": result["metrics"], "pairs": stats})
        info = run.info(f"iter_{k}/train")
        model, model_fp = info["model"], train_fp
        train_seconds = time.perf_counter() - t0

        eval_dir = it_dir / "eval"
        eval_fp = fingerprint(model_fp, dataclasses.asdict(cfg.eval), cfg.generate.prompt_format, judge, sampling)
        if not run.done(f"iter_{k}/eval", eval_fp):
            run.begin(f"iter_{k}/eval", eval_fp, [eval_dir])
            t1 = time.perf_counter()
            evaluate_model(dataclasses.replace(ck, generate=cfg.generate), model, held_out, eval_dir,
                           previous=prev_eval, judge=judge)
            run.finish(f"iter_{k}/eval", eval_fp, {"seconds": time.perf_counter() - t1,
                                                    "iteration_seconds": train_seconds})
        prev_eval = eval_dir / "samples.jsonl"
        tm = info.get("metrics", {})
        rows.append({"iteration": k, **read_json(eval_dir / "metrics.json"), **run.info(f"iter_{k}/eval"),
                     "train_loss": tm.get("loss"), "train_reward_acc": tm.get("rewards/accuracies"),
                     "train_margin": tm.get("rewards/margins"), "pairs": info.get("pairs", {}).get("train_pairs"),
                     "steps": info.get("steps")})
        print_iteration_table(rows)
        write_report(run_dir, rows)  # after every iteration, so `eval compare` works on a run in progress
    if not cfg.loop.iters:
        write_report(run_dir, rows)
    return rows
