"""Per-prompt results of a held-out evaluation, and the interval statistics of a table row computed from them.

**File format** — ``per_prompt.jsonl`` beside an evaluation's ``metrics.json`` (the loop writes one per
evaluated model: ``eval/base/`` and ``iter_k/eval/``): one JSON object per held-out prompt,
``{"id": <the record's id>, <column>: <number>, ...}``. A column is absent (or null) where it does not
apply to that prompt (a RISE problem without a parsable gold answer, the SPIN margin of the base model).
The columns, and the table metric each one gives (its mean over prompts, except ``real_loglik``):

- ``accuracy``: verifier score of the greedy answer (0/1; partial credit with an F1 verifier) -> accuracy
- ``mean_score``: judge score of the greedy answer -> mean_score
- ``sample_accuracy``: mean verifier score of the n fresh samples -> sample_accuracy
- ``sample_score``: mean judge score of the n fresh samples -> sample_score
- ``real_logp``, ``real_tokens``: summed log-prob of the real answer's scored tokens, and their number ->
  real_loglik = Σ real_logp / Σ real_tokens (a ratio of sums)
- ``spin_margin``: the SPIN log-ratio margin against the previous iterate (iterations only) -> spin_margin
- ``mt_acc_t1``, ``mt_acc_tlast``, ``mt_oracle``, ``mt_majority``, ``mt_fixed``, ``mt_broken``, ``mt_pass_parallel``,
  ``mt_maj_parallel``
  (RISE, 0/1 per problem): turn 1 correct, turn T correct, some turn correct (oracle), the majority answer of
  the T turns correct, wrong at turn 1 and right at turn T, right at turn 1 and wrong at turn T, any of the n
  parallel samples correct, their majority answer correct
- ``agent_em`` (0/1), ``agent_f1``, ``agent_steps``, ``agent_finished`` (0/1): per episode

Intervals (:mod:`selfplay.evals.stats`): a proportion (``accuracy``, ``sample_accuracy``, ``mt_*``,
``agent_em``, ``agent_finished``) gets the Wilson interval when every per-prompt value is 0 or 1 (each
prompt one trial; with n samples per prompt, when all of a prompt's samples agree), otherwise — and for
every other metric — the percentile bootstrap over prompts, which keeps a prompt's samples or tokens
together. A row's ``stats[metric]["method"]`` says which was used. The tables show a "Δ … vs base" column
for the ``task`` metrics; every metric's paired change is in the rows' ``stats``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from selfplay.evals.stats import Interval, bootstrap_ratio, paired_bootstrap, proportion_interval

PER_PROMPT_FILE = "per_prompt.jsonl"

Table = Mapping[str, Mapping[str, Any]]  # prompt id -> {column: value}


@dataclass(frozen=True)
class MetricSpec:
    """How a table metric comes from per-prompt columns.

    ``kind``: ``proportion`` (mean of 0/1 values: Wilson, else bootstrap), ``mean`` (bootstrap of the mean),
    ``ratio`` (bootstrap of Σ column / Σ den). ``task``: a task metric, whose change vs the base model the
    tables show in their own column (the others' changes are in the rows' ``stats`` only).
    """

    kind: Literal["proportion", "mean", "ratio"]
    column: str
    den: str | None = None
    task: bool = False


def _p(column: str, task: bool = True) -> MetricSpec:
    return MetricSpec("proportion", column, task=task)


def _m(column: str, task: bool = True) -> MetricSpec:
    return MetricSpec("mean", column, task=task)


# Table metric -> spec. Adding a metric with per-prompt values is one entry here (plus writing its column).
METRICS: dict[str, MetricSpec] = {
    "real_loglik": MetricSpec("ratio", "real_logp", den="real_tokens"),
    "spin_margin": _m("spin_margin", task=False),
    "accuracy": _p("accuracy"),
    "mean_score": _m("mean_score"),
    "sample_accuracy": _p("sample_accuracy"),
    "sample_score": _m("sample_score"),
    **{key: _p(key) for key in ("mt_acc_t1", "mt_acc_tlast", "mt_oracle", "mt_majority", "mt_fixed", "mt_broken",
                                "mt_pass_parallel", "mt_maj_parallel")},
    "agent_em": _p("agent_em"),
    "agent_f1": _m("agent_f1"),
    "agent_steps": _m("agent_steps", task=False),
    "agent_finished": _p("agent_finished", task=False),
}


def write_per_prompt(path: Path, rows: dict[str, dict[str, Any]]) -> Path:
    """Write ``{id: {column: value}}`` as ``per_prompt.jsonl`` lines ``{"id", column: value, ...}``."""
    from selfplay.io import write_jsonl

    write_jsonl(path, ({"id": key, **values} for key, values in rows.items()))
    return path


def read_per_prompt(path: Path) -> dict[str, dict[str, Any]] | None:
    """``{id: {column: value}}`` from a ``per_prompt.jsonl``, or None when there is none (older runs)."""
    from selfplay.io import read_jsonl

    if not Path(path).is_file():
        return None
    return {str(row["id"]): {k: v for k, v in row.items() if k != "id"} for row in read_jsonl(path)}


def _values(spec: MetricSpec, table: Table) -> dict[str, tuple[float, float]]:
    """{id: (numerator, denominator)} for the prompts that have the metric's column(s)."""
    out: dict[str, tuple[float, float]] = {}
    for key, row in table.items():
        num = row.get(spec.column)
        den = row.get(spec.den) if spec.den else 1.0
        if num is not None and den is not None:
            out[key] = (float(num), float(den))
    return out


