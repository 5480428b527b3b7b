"""The benchmark harness's plumbing, end to end on the tiny model with minimal sizes (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import cli_process
import pytest
from bench.report import target_rows

REPO = Path(__file__).resolve().parents[1]


def run_smoke(tiny_model: Path, shared_data: Path, out: Path, sections: str) -> tuple[dict, str]:
    """``python -m bench.run --smoke --only SECTIONS`` -> (results.json, RESULTS.md); checks that a smoke run
    never overwrites the committed results."""
    committed = REPO / "bench" / "RESULTS.md"
    committed_before = committed.read_text() if committed.exists() else None
    # The compiled arm is left to tests/test_bench.py (a one-layer model): compiling the tiny model here
    # would double this test's time on a fresh machine.
    # bench.run forked like the CLI (tests/cli_process.py): its arms' own processes are real interpreters.
    proc = cli_process.run_cli(["--smoke", "--only", sections, "--model", tiny_model, "--data", shared_data, "--out", out,
                                "--gen-arms", "hf_continuous"], module="bench.run", cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (committed.read_text() if committed.exists() else None) == committed_before
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["smoke"] is True and results["meta"]["skipped"] == []
    markdown = (out / "RESULTS.md").read_text()
    assert "## Targets" in markdown and "## Machine" in markdown
    return results, markdown


# The sections in three tests, so the two pytest-xdist workers can share them (together ~100 s on 2 cores).
@pytest.mark.distributed  # scheduled first with the multi-process tests (it runs its arms in this process)
def test_bench_smoke_decoding_and_training_sections(tiny_model: Path, shared_data: Path, tmp_path: Path) -> None:
    results, markdown = run_smoke(tiny_model, shared_data, tmp_path / "bench",
                                  "gen,gen32,batch,llamacpp,train,sft,rollouts")
    assert {"meta", "machine", "generation", "training", "generation_fp32", "batch", "llamacpp", "sft",
            "rollouts"} <= results.keys()
    machine = results["machine"]
    assert machine["matmul_peak_gflops"]["float32"] > 0 and machine["memory_bandwidth"]["read_gbs"] > 0

    gen = results["generation"]
    # transformers' own arms either ran alongside or say why they could not
    assert {"ours", "spin_recipe"} <= set(gen["runs"])
    assert set(gen["runs"]) | set(gen["unavailable"]) == {"ours", "spin_recipe", "hf_continuous"}
    for runs in gen["runs"].values():
        assert len(runs) == 1 and runs[0]["tokens"] > 0 and runs[0]["seconds"] > 0
    assert gen["ratio_ours_over_spin"]["n"] == 1
    assert set(gen["ratio_ours_over"]) == set(gen["runs"]) - {"ours"}
    assert gen["decode_bound"]["binding"] in {"memory", "compute"} and gen["decode_bound"]["bound_tokens_per_s"] > 0

    train = results["training"]
    assert set(train["summary"]) == {"ours", "trl_default", "trl_precompute"}
    ours, trl = train["runs"]["ours"][0], train["runs"]["trl_precompute"][0]
    # Same pairs: the arms count nearly the same tokens (TRL's chat template adds a newline after EOS).
    assert 0.8 < ours["tokens"] / trl["tokens"] <= 1.0
    assert ours["precompute_s"] > 0 and trl["precompute_s"] > 0 and train["runs"]["trl_default"][0]["precompute_s"] == 0
    wanted = {"ours_over_trl_default", "ours_over_trl_precompute", "memory_ours_over_trl_default"}
    assert wanted <= train["ratios"].keys()
    assert "self cpu" in train["profile_ours"]["time"].lower()
    assert "cpu mem" in train["profile_ours"]["memory"].lower()

    # A CPU without bf16 units generates in fp32 in section 1, which then is the fp32 figure (read through).
    fp32 = results["generation_fp32"]
    if "same_as" in fp32:
        assert fp32 == {"same_as": "generation"} and gen["settings"]["dtype"] == "float32"
    else:
        assert fp32["settings"]["dtype"] == "float32" and fp32["runs"]["ours"]
    fp32_row = next(r for r in target_rows(results) if r["what"].startswith("generation tokens/s in fp32"))
    assert fp32_row["value"] is not None
    batch = results["batch"]
    assert set(batch["tokens_per_s"]) == {"2", "4"} and batch["best_batch"]["ours"] in {"2", "4"}
    assert batch["default_batch_size"] >= 1
    assert "smollm2-135m-instruct alias" in results["llamacpp"]["unavailable"]  # the tiny model has no GGUF file
    sft = results["sft"]
    assert set(sft["summary"]) == {"ours", "trl"} and {"ours_over_trl", "memory_ours_over_trl"} <= sft["ratios"].keys()
    # The same records: nearly the same tokens (TRL's chat template adds a newline after EOS).
    assert 0.8 < sft["runs"]["ours"][0]["tokens"] / sft["runs"]["trl"][0]["tokens"] <= 1.0
    for work, anchor_count in (("agent", 1), ("rise", 2), ("multiturn", 1)):
        arm = results["rollouts"][work]
        assert arm["runs"]["ours"][0]["episodes"] == 2 and arm["runs"]["anchor"][0]["episodes"] == anchor_count, work
        assert arm["ratio_episodes"]["n"] == 1 and arm["tokens_per_s"]["anchor"]["median"] > 0, work
    # Every agent episode plays all its steps on both sides (finish does not end it in this arm).
    agent = results["rollouts"]["agent"]["runs"]
    assert agent["ours"][0]["calls"] == 2 * 2 and agent["anchor"][0]["steps"] == 1 * 2
    for heading in ("## 1. Generation", "## 2. Training", "## 1a. Generation in fp32",
                    "## 1b. Decode throughput vs batch size", "## 1c. Ours vs llama.cpp", "## 2c. Likelihood training",
                    "## 5. Rollouts"):
        assert heading in markdown
    assert "| agent rollouts trajectories/s, ours / anchor loop | >= 5.0 |" in markdown
    for arm in ("hf_continuous",):
        assert f"ratio ours / {arm}" in markdown


@pytest.mark.distributed  # its scale-out section starts 1- and 2-process arms
def test_bench_smoke_scaling_and_process_sections(tiny_model: Path, shared_data: Path, tmp_path: Path) -> None:
    results, markdown = run_smoke(tiny_model, shared_data, tmp_path / "bench", "scale,procs")
    assert {"meta", "machine", "scaling", "processes"} <= results.keys()
    scale = results["scaling"]
    assert list(scale["by_prompts"]) == ["2", "4"] and list(scale["by_iteration"]) == ["1", "2"]
    assert all(v["seconds"] > 0 for v in scale["by_prompts"].values())

    procs = results["processes"]
    for work, key in (("generation", "tokens_per_s"), ("training", "loop_tokens_per_s")):
        assert set(procs[work]) == {"1 process", "2 processes"}
        assert all(v[key]["median"] > 0 for v in procs[work].values())
    assert procs["speedup"]["generation_tokens_per_s"]["n"] == 1
    for heading in ("## 3. Scaling", "## 4. Scale-out"):
        assert heading in markdown


@pytest.mark.distributed  # a competing process beside `selfplay generate` processes
def test_bench_smoke_contention_section(tiny_model: Path, shared_data: Path, tmp_path: Path) -> None:
    results, markdown = run_smoke(tiny_model, shared_data, tmp_path / "bench", "contention")
    contention = results["contention"]
    assert set(contention["runs"]) == {"alone", "contended", "alone_spinning", "contended_spinning"}
    assert contention["contended_over_alone"]["n"] == 1
    assert contention["settings"]["competitor_threads"] == 1  # the smoke's competitor leaves the other core free
    assert "## 6. Generation beside a competing" in markdown
