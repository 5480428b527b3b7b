"""The HTML report (selfplay.htmlreport): escaping, sampling, intervals, and a tiny loop's report in Chromium.

The browser test needs Debian's ``chromium`` and the ``playwright`` package (the dev extra; .ci/run installs
both); it is skipped, saying which is missing, elsewhere. Its screenshot goes to the test's tmp directory,
and to ``$SELFPLAY_SCREENSHOT_DIR`` when that is set.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from selfplay.htmlreport.markup import Html, el
from selfplay.htmlreport.runs import records_for, sample_records
from selfplay.io import read_jsonl, write_jsonl

CHROMIUM = Path(os.environ.get("SELFPLAY_CHROMIUM", "/usr/bin/chromium"))
XSS = "<script>alert(1)</script>"
XSS_ATTR = '"><img src=x onerror=alert(2)>'


def test_text_is_escaped_and_markup_is_not() -> None:
    page = el("div", XSS, el("b", "bold"), title=XSS_ATTR)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img" not in page and 'title="&quot;&gt;&lt;img' in page
    assert "<b>bold</b>" in page and isinstance(page, Html)


def test_sampling_is_bounded_seeded_and_follows_ids_across_files(tmp_path: Path) -> None:
    rows = [{"id": f"p{i}", "x": i} for i in range(200)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    write_jsonl(tmp_path / "b.jsonl", list(reversed(rows))[:150] + [{"id": "new"}])
    a, total = sample_records(tmp_path / "a.jsonl", 10, seed=0)
    assert total == 200 and len(a) == 10 and a == sample_records(tmp_path / "a.jsonl", 10, seed=0)[0]
    assert [r["x"] for r in a] == sorted(r["x"] for r in a)  # file order
    assert {r["id"] for r in a} != {r["id"] for r in sample_records(tmp_path / "a.jsonl", 10, seed=1)[0]}
    # another file holding the same prompts picks the same ones (those it has)
    b, _ = sample_records(tmp_path / "b.jsonl", 10, seed=0)
    common = {r["id"] for r in a} & {f"p{i}" for i in range(50, 200)}
    assert common <= {r["id"] for r in b}
    write_jsonl(tmp_path / "own.jsonl", [{"id": "p1#s0@it0"}, {"id": "p1#s1@it0"}, {"id": "p2"}, {"id": "p10#s0"}])
    found = records_for(tmp_path / "own.jsonl", {"p1", "p2"})
    assert {k: len(v) for k, v in found.items()} == {"p1": 2, "p2": 1}


def test_odd_records_are_shown_as_json_and_never_stop_the_report() -> None:
    from selfplay.htmlreport.views import Training, render_record

    odd = render_record({"id": "x", "turn_history": {"best_actions": ["a"], "actions": ["not a dict"]}}, Training())
    assert "shown as JSON: the episode view failed (AttributeError" in odd and "not a dict" in odd
    ok = render_record({"id": "y", "samples": ["s0", "s1"], "scores": [1, 0], "win_matrix": [[0.5, 0.7], [0.3, 0.5]]},
                       Training([{"id": "y", "chosen": "s0", "rejected": "s1", "chosen_prob": 0.6}], known=True))
    assert "badge chosen" in ok and "badge rejected" in ok and 'class="heatmap"' in ok and "targets 0.6" in ok


def test_intervals_and_not_significant_changes() -> None:
    from selfplay.htmlreport.build import metric_cell

    stats = {"n": 48, "lo": 0.2, "hi": 0.4, "method": "bootstrap", "delta": 0.05, "delta_lo": -0.01,
             "delta_hi": 0.11, "significant": False}
    cell = metric_cell({"accuracy": 0.3, "stats": {"accuracy": stats}}, "accuracy", "{:.3f}")
    assert "0.300" in cell and "[0.200, 0.400], n=48" in cell and "Δ +0.050 [-0.010, +0.110] n.s." in cell
    assert 'class="delta ns"' in cell and "delta sig" not in cell
    sig = metric_cell({"accuracy": 0.3, "stats": {"accuracy": {**stats, "delta_lo": 0.01, "significant": True}}},
                      "accuracy", "{:.3f}")
    assert "n.s." not in sig and 'class="delta sig"' in sig
    assert metric_cell({"accuracy": 0.3}, "accuracy", "{:.3f}") == "<td>0.300</td>"  # rows without statistics
    from selfplay.htmlreport.charts import Series, line_chart

    bars = line_chart("accuracy", ["base", "0"], [Series("", [0.3, 0.35], [0.2, 0.25], [0.4, 0.45])])
    plain = line_chart("accuracy", ["base", "0"], [Series("", [0.3, 0.35])])
    assert "base: 0.3 [0.2, 0.4]" in bars and "0: 0.35 [0.25, 0.45]" in bars and "[" not in plain.split("<title>")[1]
    assert bars.count('opacity="0.6"') == 6 and "opacity" not in plain  # per point: an interval bar, two caps


@pytest.mark.xdist_group("tiny_spin_run")  # one worker runs the session's loop
def test_loop_writes_the_report_with_every_section(tiny_spin_run: Path) -> None:
    text = (tiny_spin_run / "eval" / "report.html").read_text()
    for anchor in ('id="metrics"', 'id="base"', 'id="iter-0"', "<svg", "real (SFT answer)", "greedy answer",
                   'href="../iter_0/generate.jsonl"', 'href="../iter_0/eval/samples.jsonl"'):
        assert anchor in text, anchor
    assert "<script" not in text and "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")


def _plant(run: Path, copy: Path) -> Path:
    """A copy of the run whose samples and answers carry HTML (model output is untrusted)."""
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    for rel, key in (("iter_0/generate.jsonl", "samples"), ("iter_0/eval/samples.jsonl", "answer")):
        rows = read_jsonl(copy / rel)
        for r in rows:
            r[key] = [f"{s} {XSS} {XSS_ATTR}" for s in r[key]] if isinstance(r[key], list) else f"{XSS}{XSS_ATTR}"
        write_jsonl(copy / rel, rows)
    return copy


def _browser_or_skip() -> None:
    """Skip, saying what is missing, where no browser is installed; fail instead where CI requires one."""
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright package is not installed (pip install -e '.[dev]')"
    if missing is None and not CHROMIUM.is_file():
        missing = f"no browser at {CHROMIUM} (apt-get install chromium, or set SELFPLAY_CHROMIUM)"
    if missing and os.environ.get("SELFPLAY_REQUIRE_BROWSER"):
        pytest.fail(f"SELFPLAY_REQUIRE_BROWSER is set but {missing}")
    if missing:
        pytest.skip(missing)


@pytest.mark.xdist_group("tiny_spin_run")  # one worker runs the session's loop
def test_report_in_headless_chromium(tiny_spin_run: Path, cli, tmp_path: Path) -> None:
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    run = _plant(tiny_spin_run, tmp_path / "planted")
    res = cli(["eval", "compare", run, "--html"])
    assert res.exit_code == 0, res.output
    report = run / "eval" / "report.html"
    assert f"html: {report}" in res.output
    errors: list[str] = []
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(report.as_uri())
        page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        for section in ("#metrics", "#base", "#iter-0"):
            assert page.locator(section).count() == 1, section
        assert page.locator("#metrics table.metrics tr").count() == 3  # header, base, iteration 0
        assert page.locator("#metrics svg.chart").count() >= 2
        assert page.locator("#iter-0 details.collected .record").count() == 10
        assert page.locator("#iter-0 details.evaluation .record").count() == 4
        assert page.locator("#base details.evaluation .badge").count() == 4  # correct / incorrect marks
        # The planted HTML is text on the page, never an element.
        assert page.evaluate("document.querySelectorAll('script, img').length") == 0
        body = page.inner_text("body")
        assert body.count(XSS) >= 10 and XSS_ATTR in body
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=False)
        browser.close()
    assert errors == [] and dialogs == []
    assert shot.stat().st_size > 10_000
    if os.environ.get("SELFPLAY_SCREENSHOT_DIR"):
        target = Path(os.environ["SELFPLAY_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "report.png")


@pytest.mark.xdist_group("tiny_spin_run")  # one worker runs the session's loop
def test_compare_html_of_two_runs(tiny_spin_run: Path, cli, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_spin_run, other, ignore=shutil.ignore_patterns("*.safetensors"))
    res = cli(["eval", "compare", tiny_spin_run, other, "--html", "--out", tmp_path / "cmp.png"])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "cmp.html").read_text()
    assert "run vs other" in text and text.count('class="chart"') >= 2 and 'id="run1"' in text
    assert json.loads(cli(["eval", "compare", tiny_spin_run, "--json"]).stdout)[0]["iteration"] == "base"
