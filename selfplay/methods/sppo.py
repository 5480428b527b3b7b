"""SPPO / GPO training pairs from scored records (the rank stage's output).

Per prompt: chosen = the best sample, rejected = the worst, with targets p_w = mean_j P[w][j] and
p_l = mean_j P[l][j] (see :func:`selfplay.core.preference.select_pair`). SPPO regresses the
log-ratios onto (p − ½)/β; GPO uses the raw preference score in place of P:
s_i − s_j for score judges, S(i, j) − S(j, i) for GPM (as the GPM repo's GPO scripts do).
"""

from __future__ import annotations

from statistics import fmean
from typing import Any

from selfplay.core.preference import (
    PairChoice,
    score_differences,
    select_pair,
    skew_difference,
    symmetrize,
    win_prob_from_scores,
    win_prob_from_skew,
)
from selfplay.errors import ConfigError, DataError, UserError
from selfplay.methods.base import Method

METHODS = ("sppo", "gpo")


def preference_matrix(row: dict[str, Any], *, method: str = "sppo") -> list[list[float]]:
    """The [K][K] matrix the method learns from: P(i beats j) for SPPO, the raw score for GPO."""
    kind = row.get("win_matrix_kind", "prob")
    scores = row.get("scores")
    if scores is not None:
        return win_prob_from_scores(scores) if method == "sppo" else score_differences(scores)
    matrix = row.get("win_matrix")
    if matrix is None:
        raise DataError(f"scored record '{row.get('id')}' needs 'scores' or 'win_matrix'", field="win_matrix")
    if kind == "skew_score":
        return win_prob_from_skew(matrix) if method == "sppo" else skew_difference(matrix)
    if method == "gpo":
        raise UserError(f"method gpo needs raw preference scores (a gpm, reward-model, pairrm or verifier judge); "
                        f"record '{row.get('id')}' from judge '{row.get('judge')}' holds only win probabilities")
    return symmetrize(matrix)


def choose_pair(row: dict[str, Any], *, method: str = "sppo") -> PairChoice | None:
    """Winner/loser of one scored record and their targets; None when all samples are judged equal.

    Score judges pick by the scores themselves (the SPPO anchor's argmax/argmin of ``rm_scores``);
    matrix judges by the matrix's row means.
    """
    scores = row.get("scores")
    if scores is not None:
        return select_pair(scores, raw=method == "gpo")
    return select_pair(preference_matrix(row, method=method))


def build_sppo_pairs(scored_rows: list[dict[str, Any]], *, method: str = "sppo") -> tuple[list[dict], dict]:
    """Pair records ``{id, prompt, chosen, rejected, chosen_prob, rejected_prob}`` and statistics.

    ``chosen_prob``/``rejected_prob`` are p_w/p_l: mean win probabilities (SPPO) or mean raw scores
    (GPO), the mean over all K columns including the sample's own diagonal entry (DESIGN.md, SPPO
    anchor). Prompts whose samples are all judged equal are dropped and counted.
    Stats: pairs, dropped_all_equal, mean_p_w, mean_p_l, judge_errors.
    """
    if method not in METHODS:
        raise UserError(f"unknown pair method '{method}'; expected one of {', '.join(METHODS)}")
    pairs: list[dict] = []
    dropped = 0
    judge_errors = 0
    for row in scored_rows:
        samples = row.get("samples")
        if not isinstance(samples, list) or len(samples) < 2:
            raise DataError(f"scored record '{row.get('id')}' needs at least 2 samples", field="samples")
        judge_errors += int(row.get("errors", 0))
        choice = choose_pair(row, method=method)
        if choice is None:
            dropped += 1
            continue
        pairs.append({
            "id": str(row["id"]),
            "prompt": row["prompt_messages"],
            "chosen": samples[choice.winner],
            "rejected": samples[choice.loser],
            "chosen_prob": choice.p_winner,
            "rejected_prob": choice.p_loser,
        })
    stats = {
        "pairs": len(pairs),
        "dropped_all_equal": dropped,
        "mean_p_w": fmean(p["chosen_prob"] for p in pairs) if pairs else None,
        "mean_p_l": fmean(p["rejected_prob"] for p in pairs) if pairs else None,
        "judge_errors": judge_errors,
    }
    return pairs, stats


def _needs_k_samples(cfg: Any) -> None:
    if cfg.generate.n < 2:
        raise ConfigError(f"method '{cfg.method}' compares K samples per prompt: generate.n must be at least 2, "
                          f"got {cfg.generate.n}")


# The SPPO anchor's numbers (DESIGN.md); GPO and iterative DPO sample and rank the same way.
_RANKED_PRESET: dict[str, Any] = {"generate": {"n": 5, "temperature": 0.7, "top_p": 0.9},
                                  "train": {"beta": 1e-3, "lr": 5e-7, "epochs": 1.0},
                                  "loop": {"iters": 3, "disjoint_prompts": True, "mix_previous": False}}

SPPO = Method(
    name="sppo",
    summary="K samples per prompt against each other, squared loss to (P(win) - 1/2)/beta (arXiv 2405.00675)",
    collects="ranked",
    build=lambda rows, k, cfg: build_sppo_pairs(rows, method="sppo"),
    objective="preference",
    default_loss="sppo",
    preset=_RANKED_PRESET,
    check=_needs_k_samples,
)
GPO = Method(
    name="gpo",
    summary="as SPPO with a general preference model's raw skew-symmetric score (arXiv 2410.02197)",
    collects="ranked",
    build=lambda rows, k, cfg: build_sppo_pairs(rows, method="gpo"),
    objective="preference",
    default_loss="gpo",
    preset=_RANKED_PRESET,
    check=_needs_k_samples,
)
DPO = Method(
    name="dpo",
    summary="iterative DPO: the judge's best vs. worst of K samples, logistic loss (arXiv 2305.18290)",
    collects="ranked",
    build=lambda rows, k, cfg: build_sppo_pairs(rows, method="sppo"),
    objective="preference",
    default_loss="sigmoid",
    preset={**_RANKED_PRESET, "train": {"beta": 0.1, "lr": 5e-7, "epochs": 1.0}},
    check=_needs_k_samples,
)
