"""``selfplay loop``: data → (collect → build → train → eval) × iterations, for any registered method.

Iteration k collects with model k−1 (the base model for k = 0) what its method asks for (samples, ranked
samples, multi-turn rollouts, ...; see :mod:`selfplay.stages.collect`), builds training records with the
method's builder, trains from model k−1 with the method's objective, and evaluates the result on
held-out prompts. Each unit of work is recorded in ``state.json`` with a fingerprint of its inputs (see
:mod:`selfplay.runs`), so a killed loop rerun with the same command continues at the first unfinished
unit and a changed input redoes only what depends on it. Nothing here knows a method by name.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import time
from pathlib import Path
from typing import Any

from selfplay.config import Config, for_iteration, save_config
from selfplay.core.objectives import get_objective
from selfplay.errors import ConfigError, UserError
from selfplay.io import read_json, read_jsonl, write_json, write_jsonl
from selfplay.methods import get_method
from selfplay.methods.base import Method
from selfplay.liveness import heartbeat
from selfplay.loop_stop import StopRule, final_path, final_text
from selfplay.progress import console
from selfplay.runs import RunState, fingerprint, output_lock
from selfplay.stages.collect import COLLECTORS, Iteration
from selfplay.trackers import MetricLogger, open_metric_logger, report_to


def validation_path(run_dir: Path) -> Path:
    """Where a run keeps its validation records (``data.val_num``)."""
    return Path(run_dir) / "data" / "val.jsonl"


def _prepare_data(cfg: Config, run: RunState) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Prepare ``data.source`` into run_dir/data once; returns (train records, held-out records, fingerprint).
    With ``data.val_num`` the validation records are set aside from the train records (:func:`_validation_split`)."""
    from selfplay.data.records import load_sft, prepare_source

    data_dir = run.dir / "data"
    # The validation split is taken after preparing (its own unit): val_num is not an input of the prepared data.
    settings = dataclasses.asdict(cfg.data)
    settings.pop("val_num")
    fp = fingerprint(settings)

    def work() -> dict[str, Any]:
        source = Path(cfg.data.source)
        if source.is_dir() and (source / "train.jsonl").exists():
            return {"dir": str(source)}  # already prepared: read it where it is
        prepare_source(cfg.data.source, data_dir, split=cfg.data.split, num=cfg.data.num, seed=cfg.data.seed,
                       test_size=cfg.data.eval_num, format=cfg.data.format, overwrite=True)
        return {"dir": str(data_dir)}

    prepared = Path(run.ensure("data", fp, [data_dir], work)["dir"])
    train = load_sft(prepared, "train")
    held_out = load_sft(prepared, "test") if (prepared / "test.jsonl").exists() else []
    if not held_out:  # no test split: hold out the tail of train
        held_out, train = train[-cfg.data.eval_num:], train[:-cfg.data.eval_num]
    if cfg.data.val_num:
        train = _validation_split(cfg, run, train, fp)
    return train, held_out[: cfg.data.eval_num], fp


def _validation_split(cfg: Config, run: RunState, train: list[dict[str, Any]], data_fp: str) -> list[dict[str, Any]]:
    """Set ``data.val_num`` of the train records aside for the evaluation inside iterations (train.eval_every)
    and checkpoint selection (loop.select); returns the train records left, in their order.

    A seeded sample of the records left after the held-out split, so never a held-out prompt; and no iteration
    trains on them, since every iteration's prompts come from what is returned. Written to data/val.jsonl (its
    own unit): the split is fixed for the run, and a tool can read it.
    """
    n = cfg.data.val_num
    if n >= len(train):
        raise UserError(f"data.val_num {n} leaves no training prompts: the data has {len(train)} training records "
                        f"after the {cfg.data.eval_num} held-out ones; lower data.val_num or add data.")
    chosen = set(random.Random(f"validation-{cfg.data.seed}").sample(range(len(train)), n))
    path = validation_path(run.dir)

    def work() -> dict[str, Any]:
        write_jsonl(path, [r for i, r in enumerate(train) if i in chosen])
        return {"records": n}

    run.ensure("data/val", fingerprint(data_fp, n), [path], work)
    return [r for i, r in enumerate(train) if i not in chosen]


def write_final(run_dir: Path, final: dict[str, Any]) -> None:
    """``eval/final.json``: the run's result under ``loop.stop_patience`` (the best model on validation)."""
    write_json(final_path(run_dir), final)


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