def metric_interval(metric: str, table: Table, **kw: Any) -> Interval | None:
    """The metric's value and 95% interval over the prompts of ``table``; None without values."""
    spec = METRICS[metric]
    values = _values(spec, table)
    if not values:
        return None
    nums = [v[0] for v in values.values()]
    if spec.kind == "proportion":
        return proportion_interval(nums, **kw)
    dens = [v[1] for v in values.values()] if spec.kind == "ratio" else None
    if dens is not None and sum(dens) == 0:
        return None
    return bootstrap_ratio(nums, dens, **kw)


def metric_delta(metric: str, table: Table, base: Table, **kw: Any) -> Interval | None:
    """Paired change ``table − base`` of the metric over the prompts both have; None when they share none."""
    spec = METRICS[metric]
    new, old = _values(spec, table), _values(spec, base)
    ids = [k for k in old if k in new]
    if not ids or sum(old[k][1] for k in ids) == 0 or sum(new[k][1] for k in ids) == 0:
        return None
    return paired_bootstrap([old[k][0] for k in ids], [new[k][0] for k in ids], [old[k][1] for k in ids],
                            [new[k][1] for k in ids], **kw)


def delta_fields(change: Interval | None) -> dict[str, Any]:
    """``{"delta", "delta_lo", "delta_hi", "significant"}`` of a paired change (all None without one)."""
    if change is None:
        return {"delta": None, "delta_lo": None, "delta_hi": None, "significant": None}
    return {"delta": change.estimate, "delta_lo": change.lo, "delta_hi": change.hi, "significant": change.significant}


def row_stats(table: Table, base: Table | None) -> dict[str, dict[str, Any]]:
    """A table row's ``stats``: for every metric with per-prompt values in ``table``,
    ``{"n", "lo", "hi", "method", "delta", "delta_lo", "delta_hi", "significant"}``, the delta fields being
    the paired change against ``base`` (None for the base row itself, ``base=None``)."""
    stats: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        level = metric_interval(metric, table)
        if level is None:
            continue
        change = metric_delta(metric, table, base) if base is not None else None
        stats[metric] = {**level.as_dict(), **delta_fields(change)}
    return stats


def attach_stats(rows: list[dict[str, Any]], tables: list[Table | None]) -> list[dict[str, Any]]:
    """Set ``row["stats"]`` on each row from its per-prompt table (``tables[i]`` for ``rows[i]``, the first
    being the base model's); rows without a table (evaluated before per-prompt files existed) get none."""
    base = tables[0] if tables else None
    for i, (row, table) in enumerate(zip(rows, tables, strict=True)):
        row.pop("stats", None)
        if table is not None:
            row["stats"] = row_stats(table, base if i > 0 else None)
    return rows
