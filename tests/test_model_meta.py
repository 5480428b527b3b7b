"""Pinned models: model.revision picks the hub snapshot everywhere a model loads, and every trained model
records its base (model, revision, commit), method and iteration in selfplay_model.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from selfplay.io import read_jsonl
from test_loop import TINY
from test_train import FAST, make_pairs

PINNED, MAIN = "a" * 40, "b" * 40


def _meta(model_dir: Path) -> dict:
    return json.loads((model_dir / "selfplay_model.json").read_text())


def test_trained_models_record_their_base_and_iteration(cli, tiny_model, tmp_path):
    pairs = make_pairs(tmp_path / "pairs.jsonl")
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["--data", pairs, "--method", "spin", "--lr", "1e-3", "--batch-size", "4", *FAST]
    assert cli(["train", "--model", tiny_model, "--out", first, *args]).exit_code == 0
    meta = _meta(first / "model")
    assert meta["format"] == 1 and meta["base_model"] == str(tiny_model) and meta["parent"] == str(tiny_model)
    assert meta["base_revision"] is None and meta["base_commit"] is None  # a local directory has no revision
    assert (meta["method"], meta["loss"], meta["iteration"], meta["adapter"]) == ("spin", "sigmoid", 0, False)
    assert meta["examples"] == 12 and meta["steps"] == 3 and meta["data"] == str(pairs)
    assert meta["train"]["lr"] == 1e-3 and meta["train"]["batch_size"] == 4 and meta["selfplay_version"]
    # A second round from the first's model keeps naming the original base and counts one further.
    assert cli(["train", "--model", first / "model", "--out", second, *args]).exit_code == 0
    meta2 = _meta(second / "model")
    assert meta2["base_model"] == str(tiny_model) and meta2["parent"] == str(first / "model")
    assert meta2["iteration"] == 1


@pytest.fixture
def hub_cache(tmp_path, tiny_model, monkeypatch) -> Path:
    """An HF hub cache holding 'owner/tiny' at two commits: PINNED (other weights) and MAIN (refs/main)."""
    from huggingface_hub import constants

    from selfplay.testing import build_tiny_llama

    cache = tmp_path / "hub"
    repo = cache / "models--owner--tiny"
    build_tiny_llama(repo / "snapshots" / PINNED, seed=1)
    shutil.copytree(tiny_model, repo / "snapshots" / MAIN)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return repo


def test_a_pinned_revision_is_the_snapshot_that_loads(hub_cache):
    import torch

    from selfplay.errors import UserError
    from selfplay.models import SMOLLM2_HUB_ID, load_model, resolve_model

    assert resolve_model("owner/tiny") == str(hub_cache / "snapshots" / MAIN)
    assert resolve_model("owner/tiny", PINNED) == str(hub_cache / "snapshots" / PINNED)
    pinned, _ = load_model("owner/tiny", revision=PINNED)
    main, _ = load_model("owner/tiny")
    local, _ = load_model(str(hub_cache / "snapshots" / PINNED))
    w = "model.embed_tokens.weight"
    assert torch.equal(pinned.state_dict()[w], local.state_dict()[w])
    assert not torch.equal(pinned.state_dict()[w], main.state_dict()[w])
    with pytest.raises(UserError, match="not in the HF cache"):  # offline, a revision the cache lacks
        resolve_model("owner/tiny", "c" * 40)
    # A pinned SmolLM2 revision never falls back to the offline alias (different weights).
    with pytest.raises(UserError, match="not in the HF cache"):
        resolve_model(SMOLLM2_HUB_ID, "d" * 40)


def test_revision_is_honoured_by_the_loop_and_recorded_in_config_and_model(cli, hub_cache, tmp_path):
    def base_loglik(run: Path, *model: str) -> float:
        res = cli(["loop", "--method", "spin", "--iters", "0", "--data", "synth:arith", "--run-dir", run, *TINY,
                   "--model", *model])
        assert res.exit_code == 0, res.output
        return read_jsonl(run / "eval" / "iterations.jsonl")[0]["real_loglik"]

    pinned = base_loglik(tmp_path / "pinned", "owner/tiny", "--set", f"model.revision={PINNED}")
    assert pinned == base_loglik(tmp_path / "local", str(hub_cache / "snapshots" / PINNED))
    assert pinned != base_loglik(tmp_path / "main", "owner/tiny")
    assert yaml.safe_load((tmp_path / "pinned" / "config.yaml").read_text())["model"]["revision"] == PINNED

    out = tmp_path / "trained"
    res = cli(["train", "--model", "owner/tiny", "--set", f"model.revision={PINNED}", "--data",
               make_pairs(tmp_path / "pairs.jsonl", n=4), "--out", out, "--batch-size", "4", *FAST])
    assert res.exit_code == 0, res.output
    meta = _meta(out / "model")
    assert (meta["base_model"], meta["base_revision"], meta["base_commit"]) == ("owner/tiny", PINNED, PINNED)
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["revision"] == PINNED
