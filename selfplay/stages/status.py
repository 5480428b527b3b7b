"""Where a run directory stands (``selfplay status RUN_DIR``): what is done, what runs, what a rerun will do.

The loop's own code computes the answer: :func:`plan_run` runs the loop's data and iteration code with a
:class:`PlanState` in place of the run's :class:`~selfplay.runs.RunState`. It does no work and writes
nothing; at every unit it records the fingerprint the loop would compute from the config and compares it
with the one ``state.json`` holds. So "stale" means exactly what a rerun would redo, with no second copy
of the fingerprint rules to drift from the loop's. The config is the run's saved ``config.yaml`` unless
another one is given (``--config``/``--set``, as for the rerun being considered).

A unit is ``done`` (a rerun skips it), ``resume`` (started, inputs unchanged: a rerun continues inside
it, keeping what was written; ``running`` while the run's lock is held), ``stale`` (recorded for other
inputs: a rerun deletes its outputs and redoes it), ``todo`` (never started) or ``unused`` (in state.json
but not part of this config, e.g. iterations beyond ``loop.iters``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfplay.io import iter_jsonl, read_json
from selfplay.model_meta import kept_text
from selfplay.runs import RunState, lock_holder, prepared_data_dir

WHAT_A_RERUN_DOES = {"done": "skips it", "resume": "continues it, keeping what was written",
                     "running": "waits: another process runs it now", "stale": "deletes its outputs and redoes it",
                     "todo": "runs it", "unused": "leaves it (not part of this config)"}


class _Pending(dict):
    """The info of a unit that has not run: any key reads as a placeholder (e.g. the model it would train)."""

    def __missing__(self, key: str) -> str:
        return f"<{key} of a unit not run yet>"


class PlanState(RunState):
    """A RunState that runs nothing and writes nothing: it records each unit the loop visits, with the
    fingerprint the loop computes for it, against what state.json holds."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir, follower=True)  # a follower writes no books (prompts, records, reports)
        self.plan: list[dict[str, Any]] = []

    def ensure(self, unit: str, fp: str, outputs: list[Path], work: Any, *, every_machine: bool = False) -> dict:
        rec = self.units.get(unit)
        state = ("todo" if rec is None else "stale" if rec.get("fingerprint") != fp
                 else "done" if rec.get("done") else "resume")
        self.plan.append({"unit": unit, "state": state, "fingerprint": fp,
                          "recorded_fingerprint": rec.get("fingerprint") if rec else None,
                          "resources": self.resources(unit) if state == "done" else {}})
        info = _Pending(rec.get("info", {}) if state == "done" else {})
        if unit == "data" and state == "done":  # recorded relative to where the loop ran
            found = prepared_data_dir(self.dir)
            if found is not None:
                info["dir"] = str(found)
        return info

    def _save(self) -> None:
        raise RuntimeError("selfplay status never writes state.json")


def plan_run(cfg: Any, run_dir: Path) -> list[dict[str, Any]]:
    """Every unit the loop would visit with ``cfg`` on ``run_dir``, in order, with its state."""
    from selfplay.errors import UserError
    from selfplay.methods import get_method
    from selfplay.stages.loop import _iterate, _prepare_data

    state = PlanState(run_dir)
    after_data = "unused"
    try:
        train, held_out, data_fp = _prepare_data(cfg, state)
    except UserError:
        if not state.plan or state.plan[-1]["state"] == "done":
            raise  # the prepared data is there but unreadable: say so
        # Data to prepare (again): every later fingerprint depends on it, so every later unit is redone.
        after_data = "stale"
    else:
        _iterate(cfg, get_method(cfg.method), state, train, held_out, data_fp, main=False)
    seen = {p["unit"] for p in state.plan}
    for unit, rec in state.units.items():
        if unit not in seen:
            k = unit.split("/")[0].removeprefix("iter_")
            beyond = k.isdigit() and int(k) >= cfg.loop.iters
            state.plan.append({"unit": unit, "state": "unused" if beyond else after_data, "fingerprint": None,
                               "recorded_fingerprint": rec.get("fingerprint"), "resources": {}})
    if after_data == "stale" and not any(p["state"] == "stale" for p in state.plan[1:]):
        state.plan.append({"unit": "(every unit after the data)", "state": "todo", "fingerprint": None,
                           "recorded_fingerprint": None, "resources": {}})
    return state.plan


def _count_lines(paths: list[Path]) -> int:
    return sum(p.read_bytes().count(b"\n") for p in paths if p.is_file())


