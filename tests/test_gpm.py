"""Training judges (`selfplay train --method gpm | bt-rm`) on the tiny model, loading them as `gpm:` / `reward-model:`
judges, `selfplay eval preference`, cyclic preferences, and GPM scores as SPPO / GPO targets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from selfplay.io import read_json, read_jsonl, write_jsonl

FAST = ["--set", "train.precision=fp32", "--set", "train.logging_steps=1", "--set", "train.warmup_ratio=0"]
QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]


def make_pairs(path: Path, n: int = 8) -> Path:
    rows = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
             "chosen": f"{i} + {i} = {2 * i}. The answer is {2 * i}.", "rejected": f"The answer is {i + 7}."}
            for i in range(n)]
    write_jsonl(path, rows)
    return path


def random_judge(out: Path, tiny_model: Path, *, dim: int, prompt_head: bool = False, tau: float = 0.1,
                 seed: int = 0) -> Path:
    """A judge checkpoint with fresh (random) heads, written the way training writes one."""
    from selfplay.core.preference_model import HeadSpec, PreferenceModel
    from selfplay.models import load_model

    torch.manual_seed(seed)
    policy, tok = load_model(str(tiny_model), dtype="float32", device="cpu")
    PreferenceModel.from_causal_lm(policy, HeadSpec(dim, prompt_head, tau)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def train_args(model: Path, data: Path, out: Path, method: str, *extra: str) -> list:
    return ["train", "--method", method, "--model", model, "--data", data, "--out", out, "--batch-size", "4",
            "--lr", "2e-3", "--epochs", "3", *FAST, *extra]


# --------------------------------------------------------------------------- training writes a judge


def test_gpm_training_writes_the_anchors_checkpoint(cli, tiny_model, tmp_path):
    pairs = make_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "gpm"
    res = cli(train_args(tiny_model, pairs, out, "gpm", "--set", "train.gpm.value_head_dim=4",
                         "--set", "train.gpm.prompt_head=true", "--set", "train.gpm.tau=0.5"))
    assert res.exit_code == 0, res.output
    summary = read_json(out / "summary.json")
    assert summary["steps"] == 6 and summary["model_path"].endswith("model")
    metrics = read_jsonl(out / "metrics.jsonl")
    assert {"loss", "accuracy", "prob", "score"} <= set(metrics[-1])
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert not (out / "ref_logps.jsonl").exists()  # the scorer objective has no reference pass
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["preference_head"] == {"value_head_dim": 4, "prompt_head": True, "tau": 0.5, "normalize": False}
    assert config["architectures"] == ["LlamaForCausalLM"]
    from safetensors import safe_open

    with safe_open(str(out / "model" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("value_head.weight").shape == (4, 64)
        assert f.get_tensor("prompt_head.weight").shape == (2, 64)
    assert "model.embed_tokens.weight" in keys and not any(k.startswith("lm_head") for k in keys)
    saved = yaml_of(out / "config.yaml")["train"]
    assert saved["optimizer"] == "adamw" and saved["adam_betas"] == [0.9, 0.95]  # the anchor's preset
    assert saved["scheduler"] == "cosine" and saved["weight_decay"] == 0.0


def yaml_of(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def trainer_logits(monkeypatch) -> dict[str, torch.Tensor]:
    """Spy on the trainer: just before it saves, the live model's logits s(w > l) / tau for every training pair,
    computed with the trainer's own hooks (records, tokenization, batch layout, scorer)."""
    import selfplay.stages.train as train_mod
    from selfplay.core.judge_losses import gpm_score
    from selfplay.core.objectives import get_objective

    captured: dict[str, torch.Tensor] = {}
    original = train_mod.finish

    def spy(accelerator, cfg, scorer, tok, out_dir, *args, **kwargs):
        objective = get_objective("scorer")
        records = objective.load_records(captured["data"], ())
        examples, _ = objective.tokenize(records, tok, prompt_format="chat", max_length=cfg.train.max_length,
                                         max_prompt_length=cfg.train.max_prompt_length)
        model = accelerator.unwrap_model(scorer)
        model.eval()
        with torch.no_grad():
            values, gates = model(**objective.batch(model.model, examples, tok.pad_token_id))
        v_w, v_l = values.chunk(2)
        s = v_w[:, 0] - v_l[:, 0] if values.shape[-1] == 1 else gpm_score(v_w, v_l, gates.chunk(2)[0])
        captured["logits"] = s / cfg.train.gpm.tau
        captured["ids"] = [e.id for e in examples]
        return original(accelerator, cfg, scorer, tok, out_dir, *args, **kwargs)

    monkeypatch.setattr(train_mod, "finish", spy)
    return captured


