"""Interval code against known cases, and tables that never present a zero effect as an improvement."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from selfplay.evals import stats
from selfplay.evals.per_prompt import attach_stats, metric_delta, metric_interval, row_stats
from selfplay.evals.stats_format import change_text, interval_format, with_interval

Z = 1.959963984540054


# --------------------------------------------------------------------------- intervals


@pytest.mark.parametrize("k, n, lo, hi", [
    # Hand-computed: centre (p + z²/2n)/(1 + z²/n), half-width z·√(p(1−p)/n + z²/4n²)/(1 + z²/n).
    (5, 16, 0.141646, 0.555956),
    (0, 10, 0.0, 0.277533),  # z²/(n + z²)
    (10, 10, 0.722467, 1.0),
    (31, 100, 0.227797, 0.406261),  # p = 0.31 over 100 prompts: about ±0.09
])
def test_wilson_matches_hand_computed_values(k, n, lo, hi):
    iv = stats.wilson_interval(k, n)
    assert iv.estimate == k / n and iv.n == n and iv.method == "wilson"
    assert iv.lo == pytest.approx(lo, abs=1e-5) and iv.hi == pytest.approx(hi, abs=1e-5)


def test_wilson_agrees_with_scipy():
    sp = pytest.importorskip("scipy.stats", reason="scipy (a dev dependency through lm-eval) cross-checks Wilson")
    for k, n in [(0, 7), (3, 7), (48, 100), (100, 100)]:
        ref = sp.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        iv = stats.wilson_interval(k, n)
        assert (iv.lo, iv.hi) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_bootstrap_of_a_large_sample_matches_the_normal_approximation():
    x = np.random.default_rng(123).normal(0.3, 1.0, 5000)
    iv = stats.bootstrap_mean(x)
    half = Z * x.std(ddof=1) / math.sqrt(len(x))
    assert iv.estimate == pytest.approx(x.mean())
    assert iv.lo == pytest.approx(x.mean() - half, abs=0.05 * half)
    assert iv.hi == pytest.approx(x.mean() + half, abs=0.05 * half)
    assert iv.n == 5000 and iv.method == "bootstrap"


def test_ratio_bootstrap_matches_the_delta_method():
    """Σ logp / Σ tokens: the resampled ratio against its linearised (delta-method) standard error."""
    rng = np.random.default_rng(7)
    tokens = rng.integers(20, 200, 3000).astype(float)
    logp = -tokens * rng.normal(1.0, 0.3, 3000)
    r = logp.sum() / tokens.sum()
    se = np.std(logp - r * tokens, ddof=1) / (math.sqrt(len(tokens)) * tokens.mean())
    iv = stats.bootstrap_ratio(logp, tokens)
    assert iv.estimate == pytest.approx(r)
    assert iv.lo == pytest.approx(r - Z * se, abs=0.06 * Z * se) and iv.hi == pytest.approx(r + Z * se, abs=0.06 * Z * se)
    # A mean is the ratio with unit denominators.
    assert stats.bootstrap_ratio(logp, np.ones_like(logp)) == stats.bootstrap_mean(logp)


def test_percentile_bootstrap_agrees_with_scipy():
    sp = pytest.importorskip("scipy.stats", reason="scipy (a dev dependency through lm-eval) cross-checks the bootstrap")
    x = np.random.default_rng(3).exponential(1.0, 300)
    ref = sp.bootstrap((x,), np.mean, method="percentile", n_resamples=10_000, vectorized=True,
                       random_state=np.random.default_rng(11)).confidence_interval
    iv = stats.bootstrap_mean(x)
    width = ref.high - ref.low
    assert iv.lo == pytest.approx(ref.low, abs=0.05 * width) and iv.hi == pytest.approx(ref.high, abs=0.05 * width)


def test_paired_bootstrap_identical_results_give_exactly_zero():
    a = np.random.default_rng(0).random(50)
    iv = stats.paired_bootstrap(a, a.copy())
    assert (iv.estimate, iv.lo, iv.hi) == (0.0, 0.0, 0.0) and not iv.significant
    # Ratios too (per-token log-likelihood of two identical evaluations).
    tokens = np.arange(1, 51, dtype=float)
    iv = stats.paired_bootstrap(a, a, tokens, tokens)
    assert (iv.lo, iv.hi) == (0.0, 0.0) and not iv.significant


def test_paired_bootstrap_cancels_the_shared_prompt_spread():
    """B = A + 0.05 + small noise on the same prompts: the unpaired spread of A is large, the paired
    interval is narrow, excludes 0, and matches the normal approximation of the per-prompt differences."""
    rng = np.random.default_rng(5)
    a = rng.normal(0.0, 1.0, 2000)
    b = a + 0.05 + rng.normal(0.0, 0.1, 2000)
    iv = stats.paired_bootstrap(a, b)
    d = b - a
    half = Z * d.std(ddof=1) / math.sqrt(len(d))
    assert iv.estimate == pytest.approx(d.mean())
    assert iv.lo == pytest.approx(d.mean() - half, abs=0.06 * half) and iv.hi == pytest.approx(d.mean() + half, abs=0.06 * half)
    unpaired = stats.bootstrap_mean(a)
    assert iv.significant and iv.hi - iv.lo < 0.2 * (unpaired.hi - unpaired.lo)


def test_seeded_resampling_is_reproducible():
    x = np.random.default_rng(9).random(37)
    assert stats.bootstrap_mean(x) == stats.bootstrap_mean(x)
    assert stats.bootstrap_mean(x, seed=1) != stats.bootstrap_mean(x, seed=2)
    y = x + np.random.default_rng(10).normal(0, 0.2, 37)
    assert stats.paired_bootstrap(x, y) == stats.paired_bootstrap(x, y)


def test_verdict_needs_the_interval_to_exclude_zero():
    assert stats.significant(0.01, 0.2) and stats.significant(-0.2, -0.01)
    assert not stats.significant(-0.1, 0.1) and not stats.significant(0.0, 0.1) and not stats.significant(0.0, 0.0)


def test_proportion_uses_wilson_only_for_zero_one_values():
    assert stats.proportion_interval([0, 1, 1, 0]).method == "wilson"
    assert stats.proportion_interval([0, 0.5, 1, 0]).method == "bootstrap"  # partial credit (F1 verifier)
    with pytest.raises(ValueError):
        stats.bootstrap_mean([])


# --------------------------------------------------------------------------- per-prompt tables -> row stats


def _table(acc: list[float], offset: int = 0) -> dict[str, dict[str, float]]:
    return {f"p{i}": {"accuracy": a, "real_logp": -10.0 - i - offset, "real_tokens": 10 + i}
            for i, a in enumerate(acc)}


def test_row_stats_schema_and_pairing_by_prompt_id():
    base = _table([0, 1, 0, 1, 0, 0, 1, 0])
    new = dict(reversed(list(_table([1, 1, 0, 1, 1, 0, 1, 1]).items())))  # another order: matched by id
    new["extra"] = {"accuracy": 1.0}  # a prompt the base lacks is left out of the paired change
    rows = attach_stats([{"iteration": "base"}, {"iteration": 0}], [base, new])
    s0, s1 = rows[0]["stats"]["accuracy"], rows[1]["stats"]["accuracy"]
    assert set(s0) == {"n", "lo", "hi", "method", "delta", "delta_lo", "delta_hi", "significant"}
    assert s0["method"] == "wilson" and s0["n"] == 8 and s0["delta"] is None and s0["significant"] is None
    assert s1["n"] == 9 and s1["delta"] == pytest.approx(3 / 8)
    assert metric_delta("accuracy", new, base).n == 8
    assert rows[1]["stats"]["real_loglik"]["method"] == "bootstrap"
    assert metric_interval("real_loglik", base).estimate == pytest.approx(
        sum(-10.0 - i for i in range(8)) / sum(10 + i for i in range(8)))
    assert "spin_margin" not in row_stats(base, None)  # no values, no entry


# --------------------------------------------------------------------------- rendering: n.s. is never a gain


def test_formats():
    assert interval_format("{:.3f}") == "{:.2f}" and interval_format("{:+.2f}") == "{:+.1f}"
    assert with_interval(0.31, {"lo": 0.22, "hi": 0.4}, "{:.3f}") == "0.310 [0.22, 0.40]"
    assert with_interval(0.31, None, "{:.3f}") == "0.310" and with_interval(None, None, "{:.3f}") == "–"
    sig = {"delta": 0.12, "delta_lo": 0.05, "delta_hi": 0.19, "significant": True}
    assert change_text(sig, "{:.3f}") == ("+0.120 [+0.05, +0.19]", True)
    ns = {"delta": 0.02, "delta_lo": -0.05, "delta_hi": 0.09, "significant": False}
    assert change_text(ns, "{:.3f}") == ("+0.020 [-0.05, +0.09] n.s.", False)


def _zero_effect_rows() -> list[dict]:
    """base, an identical iteration, and a noisy one whose mean rises (0.4 -> 0.6 on 30 prompts) but whose
    paired interval spans 0."""
    base, noisy = _table([1, 0, 1, 0, 0, 1, 0, 0, 1, 0] * 3), _table([0, 1, 1, 0, 1, 0, 0, 1, 1, 1] * 3)
    rows = [{"iteration": "base", "accuracy": 0.4}, {"iteration": 0, "accuracy": 0.4}, {"iteration": 1, "accuracy": 0.6}]
    attach_stats(rows, [base, dict(base), noisy])
    assert rows[1]["stats"]["accuracy"]["significant"] is False and rows[1]["stats"]["accuracy"]["delta"] == 0
    d = rows[2]["stats"]["accuracy"]
    assert d["delta"] == pytest.approx(0.2) and d["delta_lo"] < 0 < d["delta_hi"] and d["significant"] is False
    return rows


def test_zero_effect_is_never_shown_as_an_improvement_in_markdown():
    from selfplay.stages.report import markdown_table

    text = markdown_table(_zero_effect_rows())
    assert "n = 30" in text and "Δ accuracy vs base" in text
    lines = [line for line in text.splitlines() if line.startswith("| 0 ") or line.startswith("| 1 ")]
    assert len(lines) == 2
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        change = cells[2]
        assert change.endswith("n.s.") and "**" not in line, line
    assert "0.400 [" in text and "+0.000 [+0.00, +0.00] n.s." in text


def test_zero_effect_is_dimmed_and_marked_in_the_terminal_table(monkeypatch):
    from rich.console import Console

    import selfplay.progress
    from selfplay.stages.report import print_iteration_table

    console = Console(record=True, width=100, force_terminal=True, color_system="standard")
    monkeypatch.setattr(selfplay.progress, "console", console)
    print_iteration_table(_zero_effect_rows())
    plain = console.export_text(styles=False, clear=False)
    styled = console.export_text(styles=True)
    assert "n = 30" in plain and len(re.findall(r"n\.s\. │", plain)) == 2 and "Δ accuracy" in plain
    assert all(len(line) <= 100 for line in plain.splitlines())
    # Every line of a change cell is dim (SGR 2), none bold (SGR 1; the header and title are bold).
    for text in ("+0.000", "[+0.00, +0.00]", "+0.200", "[-0.07, +0.47]"):
        assert re.search(r"\x1b\[2m *" + re.escape(text), styled), text
    assert len(re.findall(r"\x1b\[2m *n\.s\.", styled)) == 2
    assert not re.search(r"\x1b\[1m *[-+\[]", styled)


def test_a_significant_change_is_bold_with_its_interval():
    from selfplay.stages.report import markdown_table

    base, better = _table([0] * 40), _table([1] * 30 + [0] * 10)
    rows = attach_stats([{"iteration": "base", "accuracy": 0.0}, {"iteration": 0, "accuracy": 0.75}], [base, better])
    assert rows[1]["stats"]["accuracy"]["significant"] is True
    assert re.search(r"\| \*\*\+0\.750 \[\+0\.\d\d, \+0\.\d\d\]\*\* \|", markdown_table(rows))


def test_rows_without_per_prompt_results_say_so():
    from selfplay.stages.report import markdown_table

    rows = attach_stats([{"iteration": "base", "accuracy": 0.5}, {"iteration": 0, "accuracy": 0.6}], [None, None])
    text = markdown_table(rows)
    assert "no intervals" in text and "| base | 0.500 |" in text and "[" not in text.split("\n\n", 1)[1]