def unit_detail(run_dir: Path, unit: str, state: str) -> str:
    """What is on disk of a unit: records written of its shards, the training checkpoint of a started one."""
    run_dir = Path(run_dir)
    parts = unit.split("/")
    if len(parts) != 2 or not parts[0].startswith("iter_"):
        return ""
    it_dir, stage = run_dir / parts[0], parts[1]
    if stage == "train":
        if state == "done":  # with loop.select: best, which evaluation's weights it kept
            summary = it_dir / "train" / "summary.json"
            kept = read_json(summary).get("kept") if summary.is_file() else None
            return f"kept {kept_text(kept)}" if kept else ""
        ckpt = it_dir / "train" / "checkpoint" / "trainer_state.json"
        if ckpt.is_file():
            saved = read_json(ckpt)
            best = saved.get("best")  # evaluation inside the iteration: the best so far
            return f"checkpoint at optimizer step {saved.get('step')}" + (
                f"; best evaluation so far at step {best['step']} ({best['value']:.4g})" if best else "")
        return "no checkpoint yet" + (" (reference log-probs kept)" if (it_dir / "train" / "ref_logps.jsonl").is_file()
                                      else "")
    shards = sorted((it_dir / stage).glob("shard-*.jsonl"))
    if not shards:
        return ""
    prompts = _count_lines([it_dir / "prompts.jsonl"])
    of = f" of {prompts}" if prompts else ""
    return f"{_count_lines(shards)}{of} records in {len(shards)} shard(s)"


def run_status(run_dir: Path, cfg: Any | None = None) -> dict[str, Any]:
    """The status of ``run_dir`` as a JSON-able dict (what ``selfplay status`` prints)."""
    from selfplay.errors import UserError

    run_dir = Path(run_dir)
    if not (run_dir / "state.json").is_file():
        raise UserError(f"{run_dir}: no state.json — not a `selfplay loop` run directory (or nothing has run yet)")
    config_note = "the config given"
    if cfg is None:
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir}: no config.yaml; pass the run's --config to compute what a rerun does")
        from selfplay.methods import load_config

        cfg, config_note = load_config(run_dir / "config.yaml"), "the run's saved config.yaml"
    holder = lock_holder(run_dir)
    units = plan_run(cfg, run_dir)
    for u in units:
        if u["state"] == "resume" and holder is not None:
            u["state"] = "running"
        u["detail"] = unit_detail(run_dir, u["unit"], u["state"]) if u["state"] in ("resume", "running", "done") else ""
        u["rerun"] = WHAT_A_RERUN_DOES[u["state"]]
    current = next((u for u in units if u["state"] not in ("done", "unused")), None)
    rows_path = run_dir / "eval" / "iterations.jsonl"
    rows = list(iter_jsonl(rows_path, tolerate_torn_tail=True)) if rows_path.is_file() else []
    counts = {s: sum(1 for u in units if u["state"] == s) for s in WHAT_A_RERUN_DOES}
    return {
        "run_dir": str(run_dir), "method": cfg.method, "iterations": cfg.loop.iters, "config": config_note,
        "lock": holder, "current": _where(current), "counts": {k: v for k, v in counts.items() if v},
        "rerun": _rerun_summary(units, holder), "units": units, "last_row": rows[-1] if rows else None,
        "peak_unit": peak_unit(units),
    }


def peak_unit(units: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The done unit with the largest peak memory (its own process or a child's): the one that sets the run's peak."""
    def peak(u: dict[str, Any]) -> float:
        res = u.get("resources") or {}
        return max(res.get("peak_rss_mb", 0.0), res.get("children_peak_rss_mb", 0.0))

    measured = [u for u in units if peak(u) > 0]
    if not measured:
        return None
    top = max(measured, key=peak)
    return {"unit": top["unit"], "peak_rss_mb": peak(top)}


def cost_text(resources: dict[str, float]) -> str:
    """``12.3 s, 2.41 GiB`` (``workers 1.90 GiB`` where child processes did the work); empty if not recorded."""
    if not resources:
        return ""
    parts = [f"{resources['seconds']:.1f} s"] if "seconds" in resources else []
    if "peak_rss_mb" in resources:
        parts.append(f"{resources['peak_rss_mb'] / 1024:.2f} GiB")
    if "children_peak_rss_mb" in resources:
        parts.append(f"workers {resources['children_peak_rss_mb'] / 1024:.2f} GiB")
    return ", ".join(parts)


def _where(unit: dict[str, Any] | None) -> dict[str, Any] | None:
    if unit is None:
        return None
    name = unit["unit"]
    head, _, stage = name.partition("/")
    iteration = int(head.removeprefix("iter_")) if head.startswith("iter_") else ("base" if name in ("eval/base", "val/base") else None)
    return {"unit": name, "iteration": iteration, "stage": stage or name, "state": unit["state"]}


def _rerun_summary(units: list[dict[str, Any]], holder: dict[str, Any] | None) -> str:
    if holder is not None:
        return (f"refused while PID {holder.get('pid')} ({holder.get('command', '?')}) holds the run; "
                "once it ends, a rerun continues where it stopped")
    todo = [u for u in units if u["state"] in ("resume", "stale", "todo")]
    if not todo:
        return "nothing: every unit is done for these inputs"
    first = todo[0]
    verb = {"resume": "continues", "stale": "redoes (inputs changed)", "todo": "starts"}[first["state"]]
    stale = sum(1 for u in todo[1:] if u["state"] == "stale")
    return (f"{verb} {first['unit']}, then {len(todo) - 1} more unit(s)"
            + (f"; {stale} of them stale (outputs deleted, redone)" if stale else "")
            + f"; skips {sum(1 for u in units if u['state'] == 'done')} done")
