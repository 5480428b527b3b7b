"""Confidence intervals for held-out metrics: is a number, or a change between two models, larger than its noise?

Every metric the tables report is an average over prompts (held-out problems, episodes). Its 95% interval:

* **Wilson score interval** for a proportion whose per-prompt values are all 0 or 1 (greedy accuracy, RISE's
  acc@t / oracle@t / majority@t / pass@n / maj@n, agent EM and share finished). It needs only the count of
  successes and n, stays inside [0, 1], and unlike the normal approximation is not a zero-width [0, 0] when
  no prompt is solved (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it for small n).
* **Percentile bootstrap over prompts** for everything else: a mean of per-prompt values (accuracy of n
  samples per prompt, judge scores, SPIN margins, agent F1 and steps) or a **ratio of sums** (the per-token
  log-likelihood of the real answers, Σ log p / Σ tokens over prompts: prompts are resampled whole, so
  long answers keep their weight). A mean is the ratio with every denominator 1.
* **Paired bootstrap** for a change between two models evaluated on the same prompts: the prompts both have
  (matched by id) are resampled together and the statistic of B minus that of A is taken on each resample,
  so the prompt-to-prompt spread that both share cancels (Efron & Tibshirani 1993, ch. 16). A change is
  ``significant`` iff its interval excludes 0; identical results give exactly [0, 0].

Resampling is seeded (``seed``, default 0) and done in fixed-size chunks, so an interval is the same on every
run and machine. Hand-written with numpy rather than ``scipy.stats.bootstrap``: scipy is not a dependency of
selfplay (its wheel would add ~40 MB to the install the quickstart times include), the percentile bootstrap
is a few vectorised lines, and matching prompts by id and ratio-of-sums statistics need code around scipy's
call anyway. The tests check this implementation against scipy's where scipy is installed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 0
# Index draws per chunk (resamples x prompts): bounds memory at ~16 MB whatever the number of prompts.
_CHUNK_ELEMENTS = 2_000_000

Method = Literal["wilson", "bootstrap"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval over ``n`` prompts."""

    estimate: float
    lo: float
    hi: float
    n: int
    method: Method

    @property
    def significant(self) -> bool:
        """For a difference: whether the interval excludes 0 (see :func:`significant`)."""
        return significant(self.lo, self.hi)

    def as_dict(self) -> dict[str, float | int | str]:
        """``{"n", "lo", "hi", "method"}``: the interval part of a table row's ``stats`` entry."""
        return {"n": self.n, "lo": self.lo, "hi": self.hi, "method": self.method}


def significant(lo: float, hi: float) -> bool:
    """The verdict on a change: significant iff its interval excludes 0 (an interval touching 0 does not)."""
    return bool(lo > 0 or hi < 0)


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided standard normal quantile: 1.959964 for 95%."""
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def wilson_interval(successes: float, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a proportion ``successes / n``.

    centre = (p + z²/2n) / (1 + z²/n),  half-width = z √(p(1−p)/n + z²/4n²) / (1 + z²/n).
    """
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    z = z_value(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p = 0 (p = 1) the interval touches the bound exactly; the formula leaves a rounding error there.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, lo, hi, n, "wilson")


def _resamples(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap index draws, ``[chunk, n]`` arrays of prompt indices, ``resamples`` rows in all (seeded)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n))
    for start in range(0, resamples, chunk):
        yield rng.integers(0, n, size=(min(chunk, resamples - start), n))


def _ratio(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Σ num / Σ den over each resample: ``idx`` [R, n] -> [R] (NaN where a resample's Σ den is 0)."""
    top, bottom = num[idx].sum(axis=1), den[idx].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bottom != 0, top / np.where(bottom != 0, bottom, 1), np.nan)


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1 - confidence
    lo, hi = np.nanquantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _as_arrays(num: Sequence[float], den: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(num, dtype=np.float64)
    d = np.ones_like(x) if den is None else np.asarray(den, dtype=np.float64)
    if x.ndim != 1 or x.shape != d.shape:
        raise ValueError(f"numerators {x.shape} and denominators {d.shape} must be equal-length vectors")
    if len(x) == 0:
        raise ValueError("no prompts to resample")
    if d.sum() == 0:
        raise ValueError("the denominators sum to 0: the ratio is undefined")
    return x, d


def bootstrap_ratio(num: Sequence[float], den: Sequence[float] | None = None, *, resamples: int = RESAMPLES,
                    confidence: float = CONFIDENCE, seed: int = SEED) -> Interval:
    """Percentile bootstrap interval of Σ num / Σ den over prompts (``den`` None: the mean of ``num``).

    num, den: [n], one value per prompt (e.g. summed log-prob of a real answer and its token count).
    """
    x, d = _as_arrays(num, den)
    draws = np.concatenate([_ratio(x, d, idx) for idx in _resamples(len(x), resamples, seed)])
    return Interval(float(x.sum() / d.sum()), *_percentiles(draws, confidence), len(x), "bootstrap")


def bootstrap_mean(values: Sequence[float], *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                   seed: int = SEED) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` [n] over prompts."""
    return bootstrap_ratio(values, None, resamples=resamples, confidence=confidence, seed=seed)


def paired_bootstrap(a_num: Sequence[float], b_num: Sequence[float], a_den: Sequence[float] | None = None,
                     b_den: Sequence[float] | None = None, *, resamples: int = RESAMPLES,
                     confidence: float = CONFIDENCE, seed: int = SEED) -> Interval:
    """Paired bootstrap interval of (Σ b_num / Σ b_den) − (Σ a_num / Σ a_den): B minus A.

    All vectors are [n] and aligned: position i is the same prompt in A and in B (see :func:`paired`).
    Each resample draws prompt indices once and applies them to both models.
    """
    xa, da = _as_arrays(a_num, a_den)
    xb, db = _as_arrays(b_num, b_den)
    if len(xa) != len(xb):
        raise ValueError(f"paired vectors differ in length: {len(xa)} and {len(xb)}")
    draws = np.concatenate([_ratio(xb, db, idx) - _ratio(xa, da, idx)
                            for idx in _resamples(len(xa), resamples, seed)])
    estimate = float(xb.sum() / db.sum() - xa.sum() / da.sum())
    return Interval(estimate, *_percentiles(draws, confidence), len(xa), "bootstrap")


def paired(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[str], list[float], list[float]]:
    """The prompts both results have, in A's order, with A's and B's values: (ids, a_values, b_values)."""
    ids = [k for k in a if k in b]
    return ids, [a[k] for k in ids], [b[k] for k in ids]


def proportion_interval(values: Sequence[float], *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                        seed: int = SEED) -> Interval:
    """A mean of per-prompt values that should be proportions: Wilson when every value is 0 or 1, else the
    bootstrap (e.g. an F1 verifier's partial credit) — the interval's ``method`` says which."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) and np.isin(x, (0.0, 1.0)).all():
        return wilson_interval(float(x.sum()), len(x), confidence)
    return bootstrap_mean(x, resamples=resamples, confidence=confidence, seed=seed)