def _training_records(method: Method, it: Iteration, collected_path: Path, collected_fp: str,
                      write: bool = True) -> tuple[Path, str, dict[str, Any]]:
    """Build the iteration's training records with the method's builder (plus the previous iteration's, for
    methods that mix them in); returns (records path, fingerprint, stats). ``write=False`` (the other machines
    of a multi-node run): only the path and fingerprint; the main machine writes the records."""
    mix = method.mixes_previous and it.cfg.loop.mix_previous
    kind = get_objective(method.objective).record_kind
    path = it.dir / "train_data" / ("pairs.jsonl" if kind == "pair" else "examples.jsonl")
    fp = fingerprint(collected_fp, mix, it.k, method.name)
    if not write:
        return path, fp, {}
    records, stats = method.build(read_jsonl(collected_path), it.k, it.cfg)
    if not records:
        raise UserError(f"iteration {it.k} produced no training records ({stats}); "
                        "check the data and generation settings.")
    own = it.dir / "train_data" / "own.jsonl"
    write_jsonl(own, records)
    mixed = list(records)
    prev_own = it.dir.parent / f"iter_{it.k - 1}" / "train_data" / "own.jsonl"
    if mix and it.k > 0 and prev_own.exists():
        mixed += read_jsonl(prev_own)
    write_jsonl(path, mixed)
    stats["train_records"] = len(mixed)
    return path, fp, stats


def _train_inputs(ck: Config, data_fp: str) -> list[Any]:
    """What an iteration's training depends on besides its model and records: the train and LoRA settings and,
    with evaluation inside the iteration, its settings and validation prompts. Those join only when evaluation
    is on, so runs made before they existed keep their fingerprints (and are not trained again). Likewise
    ``train.lean_activations`` joins only when turned off: on (the default) it changes gradients by rounding only;
    ``train.mmap_threshold`` never (memory and time only)."""
    train = dataclasses.asdict(ck.train)
    every = train.pop("eval_every")
    train.pop("mmap_threshold")
    if not train.pop("lean_activations"):
        train["lean_activations"] = False
    inputs: list[Any] = [train, dataclasses.asdict(ck.model.lora)]
    if every:
        loop = ck.loop
        inputs.append({"eval_every": every, "select": loop.select, "select_metric": loop.select_metric,
                       "patience": loop.patience, "validation": fingerprint(data_fp, ck.data.val_num),
                       "eval": [ck.eval.task, ck.eval.max_new_tokens, ck.eval.batch_size],
                       "prompt_format": ck.generate.prompt_format})
    return inputs


def _eval_judge(cfg: Config, method: Method) -> str | None:
    """The judge whose mean score the evaluation reports: ``eval.judge``, else the rank judge of a method that
    ranks samples (unless it is a verifier: accuracy reports that already)."""
    from selfplay.judges import checks_reference

    if cfg.eval.judge:
        return cfg.eval.judge
    if method.collects == "ranked" and not checks_reference(cfg.rank.judge):
        return cfg.rank.judge
    return None