def judge_logit(spec: str, pair: dict) -> float:
    from selfplay.judges import make_judge

    (result,) = make_judge(spec, device="cpu").score([{"id": "x", "prompt_messages": pair["prompt"],
                                                       "samples": [pair["chosen"], pair["rejected"]]}])
    if "scores" in result:
        return result["scores"][0] - result["scores"][1]
    return result["win_matrix"][0][1]


@pytest.mark.parametrize("method, judge, extra", [
    ("gpm", "gpm", ["--set", "train.gpm.value_head_dim=4", "--set", "train.gpm.prompt_head=true",
                    "--set", "train.gpm.tau=0.5"]),
    ("gpm", "gpm", ["--lora", "--save-merged", "--set", "train.gpm.value_head_dim=2"]),
    ("bt-rm", "reward-model", []),
    ("bt-rm", "reward-model", ["--lora", "--set", "train.gpm.tau=2"]),
], ids=["gpm-full-prompt-head", "gpm-lora", "bt-full", "bt-lora"])
def test_the_judge_scores_a_training_pair_as_the_trainer_did(cli, tiny_model, tmp_path, monkeypatch, method, judge,
                                                             extra):
    """S[w][l] of the saved checkpoint, loaded as a judge, equals the trainer's logit for the pair; with LoRA the
    heads are trained, merged and saved with the model (model/ and merged/ alike)."""
    pairs = make_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "out"
    captured = trainer_logits(monkeypatch)
    captured["data"] = str(pairs)
    res = cli(train_args(tiny_model, pairs, out, method, *extra))
    assert res.exit_code == 0, res.output
    rows = {r["id"]: r for r in read_jsonl(pairs)}
    dirs = [out / "model"] + ([out / "merged"] if "--save-merged" in extra else [])
    assert not (out / "model" / "adapter_config.json").exists()  # a judge is saved whole, adapters merged
    for directory in dirs:
        for i in (0, 5):
            pair_id = captured["ids"][i]
            expected = captured["logits"][i].item()
            got = judge_logit(f"{judge}:{directory}", rows[pair_id])
            assert got == pytest.approx(expected, rel=1e-4, abs=1e-4), (directory, pair_id)
    # the trained heads, not fresh ones: the judge agrees with training's last step on every pair
    assert (captured["logits"] > 0).float().mean().item() > 0.5


