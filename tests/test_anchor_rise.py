"""RISE against its anchor's code (cmu-mind/RISE), on ports of the anchor's own functions: the sequential
evaluation's context window (``workflow_eval.py``), the conversion into ``finetune.json``
(``workflow_convert.py``) and its weights reaching training, and a RISE log in the anchor's format built
from real GSM8K rows."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from selfplay.envs.answer_envs import ENVS, FIRST_OBSERVATION, RETRY_FEEDBACK
from selfplay.io import read_jsonl


# --------------------------------------------------------------------------- workflow_eval.py: the context window


def anchor_eval_dialogue(one_shot: list[dict], init_observation: str, best_observations: list[str],
                         best_actions: list[str], turn: int, context_window: int) -> list[dict]:
    """workflow_eval.py:84-87 (the slicing) and :63-70 (construct_policy_dialogue), roles as ours."""
    if turn < context_window:
        observations, actions = [init_observation] + best_observations, best_actions
    else:
        observations = [init_observation] + best_observations[-context_window + 1:]
        actions = best_actions[-context_window + 1:]
    dialogue = copy.deepcopy(one_shot)
    for i in range(len(actions)):
        dialogue.append({"role": "user", "content": observations[i]})
        dialogue.append({"role": "assistant", "content": actions[i]})
    dialogue.append({"role": "user", "content": observations[-1]})
    return dialogue


def window_prompts(context_window: int, turns: int = 6) -> list[tuple[list[dict], list[dict]]]:
    """(ours, the anchor's) prompt of every turn of a sequential episode answering a0, a1, ..."""
    from selfplay.evals.multiturn import sequential_prompt

    env = ENVS["gsm8k"]
    rec = {"id": "q", "messages": [{"role": "user", "content": "Q?"}], "reference": "#### 1", "meta": {}}
    one_shot = env.reset(rec)[:2]
    answers = [f"a{i}" for i in range(turns)]
    out = []
    for t in range(turns):
        ours = sequential_prompt(env, rec, answers[:t], context_window)
        anchor = anchor_eval_dialogue(one_shot, FIRST_OBSERVATION.format(question="Q?"),
                                      [RETRY_FEEDBACK.format(question="Q?")] * t, answers[:t], t, context_window)
        out.append((ours, anchor))
    return out


def attempts(prompt: list[dict]) -> list[str]:
    return [m["content"] for m in prompt[3:] if m["role"] == "assistant"]


@pytest.mark.parametrize("window", [2, 3, 4, 5])
def test_sequential_prompt_is_the_anchors_for_windows_2_to_5(window: int) -> None:
    for t, (ours, anchor) in enumerate(window_prompts(window)):
        assert ours == anchor, (window, t)
        assert attempts(ours) == [f"a{i}" for i in range(max(0, t - (window - 1)), t)]


def test_window_4_keeps_both_earlier_attempts_at_turn_3() -> None:
    """The bug of issue 22: window 4 at the third turn kept [a1] (a negative slice start), not [a0, a1]."""
    ours, anchor = window_prompts(4)[2]
    assert attempts(ours) == attempts(anchor) == ["a0", "a1"]


def test_window_1_shows_no_earlier_attempt_where_the_anchor_shows_all() -> None:
    """A deliberate difference: the anchor's history[-1 + 1:] is history[0:] (all of it)."""
    for t, (ours, anchor) in enumerate(window_prompts(1)):
        assert attempts(ours) == []
        assert attempts(anchor) == [f"a{i}" for i in range(t)]


# --------------------------------------------------------------------------- a RISE log in the anchor's format


def anchor_gsm8k_reward(action: str, solution: str) -> int:
    """environments/gsm8k.py:47-96 (extract_answers_from_llm, extract_answers, evaluate_response)."""
    import re

    matches = re.findall(r"boxed{([^}]+)}", action)
    try:
        answer = int(matches[-1].replace(",", "")) if matches else None
    except ValueError:
        answer = None
    gold = re.search(r"####\s*([-+]?\d+(?:\.\d+)?)", solution).group(1)
    if answer is None:
        return -1
    return 1 if float(answer) == float(gold) else 0


# Per problem, the answers of turns 1..3 (an episode stops at its first correct answer). {g} is the gold
# number: wrong then right, unparsable then right, a repeated wrong answer and a blank one, never right.
SCRIPTS = [["\\boxed{{{w}}}", "So \\boxed{{{g}}}."], ["I am not sure.", "\\boxed{{{g}}}"],
           ["\\boxed{{{w}}}", "\\boxed{{{w}}}", "   "], ["\\boxed{{{g}}}"], ["no idea", "\\boxed{{{w}}}", "\\boxed{{{w}}}"]]


def build_anchor_log(rows: list[dict]) -> dict:
    """What workflow_gen.py:96-164 writes for scripted answers, with the anchor's own rewards and texts."""
    log = {}
    for idx, row in enumerate(rows):
        gold = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        script = [s.format(g=gold, w=int(float(gold)) + 7) for s in SCRIPTS[idx % len(SCRIPTS)]]
        history = {"best_actions": [], "actions": {}, "best_observations": [], "observations": {},
                   "best_rewards": [], "rewards": {}}
        for turn, action in enumerate(script):
            reward = anchor_gsm8k_reward(action, row["answer"])
            observation = ("Great job! You've successfully answered the question." if reward == 1 else
                           f"The answer is incorrect. Please try again. Here's the question: {row['question']}")
            history["actions"][turn], history["rewards"][turn] = [action], [reward]
            history["observations"][turn] = [observation]
            history["best_actions"].append(action)
            history["best_rewards"].append(reward)
            history["best_observations"].append(observation)
            if reward == 1:
                break
        log[idx] = {"task_id": idx, "query": row["question"], "answer": row["answer"],
                    "max_reward": max(history["best_rewards"]), "turn_history": history, "dialogue": []}
    return json.loads(json.dumps(log))  # int keys become strings, as json.dump writes them


def anchor_convert(log: dict, one_shot: tuple[str, str], *, criteria: str, remove_duplication: bool,
                   only_success: bool, temperature: float = 0.4) -> list[list[dict]]:
    """workflow_convert.py:34-156 (init_conversation, skip_dialogue, remove_duplication, convert_to_data,
    exp_dataset_reward), line for line but for the globals."""
    def remove_duplication_(actions, observations, rewards):
        seen = set()
        for i in range(len(actions)):
            actions[i] = actions[i].strip()
            if actions[i] in seen or actions[i] == "":
                actions[i] = observations[i] = rewards[i] = None
            else:
                seen.add(actions[i])
        return ([a for a in actions if a is not None], [o for o in observations if o is not None],
                [r for r in rewards if r is not None])

    dataset = []
    for key in log:
        entry = log[key]
        if only_success and entry["max_reward"] != 1.0:
            continue
        history = copy.deepcopy(entry["turn_history"])
        actions, observations, rewards = history["best_actions"], history["best_observations"], history["best_rewards"]
        if remove_duplication:
            actions, observations, rewards = remove_duplication_(actions, observations, rewards)
        conversations = [{"from": "human", "value": one_shot[0], "loss": 0.0},
                         {"from": "gpt", "value": one_shot[1], "loss": 0.0},
                         {"from": "human", "value": "Great job! You've successfully answered the question. "
                                                    f"Now, let's move on to the next one.\n{entry['query']}", "loss": 0.0}]
        for i in range(len(actions)):
            conversations.append({"from": "gpt", "value": actions[i], "loss": rewards[i]})
            if i < 1 and criteria != "success":
                dataset.append(copy.deepcopy(conversations))
            else:
                keep = True
                if criteria == "best":
                    keep = not any(rewards[i] < rewards[j] for j in range(i))
                elif criteria == "better":
                    keep = rewards[i] > rewards[i - 1]
                elif criteria == "success":
                    keep = rewards[i] == 1.0
                if keep:
                    dataset.append(copy.deepcopy(conversations))
            if conversations[-1]["loss"] == 1.0:
                break
            conversations[-1]["loss"] = 0.0
            conversations.append({"from": "human", "value": observations[i], "loss": 0.0})
    for conversation in dataset:
        conversation[-1]["loss"] = np.exp(conversation[-1]["loss"] / temperature)
    return dataset


@pytest.fixture(scope="module")
def anchor_log_file(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    log = build_anchor_log(read_jsonl(shared_data / "gsm8k" / "train_500.jsonl")[:15])
    path = tmp_path_factory.mktemp("rise_log") / "2_turns.json"
    path.write_text(json.dumps(log, indent=2))
    return path, log


@pytest.mark.parametrize("criteria", ["all", "better", "best", "success"])
@pytest.mark.parametrize("dedupe", [True, False])
@pytest.mark.parametrize("only_success", [False, True])
def test_convert_writes_the_anchors_finetune_json(anchor_log_file, cli, tmp_path: Path, criteria: str,
                                                  dedupe: bool, only_success: bool) -> None:
    from selfplay.envs.answer_envs import get_env

    path, log = anchor_log_file
    env = get_env("gsm8k", "anchor")  # the anchor's one-shot text, byte for byte
    rec = {"id": "x", "messages": [{"role": "user", "content": "x"}], "reference": "", "meta": {}}
    one_shot = (env.reset(rec)[0]["content"], env.reset(rec)[1]["content"])
    expected = anchor_convert(log, one_shot, criteria=criteria, remove_duplication=dedupe, only_success=only_success)
    # The anchor trains a blank answer (--keep-duplicates); selfplay drops it at conversion (train refuses it).
    expected = [c for c in expected if c[-1]["value"].strip()]
    out = tmp_path / "finetune.json"
    args = ["rollout", "convert", path, "--out", out, "--env", "gsm8k", "--criteria", criteria, "--format", "rise",
            "--no-shuffle", "--remove-duplicates" if dedupe else "--keep-duplicates",
            "--only-success" if only_success else "--all-episodes", "--set", "rise.rewards=anchor"]
    result = cli(args)
    assert result.exit_code == 0, result.output
    ours = json.loads(out.read_text())
    assert [r["id"] for r in ours] == [f"identity_{i}" for i in range(len(ours))]
    assert [r["conversations"] for r in ours] == expected
    if not dedupe and not only_success:  # the blank answer's episode is never solved
        assert "3 blank answers not trained" in result.output


def test_finetune_json_weights_reach_training(anchor_log_file, cli, tmp_path: Path) -> None:
    """data prepare reads finetune.json with its per-message weights; train reads them as record weights."""
    from selfplay.core.examples import load_examples
    from selfplay.data.records import load_sft

    path, log = anchor_log_file
    finetune = tmp_path / "finetune.json"
    assert cli(["rollout", "convert", path, "--out", finetune, "--env", "gsm8k", "--format", "rise",
                "--no-shuffle"]).exit_code == 0
    rows = json.loads(finetune.read_text())
    result = cli(["data", "prepare", finetune, "--out", tmp_path / "prepared"])
    assert result.exit_code == 0, result.output
    records = load_sft(tmp_path / "prepared")
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    for rec, row in zip(records, rows):
        assert rec["meta"]["weight"] == row["conversations"][-1]["loss"]
        assert rec["reference"] == row["conversations"][-1]["value"]
        assert [m["content"] for m in rec["messages"]] == [m["value"] for m in row["conversations"][:-1]]
    weights = sorted({round(r["meta"]["weight"], 6) for r in records})
    assert weights == [round(math.exp(r / 0.4), 6) for r in (-1, 0, 1)]
    examples = load_examples(tmp_path / "prepared", "single", ("weight",))
    assert [e.values["weight"] for e in examples] == [r["meta"]["weight"] for r in records]
    assert [e.prompt for e in examples] == [r["messages"] for r in records]


def test_export_writes_the_anchors_log_and_reads_it_back(anchor_log_file, cli, tmp_path: Path) -> None:
    from selfplay.methods.rise import read_episodes

    path, log = anchor_log_file
    episodes = read_episodes(path)
    jsonl = tmp_path / "episodes.jsonl"
    jsonl.write_text("".join(json.dumps({**ep, "env": "gsm8k"}) + "\n" for ep in episodes))
    out = tmp_path / "log.json"
    assert cli(["rollout", "export", jsonl, "--format", "rise", "--out", out]).exit_code == 0
    exported = json.loads(out.read_text())
    assert list(exported) == list(log)
    for key in log:
        for field in ("query", "answer", "max_reward", "turn_history"):
            assert exported[key][field] == log[key][field]
    # and it converts as the original does
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for src, dst in ((path, a), (out, b)):
        assert cli(["rollout", "convert", src, "--out", dst, "--env", "gsm8k", "--no-shuffle"]).exit_code == 0
    assert read_jsonl(a) == read_jsonl(b)


# --------------------------------------------------------------------------- rewards: GSM8K edge answers, MATH


# (attempt, gold solution, selfplay's reward, the anchor's reward): every row where the two rules differ, and
# some where they agree. docs/anchor-differences.md carries this table.
GSM8K_EDGES = [
    ("so \\boxed{18}.", "#### 18", 1, 1),
    ("\\boxed{1,234}", "#### 1234", 1, 1),
    ("\\boxed{-3}", "#### -3", 1, 1),
    ("\\boxed{18.00}", "#### 18", 1, -1),      # int("18.00") fails in the anchor
    ("\\boxed{$18}", "#### 18", 1, -1),        # int("$18") fails
    ("\\boxed{\\$18}", "#### 18", 1, -1),
    ("\\boxed{+18}", "#### 18", 1, 1),         # was -1 here before issue 22
    ("boxed{18}", "#### 18", 1, 1),            # the backslash dropped: the anchor's regex takes it (was -1)
    ("\\boxed{18} and then \\boxed{}", "#### 18", 1, 1),  # a trailing empty box (was -1)
    ("\\boxed {18}", "#### 18", 1, -1),        # a space before the brace: the anchor's regex misses it
    ("\\boxed{18 apples}", "#### 18", -1, -1),
    ("The answer is 18.", "#### 18", -1, -1),
    ("\\boxed{\\frac{36}{2}}", "#### 18", -1, -1),
    ("\\boxed{17}", "#### 18", 0, 0),
]


@pytest.mark.parametrize("attempt, solution, ours, anchor", GSM8K_EDGES)
def test_gsm8k_edge_answers_both_rules(attempt: str, solution: str, ours: int, anchor: int) -> None:
    from selfplay.envs.answer_envs import get_env

    assert anchor_gsm8k_reward(attempt, solution) == anchor  # the anchor's own code (ported above)
    assert ENVS["gsm8k"].reward(attempt, solution) == ours
    assert get_env("gsm8k", "anchor").reward(attempt, solution) == anchor


def test_gsm8k_gold_with_thousands_separator() -> None:
    """The anchor's gold regex reads "#### 43,500" as 43; both our rules read 43500 (kept: it is right)."""
    from selfplay.envs.answer_envs import get_env

    assert anchor_gsm8k_reward("\\boxed{43}", "#### 43,500") == 1
    for rules in ("selfplay", "anchor"):
        env = get_env("gsm8k", rules)
        assert env.reward("\\boxed{43,500}", "#### 43,500") == 1 and env.reward("\\boxed{43}", "#### 43,500") == 0


def test_math_rules_on_real_rows(shared_data: Path) -> None:
    """The anchor's MATH check (math.py:50-66, math_equivalence.py): its string normalisation, and 0 for an
    answer without a box; ours: math-verify, -1 without a box."""
    pytest.importorskip("math_verify")
    from selfplay.data.answers import last_boxed
    from selfplay.envs.answer_envs import get_env

    anchor, ours = get_env("math", "anchor"), ENVS["math"]
    rows = read_jsonl(shared_data / "math" / "test_200.jsonl")[:40]
    for row in rows:
        gold = last_boxed(row["solution"])
        right = f"Therefore the answer is $\\boxed{{{gold}}}$."
        assert anchor.reward(right, gold) == ours.reward(right, gold) == 1.0, gold
        assert anchor.reward("\\boxed{-987654}", gold) == ours.reward("\\boxed{-987654}", gold) == 0.0
        assert anchor.reward("I do not know.", gold) == 0.0 and ours.reward("I do not know.", gold) == -1.0
    # string normalisation: what it equates, and what it does not
    assert anchor.reward("\\boxed{0.5}", "\\frac{1}{2}") == 1.0
    assert anchor.reward("\\boxed{\\dfrac12}", "\\frac{1}{2}") == 1.0
    assert anchor.reward("\\boxed{10\\text{ cm}}", "10") == 1.0
    assert anchor.reward("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}") == 0.0 and ours.reward("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}") == 1.0
    assert anchor.reward("\\boxed{x = 3}", "3") == 1.0
    # its box regex keeps one level of nested braces: both sides cut to "\\frac{\\sqrt{3}"
    assert anchor.reward("\\boxed{\\frac{\\sqrt{3}}{5}}", "\\frac{\\sqrt{3}}{2}") == 1.0
    assert ours.reward("\\boxed{\\frac{\\sqrt{3}}{5}}", "\\frac{\\sqrt{3}}{2}") == 0.0


def test_anchor_rule_prompts_are_the_anchors_template() -> None:
    """rise.rewards=anchor also takes the anchor's one-shot text byte for byte (utils/template.py wraps the
    instruction in newlines); the default keeps it stripped."""
    from selfplay.envs.answer_envs import get_env

    rec = {"id": "q", "messages": [{"role": "user", "content": "Q?"}], "reference": "#### 1", "meta": {}}
    anchor, ours = get_env("gsm8k", "anchor").reset(rec), ENVS["gsm8k"].reset(rec)
    assert anchor[0]["content"] == "\n" + ours[0]["content"] + "\n" and anchor[0]["content"].startswith("\nYou are an AI")
    assert anchor[1:] == ours[1:]


def test_rewards_option_is_checked(cli) -> None:
    result = cli(["config", "show", "--set", "method=rise", "--set", "rise.env=arith", "--set", "rise.rewards=anchor"])
    assert result.exit_code == 2 and "rise.rewards 'anchor'" in result.output and "selfplay" in result.output
    result = cli(["config", "show", "--set", "method=rise", "--set", "rise.env=math", "--set", "rise.rewards=anchr"])
    assert result.exit_code == 2 and "anchor" in result.output
    assert cli(["config", "show", "--set", "method=rise", "--set", "rise.env=math",
                "--set", "rise.rewards=anchor"]).exit_code == 0


def test_weighted_loss_is_fastchats_weighted_mean() -> None:
    """cmu-mind/RISE FastChat train.py:44-70: each sample's mean token loss times its reward weight, then the
    batch mean."""
    import torch

    from selfplay.core.losses import weighted_nll_loss

    logps, ntok = torch.tensor([-12.0, -3.0, -8.0]), torch.tensor([4, 3, 2])
    weights = torch.tensor([math.exp(1 / 0.4), 1.0, math.exp(-1 / 0.4)])
    per_sample = [12.0 / 4, 3.0 / 3, 8.0 / 2]
    expected = sum(w * l for w, l in zip(weights.tolist(), per_sample)) / 3
    assert weighted_nll_loss(logps, weights, ntok).item() == pytest.approx(expected, rel=1e-6)


def test_finetune_json_trains_with_its_weights(anchor_log_file, cli, tiny_model: Path, tmp_path: Path) -> None:
    """finetune.json -> data prepare -> train --loss weighted: every step logs the mean weight of its batch,
    and the warm-up in steps (the agent anchors' 100) overrides the ratio."""
    path, _ = anchor_log_file
    finetune = tmp_path / "finetune.json"
    assert cli(["rollout", "convert", path, "--out", finetune, "--env", "gsm8k", "--format", "rise"]).exit_code == 0
    assert cli(["data", "prepare", finetune, "--out", tmp_path / "prepared"]).exit_code == 0
    weights = [json.loads(line)["meta"]["weight"] for line in (tmp_path / "prepared" / "train.jsonl").open()]
    out = tmp_path / "out"
    result = cli(["train", "--model", tiny_model, "--data", tmp_path / "prepared", "--out", out, "--method", "rise",
                  "--loss", "weighted", "--batch-size", str(len(weights)), "--grad-accum", "1", "--epochs", "2", "--lr", "1e-3",
                  "--set", "train.precision=fp32", "--set", "train.logging_steps=1", "--set", "train.warmup_steps=4",
                  "--set", "train.max_length=256", "--set", "train.max_prompt_length=200"])
    assert result.exit_code == 0, result.output
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["weight"] for m in metrics] == pytest.approx([sum(weights) / len(weights)] * 2, rel=1e-5)
    assert [m["lr"] for m in metrics[:2]] == pytest.approx([1e-3 * 1 / 4, 1e-3 * 2 / 4])  # linear warm-up over 4 steps
    result = cli(["train", "--model", tiny_model, "--data", tmp_path / "prepared", "--out", tmp_path / "o2",
                  "--method", "rise", "--loss", "rwr", "--max-steps", "1"])
    assert result.exit_code == 2 and "reward" in result.output  # prepared records carry weights, not rewards