def run_loop(cfg: Config) -> list[dict[str, Any]]:
    """Run (or resume) ``cfg.loop.iters`` iterations (0: evaluate the base model only); returns the
    per-iteration metrics rows.

    The run directory is locked for the whole run: a second loop on it (a rerun started too early) is
    refused at once, naming this one. A run directory this call creates is removed again when the data
    cannot be prepared (the first unit): a mistake in the inputs leaves no output behind.
    """
    from selfplay.models import resolve_model
    from selfplay.stages.parallel import is_main_machine

    method = get_method(cfg.method)
    if not method.iterates:
        raise ConfigError(f"method '{method.name}' trains a judge once: run `selfplay train --method {method.name}`, "
                          "then use the checkpoint as rank.judge in a loop (e.g. --set rank.judge=gpm:PATH)")
    evaluating = [k for k in range(cfg.loop.iters) if for_iteration(cfg, k).train.eval_every]
    if evaluating and not cfg.data.val_num:
        raise ConfigError(f"train.eval_every evaluates inside iteration {evaluating[0]} on validation prompts: set "
                          "data.val_num (e.g. 32) to set them aside from the training records")
    if cfg.loop.stop_patience and not cfg.data.val_num:
        raise ConfigError(f"loop.stop_patience {cfg.loop.stop_patience} stops the loop when the validation metric stops "
                          "improving: set data.val_num (e.g. 64) to set validation prompts aside from the training records")
    resolve_model(cfg.model.name_or_path, cfg.model.revision)  # a bad model fails before any output exists
    run_dir = Path(cfg.run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    # Multi-node: every machine runs this loop; the main one keeps the books (config, state, merges, evals,
    # reports) and holds the run directory's lock, the others follow state.json and do their share of
    # sampling and training (selfplay.runs.RunState, follower).
    main = is_main_machine(cfg)
    launch = cfg.launch
    # Multi-node: every machine beats in run_dir/.machines/, and waits for another stop when it stops.
    with output_lock(run_dir, "loop", enabled=main), \
            heartbeat(run_dir, launch.machine_rank, launch.num_machines, launch.heartbeat_timeout):
        run = RunState(run_dir, follower=not main)
        try:
            train, held_out, data_fp = _prepare_data(cfg, run)
        except UserError:
            if created and main:  # nothing of this run exists yet but the directory we made: take it back
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        if main:
            save_config(cfg, run_dir / "config.yaml")
        return _iterate(cfg, method, run, train, held_out, data_fp, main)


def _iteration_logger(cfg: Config, run_dir: Path) -> MetricLogger:
    """The per-iteration rows' logger: ``eval/metrics.jsonl`` and the ``report_to`` trackers (their files under
    ``trackers/``). Step 0 is the base model, step k + 1 iteration k."""
    logger = open_metric_logger(run_dir / "eval" / "metrics.jsonl", report_to(cfg),
                                project=f"selfplay-{run_dir.name}", logging_dir=run_dir / "trackers")
    logger.log_config(cfg)
    return logger


def _iterate(cfg: Config, method: Method, run: RunState, train: list[dict[str, Any]], held_out: list[dict[str, Any]],
             data_fp: str, main: bool) -> list[dict[str, Any]]:
    """The base evaluation and the iterations (:func:`_iterations`), with the metric logger of the main machine."""
    logger = _iteration_logger(cfg, run.dir) if main else None
    try:
        return _iterations(cfg, method, run, train, held_out, data_fp, main, logger)
    finally:
        if logger is not None:
            logger.close()


def _iterations(cfg: Config, method: Method, run: RunState, train: list[dict[str, Any]],
                held_out: list[dict[str, Any]], data_fp: str, main: bool,
                logger: MetricLogger | None) -> list[dict[str, Any]]:
    """The base evaluation and the iterations, each unit skipped when done for its inputs. A row whose
    evaluation ran in this call goes to ``logger`` (a resumed run does not log its finished rows again)."""
    from selfplay.core.losses import loss_note
    from selfplay.data.records import load_sft
    from selfplay.methods import loss_of
    from selfplay.model_card import add_evaluation
    from selfplay.model_meta import kept_text
    from selfplay.stages.evaluate import evaluate_model
    from selfplay.stages.report import iteration_eval_dir, print_iteration_table, with_stats, write_report
    from selfplay.stages.train import train_stage

    run_dir = run.dir
    notes = tuple(n for n in [loss_note(loss_of(cfg), cfg.train.beta)] if n)  # under the iteration table
    fresh: set[str] = set()  # eval units that ran in this call
    model, model_fp = cfg.model.name_or_path, fingerprint(cfg.model.name_or_path, cfg.model.revision, data_fp)
    judge = _eval_judge(cfg, method)
    # Every evaluation samples with the run's base generate settings (not an iteration's schedule), so
    # the rows stay comparable.
    sampling = (cfg.generate.temperature, cfg.generate.top_p) if cfg.eval.num_samples else None
    # The SPIN margin where the method reports it (every evaluation then keeps the answer log-probs the next one
    # compares with). An evaluation without it is another input (the fingerprint says so): a later run with the
    # margin must not take it for one with the answer log-probs.
    eval_inputs = (dataclasses.asdict(cfg.eval), cfg.generate.prompt_format, judge, sampling, method.evaluations,
                   *([] if method.margin else ["no margin"]))

    def evaluate(unit: str, model_path: str, fp: str, out_dir: Path, previous: Path | None, extra: dict,
                 records: list[dict[str, Any]] = held_out) -> dict:
        def work() -> dict[str, Any]:
            t0 = time.perf_counter()
            evaluate_model(cfg, model_path, records, out_dir, previous=previous, judge=judge,
                           evaluations=method.evaluations, margin=method.margin)
            fresh.add(unit)
            return {"seconds": time.perf_counter() - t0, **extra}

        if records is not held_out:  # the validation split: its own records in the fingerprint
            fp = fingerprint(fp, "validation", data_fp, cfg.data.val_num)
        info = run.ensure(unit, fingerprint(fp, *eval_inputs), [out_dir], work)
        return {**(read_json(out_dir / "metrics.json") if (out_dir / "metrics.json").exists() else {}), **info}

    # loop.stop_patience: every model also answers the validation split, and the loop stops when it stops improving.
    stop = (StopRule(cfg.loop.stop_metric, cfg.loop.stop_patience, method.target_metric)
            if cfg.loop.stop_patience else None)
    if stop is None and main:  # a rerun without the stop: an earlier run's result no longer describes this one
        final_path(run_dir).unlink(missing_ok=True)
    # (The file exists once data/val is done; `selfplay status` may plan a run whose split is not written yet.)
    validation = load_sft(validation_path(run_dir), "val") if stop and validation_path(run_dir).is_file() else []
    models: dict[str | int, str] = {"base": model}

    def validate(iteration: str | int, unit: str, model_path: str, fp: str, out_dir: Path) -> None:
        """The validation evaluation of one model into ``stop`` and its row (``validation``); a unit not run
        yet (``selfplay status`` plans without running) adds nothing."""
        metrics = evaluate(unit, model_path, fp, out_dir, None, {}, records=validation)
        if stop is not None and "real_loglik" in metrics:
            rows[-1]["validation"] = stop.add(iteration, metrics)

    base_dir = iteration_eval_dir(run_dir, "base")
    rows: list[dict[str, Any]] = [{"iteration": "base", **evaluate("eval/base", model, model_fp, base_dir, None, {})}]
    if stop is not None:
        validate("base", "val/base", model, model_fp, run_dir / "val" / "base")
    if logger is not None and "eval/base" in fresh:
        logger.log(rows[0], step=0)
    stopped_after: int | None = None
    prev_eval = base_dir / "samples.jsonl"
    by_id = {r["id"]: r for r in train}

    for k in range(cfg.loop.iters):
        ck = for_iteration(cfg, k)
        # A fresh sampling seed per iteration: samples must not repeat the previous iteration's draws.
        ck = dataclasses.replace(ck, generate=dataclasses.replace(ck.generate, seed=ck.generate.seed + k))
        it = Iteration(k, ck, run_dir / f"iter_{k}", run, model, model_fp,
                       [by_id[i] for i in iteration_prompt_ids(ck, train, k)])
        t0 = time.perf_counter()
        collected = COLLECTORS[method.collects](it)
        data_path, data_fp_k, stats = _training_records(method, it, collected.path, collected.fp, write=main)
        train_fp = fingerprint(model_fp, data_fp_k, *_train_inputs(ck, data_fp))
        val_path = validation_path(run_dir) if ck.train.eval_every else None
        if ck.model.lora.enabled and not ck.train.save_merged:
            # The next iteration loads this model as a whole: a bare adapter cannot be its starting point.
            ck = dataclasses.replace(ck, train=dataclasses.replace(ck.train, save_merged=True))
        train_dir = it.dir / "train"

        def train_work() -> dict[str, Any]:
            r = train_stage(ck, model, data_path, train_dir, val_path)
            return {"model": str(r.model_path), "steps": r.steps, "metrics": r.metrics, "pairs": stats,
                    **({"kept": r.kept} if r.kept else {})}

        info = run.ensure(f"iter_{k}/train", train_fp, [train_dir], train_work, every_machine=True)
        model, model_fp = info["model"], train_fp
        eval_dir = iteration_eval_dir(run_dir, k)
        metrics = evaluate(f"iter_{k}/eval", model, model_fp, eval_dir, prev_eval,
                           {"iteration_seconds": time.perf_counter() - t0})
        prev_eval = eval_dir / "samples.jsonl"
        tm = info.get("metrics", {})
        rows.append({"iteration": k, **metrics, "train_loss": tm.get("loss"),
                     "train_reward_acc": tm.get("rewards/accuracies"), "train_margin": tm.get("rewards/margins"),
                     "pairs": info.get("pairs", {}).get("train_records"), "steps": info.get("steps")})
        if isinstance(info.get("kept"), dict):  # loop.select: best: which evaluation inside the iteration
            rows[-1]["kept"] = kept_text(info["kept"])
        models[k] = model
        if stop is not None:
            validate(k, f"iter_{k}/val", model, model_fp, it.dir / "val")
        if logger is not None and f"iter_{k}/eval" in fresh:
            logger.log(rows[-1], step=k + 1)
        decided = stop is not None and len(stop.values) == k + 2  # base + every iteration evaluated on validation
        if decided and stop.should_stop() and k + 1 < cfg.loop.iters:
            stopped_after = k
        if main:
            with_stats(run_dir, rows)  # intervals and paired changes vs base, from the per-prompt files
            add_evaluation(train_dir, k, rows[-1])  # the iteration's held-out metrics into its model cards
            if decided:
                write_final(run_dir, stop.final(models, stopped_after, cfg.loop.iters))
            print_iteration_table(rows, method.columns, notes=notes)
            write_report(run_dir, rows, method.columns, notes)  # after every iteration: `eval compare` reads it
        if stopped_after is not None:
            console.print(final_text(stop.final(models, stopped_after, cfg.loop.iters)), highlight=False)
            break
    if not cfg.loop.iters and main:
        if stop is not None and stop.values:
            write_final(run_dir, stop.final(models, None, 0))
        write_report(run_dir, with_stats(run_dir, rows), method.columns, notes)
    return rows