def test_fresh_heads_follow_the_anchor(tiny_model):
    """value_head Linear(H, 2m, bias=False) and prompt_head Linear(H, m, bias=False), both N(0, 1/(H+1)); the
    embedding is L2-normalised, the gates a softmax; width 1 gives a raw reward and no gates."""
    from selfplay.core.preference_model import HeadSpec, PreferenceModel, collate_conversations
    from selfplay.models import load_model

    policy, tok = load_model(str(tiny_model), dtype="float32", device="cpu")
    torch.manual_seed(0)
    model = PreferenceModel.from_causal_lm(policy, HeadSpec(value_head_dim=256, prompt_head=True))
    assert model.value_head.bias is None and model.prompt_head.bias is None
    assert model.value_head.weight.shape == (256, 64) and model.prompt_head.weight.shape == (128, 64)
    for w in (model.value_head.weight, model.prompt_head.weight):
        assert abs(w.std().item() * 65 - 1) < 0.05 and abs(w.mean().item()) < 0.01
    batch = collate_conversations([[5, 6, 7, 2], [8, 9, 2]], [2, 1], tok.pad_token_id)
    assert batch["prompt_index"].tolist() == [1, 1]  # the last prompt token's column, left padding
    values, gates = model(**batch)
    torch.testing.assert_close(values.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(gates.sum(-1), torch.ones(2))
    bt = PreferenceModel.from_causal_lm(policy, HeadSpec(value_head_dim=1, tau=1.0))
    values, gates = bt(**batch)
    assert values.shape == (2, 1) and gates.shape == (2, 0)


def test_training_continues_from_a_checkpoints_heads(tiny_model, tmp_path):
    from selfplay.config import TrainConfig
    from selfplay.core.objectives import get_objective
    from selfplay.core.preference_model import load_head_weights
    from selfplay.errors import ConfigError
    from selfplay.models import load_model

    path = random_judge(tmp_path / "j", tiny_model, dim=4, prompt_head=True, seed=3)
    policy, _ = load_model(str(path), dtype="float32", device="cpu")
    train = TrainConfig()
    train.gpm.value_head_dim, train.gpm.prompt_head = 4, True
    model = get_objective("scorer").trained_model(policy, train, path, None)
    heads = load_head_weights(path)
    assert torch.equal(model.value_head.weight, heads["value_head.weight"])
    assert torch.equal(model.prompt_head.weight, heads["prompt_head.weight"])
    train.gpm.value_head_dim = 6
    with pytest.raises(ConfigError, match="value_head_dim=6"):
        get_objective("scorer").trained_model(load_model(str(path), dtype="float32", device="cpu")[0], train, path,
                                              None)


# --------------------------------------------------------------------------- bad input: one message, nothing written


@pytest.mark.parametrize("row, message", [
    ({"id": "b", "prompt": [{"role": "user", "content": "hi"}], "chosen": "same", "rejected": "same "},
     "line 2, field 'rejected': 'chosen' and 'rejected' are the same answer"),
    ({"id": "b", "prompt": [{"role": "user", "content": "hi"}], "chosen": " ", "rejected": "x"},
     "line 2, field 'chosen': the answer is empty"),
    ({"id": "b", "prompt": "", "chosen": "y", "rejected": "x"}, "line 2, field 'prompt'"),
    ({"id": "b", "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "y"}],
      "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "x"}]},
     "line 2, field 'rejected': the prompt turns differ"),
    ({"id": "b", "prompt": "hi", "chosen": "y", "rejected": "x", "margin": "big"}, "line 2, field 'margin'"),
])
def test_bad_pairs_stop_training_before_anything_is_written(cli, tiny_model, tmp_path, row, message):
    good = {"id": "a", "prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [good, row])
    res = cli(["train", "--method", "gpm", "--model", tiny_model, "--data", path, "--out", tmp_path / "o"])
    assert res.exit_code == 2 and "bad.jsonl" in res.output and message in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize("sets, message", [
    (["method=gpm", "train.gpm.value_head_dim=3"], "value_head_dim=3 is odd"),
    (["method=bt-rm", "train.gpm.value_head_dim=2"], "needs train.gpm.value_head_dim = 1"),
    (["method=gpm", "train.gpm.value_head_dim=1"], r"= 2m \(even\)"),
    (["method=bt-rm", "train.gpm.prompt_head=true"], "prompt_head"),
    (["method=gpm", "train.gpm.tau=0"], "tau must be positive"),
    (["method=gpm", "train.gpm.center_rewards_coefficient=0.1"], "centres Bradley-Terry"),
    (["method=gpm", "train.loss=sigmoid"], "not a scorer loss"),
    (["method=spin", "train.loss=gpm"], "not a preference loss"),
    (["train.adam_betas=[0.9]"], "adam_betas"),
])
def test_head_config_mistakes_fail_when_the_config_is_built(sets, message):
    from selfplay.errors import ConfigError
    from selfplay.methods import load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_odd_width_stops_train_before_any_output(cli, tiny_model, tmp_path):
    pairs = make_pairs(tmp_path / "pairs.jsonl", n=2)
    res = cli(["train", "--method", "gpm", "--model", tiny_model, "--data", pairs, "--out", tmp_path / "o",
               "--set", "train.gpm.value_head_dim=5"])
    assert res.exit_code == 2 and "value_head_dim=5 is odd" in res.output and not (tmp_path / "o").exists()


def test_a_checkpoint_without_heads_is_refused_by_judges_and_eval(cli, tiny_model, tmp_path):
    from selfplay.errors import UserError
    from selfplay.judges import make_judge

    pairs = make_pairs(tmp_path / "pairs.jsonl", n=2)
    res = cli(["eval", "preference", "-m", tiny_model, "--data", pairs, "--out", tmp_path / "ev"])
    assert res.exit_code == 2 and "no 'value_head.weight'" in res.output and str(tiny_model) in res.output
    assert not (tmp_path / "ev").exists()
    with pytest.raises(UserError, match="not a GPM or Bradley-Terry head checkpoint"):
        make_judge(f"gpm:{tiny_model}", device="cpu")
    gpm = random_judge(tmp_path / "g", tiny_model, dim=2)
    with pytest.raises(UserError, match="use --judge gpm:"):
        make_judge(f"reward-model:{gpm}", device="cpu")


def test_a_rewardbench_file_without_subset_is_refused(cli, tiny_model, tmp_path):
    judge = random_judge(tmp_path / "j", tiny_model, dim=2)
    path = tmp_path / "rb.jsonl"
    write_jsonl(path, [{"prompt": "hi", "chosen": "a", "rejected": "b", "subset": "mt-bench-easy"},
                       {"prompt": "hi", "chosen": "c", "rejected": "d"}])
    res = cli(["eval", "preference", "-m", judge, "--data", path, "--format", "rewardbench", "--out", tmp_path / "ev"])
    assert res.exit_code == 2 and "rb.jsonl, line 2, field 'subset'" in res.output and not (tmp_path / "ev").exists()


def test_the_loop_refuses_a_judge_method(cli, tiny_model, tmp_path):
    res = cli(["loop", "--method", "gpm", "--model", tiny_model, "--run-dir", tmp_path / "run"])
    assert res.exit_code == 2 and "selfplay train --method gpm" in res.output and not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- reading pairs


def test_pairs_from_the_formats_people_keep_them_in(tmp_path):
    from selfplay.data.preference_pairs import read_preference_pairs

    conv = lambda q, a: [{"role": "user", "content": q}, {"role": "assistant", "content": a}]  # noqa: E731
    rows = [
        # UltraFeedback-binarized: a prompt string and whole conversations
        {"prompt": "q1", "prompt_id": "u1", "chosen": conv("q1", "good"), "rejected": conv("q1", "bad"),
         "score_chosen": 8.0, "score_rejected": 3.0},
        # Skywork-Reward-Preference: conversations only
        {"chosen": conv("q2", "yes"), "rejected": conv("q2", "no"), "source": "x"},
        # TRL's preference format: answer-only message lists beside the prompt
        {"prompt": [{"role": "user", "content": "q3"}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}], "margin": 1.5},
    ]
    write_jsonl(tmp_path / "p.jsonl", rows)
    pairs = read_preference_pairs(str(tmp_path / "p.jsonl"))
    assert [(p["id"], p["prompt"][-1]["content"], p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [
        ("u1", "q1", "good", "bad", 0.0), ("pair-1", "q2", "yes", "no", 0.0), ("pair-2", "q3", "a", "b", 1.5)]


def test_ranked_samples_become_every_strictly_preferred_pair(cli, tiny_model, tmp_path):
    from selfplay.data.preference_pairs import pairs_from_ranked

    row = {"id": "r", "prompt_messages": QUESTION, "samples": ["5", "6", "five", "4", "6"],
           "scores": [1.0, 0.0, 1.0, 0.5, 0.0]}
    pairs, same = pairs_from_ranked(row)
    assert sorted((p["chosen"], p["rejected"]) for p in pairs) == sorted([
        ("5", "6"), ("5", "4"), ("5", "6"), ("five", "6"), ("five", "4"), ("five", "6"), ("4", "6"), ("4", "6")])
    assert same == 0 and len({p["id"] for p in pairs}) == len(pairs)  # 0 vs 2 and 1 vs 4 tie: left out
    skew = {"id": "s", "prompt_messages": QUESTION, "samples": ["a", "b", "a"], "win_matrix_kind": "skew_score",
            "win_matrix": [[0, 2, 0.5], [-2, 0, -1], [-0.5, 1, 0]]}
    pairs, same = pairs_from_ranked(skew)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a", "b"), ("a", "b")] and same == 1
    # selfplay rank output trains a judge directly
    write_jsonl(tmp_path / "rank.jsonl", [row, skew])
    res = cli(train_args(tiny_model, tmp_path / "rank.jsonl", tmp_path / "o", "bt-rm", "--epochs", "1"))
    assert res.exit_code == 0, res.output
    assert read_json(tmp_path / "o" / "summary.json")["examples"] == 10


# --------------------------------------------------------------------------- eval preference


def test_eval_preference_reports_accuracy_and_rewardbench_sections(cli, tiny_model, tmp_path):
    from selfplay.evals.preference import REWARDBENCH_EXAMPLE_COUNTS, REWARDBENCH_SECTIONS

    judge = random_judge(tmp_path / "j", tiny_model, dim=4, prompt_head=True, seed=1)
    subsets = ["alpacaeval-easy", "mt-bench-med", "llmbar-natural", "donotanswer", "math-prm", "hep-go", "mine"]
    rows = [{"id": f"{s}-{i}", "prompt": f"Question {i} of {s}?", "chosen": f"answer {i}", "rejected": f"reply {i}!",
             "subset": s} for s in subsets for i in range(3)]
    write_jsonl(tmp_path / "rb.jsonl", rows)
    res = cli(["eval", "preference", "-m", judge, "--data", tmp_path / "rb.jsonl", "--format", "rewardbench",
               "--out", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    metrics = read_json(tmp_path / "ev" / "metrics.json")
    scores = read_jsonl(tmp_path / "ev" / "scores.jsonl")
    acc = {s: sum(r["correct"] for r in scores if r["subset"] == s) / 3 for s in subsets}
    assert all(r["correct"] == (r["score"] > 0) for r in scores)
    assert metrics["n"] == 21 and metrics["accuracy"] == pytest.approx(sum(acc.values()) / 7)
    low, high = metrics["accuracy_ci95"]
    assert low <= metrics["accuracy"] <= high
    assert metrics["subsets"]["mine"]["accuracy"] == pytest.approx(acc["mine"])
    rb = metrics["rewardbench"]
    for section, names in REWARDBENCH_SECTIONS.items():
        present = [s for s in names if s in acc]
        weights = [REWARDBENCH_EXAMPLE_COUNTS[s] for s in present]
        expected = sum(acc[s] * w for s, w in zip(present, weights)) / sum(weights)
        assert rb["sections"][section] == pytest.approx(expected)
    assert rb["score"] == pytest.approx(sum(rb["sections"].values()) / 4)
    assert rb["unmapped_subsets"] == ["mine"] and rb["missing_sections"] == []
    # mean prob and loss at the checkpoint's tau (0.1), margins 0
    s = torch.tensor([r["score"] for r in scores])
    assert metrics["prob"] == pytest.approx(torch.sigmoid(s / 0.1).mean().item(), rel=1e-5)
    assert metrics["loss"] == pytest.approx(-torch.nn.functional.logsigmoid(s / 0.1).mean().item(), rel=1e-5)
    assert "Chat Hard" in res.output and "score" in res.output


# --------------------------------------------------------------------------- intransitive preferences


def test_gpm_fits_a_four_cycle_that_bradley_terry_cannot(cli, tiny_model, tmp_path):
    """A 4-cycle over one prompt's answers: a scalar reward orders the answers, so at most 3 of the 4 pairs are
    right; a GPM of width 2 with the default settings (unnormalised, as the anchor's trainer) fits all 4."""
    assert cli(["data", "synth", "cyclic", "--out", tmp_path / "cyc", "--num", "1", "--cycle", "4"]).exit_code == 0
    data = tmp_path / "cyc" / "train.jsonl"
    results = {}
    for method, extra in (("gpm", ["--set", "train.gpm.value_head_dim=2"]),
                          ("bt-rm", [])):
        res = cli(["train", "--method", method, "--model", tiny_model, "--data", data, "--out", tmp_path / method,
                   "--batch-size", "4", "--lr", "1e-3", "--epochs", "100", *FAST, *extra])
        assert res.exit_code == 0, res.output
        res = cli(["eval", "preference", "-m", tmp_path / method / "model", "--data", data,
                   "--out", tmp_path / f"{method}-ev"])
        assert res.exit_code == 0, res.output
        results[method] = read_json(tmp_path / f"{method}-ev" / "metrics.json")["accuracy"]
    assert results["gpm"] == 1.0
    assert results["bt-rm"] <= 0.75


# --------------------------------------------------------------------------- GPM scores as SPPO / GPO targets


def test_gpm_scores_become_sppo_and_gpo_targets_as_the_anchor_computes_them(tiny_model, tmp_path):
    """T[i][j] = s(i > j) / tau with tau from the checkpoint; SPPO: P = sigmoid(T_ij - T_ji), GPO: T_ij - T_ji,
    row means over all K columns (compute_prob_from_raw.py / compute_score_from_raw.py)."""
    from selfplay.core.judge_losses import gpm_score
    from selfplay.core.preference_model import embed, load_preference_model
    from selfplay.judges import make_judge
    from selfplay.methods.sppo import build_sppo_pairs

    path = random_judge(tmp_path / "j", tiny_model, dim=4, prompt_head=True, tau=0.5, seed=2)
    samples = ["5", "The answer is 5.", "6", "2 + 3 = 5"]
    (result,) = make_judge(f"gpm:{path}", device="cpu").score([{"id": "q", "prompt_messages": QUESTION,
                                                                 "samples": samples}])
    model, tok = load_preference_model(path, "cpu", torch.float32)
    v, b = embed(model, tok, [(QUESTION, s) for s in samples], batch_size=4, max_length=512)
    table = gpm_score(v[:, None, :], v[None, :, :], b[0]) / 0.5  # the recorded tau, not the default 0.1
    torch.testing.assert_close(torch.tensor(result["win_matrix"]), table, atol=1e-5, rtol=1e-5)
    row = {"id": "q", "prompt_messages": QUESTION, "samples": samples, **result}
    diff = table - table.T
    means = diff.mean(dim=1)
    w, l = int(means.argmax()), int(means.argmin())
    (gpo,), _ = build_sppo_pairs([row], method="gpo")
    assert (gpo["chosen"], gpo["rejected"]) == (samples[w], samples[l])
    assert gpo["chosen_prob"] == pytest.approx(means[w].item(), abs=1e-5)
    assert gpo["rejected_prob"] == pytest.approx(means[l].item(), abs=1e-5)
    (sppo,), _ = build_sppo_pairs([row], method="sppo")
    probs = torch.sigmoid(diff).mean(dim=1)
    assert sppo["chosen_prob"] == pytest.approx(probs[int(probs.argmax())].item(), abs=1e-5)
    assert math.isclose(sppo["rejected_prob"], probs.min().item(), abs_tol=1e-5)


# --------------------------------------------------------------------------- the quickstart's recipe, shrunk


def test_quickstart_gpm_recipe_end_to_end(cli, tiny_model, tmp_path):
    """configs/quickstart_gpm.yaml's commands on the tiny model: arith preference pairs, a GPM trained on them,
    its held-out accuracy, then GPO with it as the judge."""
    repo = Path(__file__).resolve().parents[1]
    data, judge = tmp_path / "prefs", tmp_path / "judge"
    assert cli(["data", "synth", "arith-prefs", "--out", data, "--num", "8", "--test-size", "2"]).exit_code == 0
    res = cli(["train", "--method", "gpm", "--model", tiny_model, "--data", data / "train.jsonl", "--out", judge,
               "--epochs", "1", "--batch-size", "8", *FAST])
    assert res.exit_code == 0, res.output
    res = cli(["eval", "preference", "-m", judge / "model", "--data", data / "test.jsonl", "--out", tmp_path / "ev"])
    assert res.exit_code == 0 and "correctness" in res.output and "style" in res.output, res.output
    assert read_json(tmp_path / "ev" / "metrics.json")["n"] == 12
    run = tmp_path / "run"
    res = cli(["loop", "--config", repo / "configs" / "quickstart_gpm.yaml", "--model", tiny_model, "--run-dir", run,
               "--iters", "1", "--set", f"rank.judge=gpm:{judge / 'model'}", "--set", "data.num=12",
               "--set", "data.eval_num=4", "--set", "loop.prompts_per_iter=4", "--set", "generate.max_new_tokens=8",
               "--set", "eval.max_new_tokens=8", "--set", "eval.num_samples=2", *FAST])
    assert res.exit_code == 0, res.output
    rows = read_jsonl(run / "eval" / "iterations.jsonl")
    assert [r["iteration"] for r in rows] == ["base", 0]
    ranked = read_jsonl(run / "iter_0" / "rank.jsonl")
    assert all(r["win_matrix_kind"] == "skew_score" for r in ranked)
    assert yaml_of(run / "config.yaml")["method"] == "gpo"


@pytest.mark.distributed
def test_two_processes_train_a_judge_like_one_with_accumulation(tiny_model, tmp_path):
    from test_distributed import ATOL, run_cli, weights

    pairs = make_pairs(tmp_path / "pairs.jsonl", n=16)
    common = ["train", "--method", "gpm", "--model", tiny_model, "--data", pairs, "--lr", "1e-3", "--batch-size", 2,
              "--set", "train.gpm.value_head_dim=4", "--set", "train.gpm.prompt_head=true", *FAST]
    run_cli([*common, "--out", tmp_path / "one", "--grad-accum", 2])
    run_cli([*common, "--out", tmp_path / "two", "--set", "launch.num_processes=2"])
    one, two = (read_json(tmp_path / d / "summary.json") for d in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2) and one["steps"] == two["steps"] == 8
    m1, m2 = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert all(abs(a["loss"] - b["loss"]) < 1e-5 for a, b in zip(m1, m2))
    w1, w2 = weights(tmp_path / "one" / "model"), weights(tmp_path / "two" / "model")
    assert w1.keys() == w2.keys() and {"value_head.weight", "prompt_head.weight"} <= set(w1)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 10 * ATOL


def test_a_judge_run_cut_off_resumes_from_its_checkpoint(cli, tiny_model, tmp_path, monkeypatch):
    """Killed after its last checkpoint (here: just before the final save), a rerun resumes there, logs no step
    twice and ends with the weights of an uninterrupted run (batch order, optimizer and schedule restored)."""
    import selfplay.stages.train as train_mod
    from test_distributed import weights

    pairs = make_pairs(tmp_path / "pairs.jsonl", n=12)
    args = lambda out: train_args(tiny_model, pairs, out, "gpm", "--batch-size", "2", "--epochs", "1",  # noqa: E731
                                  "--set", "train.save_steps=4", "--set", "train.gpm.prompt_head=true")
    assert cli(args(tmp_path / "whole")).exit_code == 0

    class Killed(Exception):
        pass

    def killed(*a, **k):
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(train_mod, "finish", killed)
        with pytest.raises(Killed):
            cli(args(tmp_path / "cut"))
    assert read_json(tmp_path / "cut" / "checkpoint" / "trainer_state.json")["step"] == 4
    res = cli(args(tmp_path / "cut"))
    assert res.exit_code == 0 and "resuming training at step 4" in res.output, res.output
    assert [m["step"] for m in read_jsonl(tmp_path / "cut" / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    whole, cut = weights(tmp_path / "whole" / "model"), weights(tmp_path / "cut" / "model")
    assert max((whole[k] - cut[k]).abs().max().item() for k in whole) < 1e-6
