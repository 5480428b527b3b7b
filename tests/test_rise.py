"""RISE: environment rewards, conversion criteria, the anchor's log format, multi-turn evaluation on a
scripted policy, rollouts (degenerate filter, teachers behind a URL, kill and resume), and the loop."""

from __future__ import annotations

import dataclasses
import json
import re
import os
import signal
import time
from pathlib import Path

import cli_process
import pytest

from selfplay.envs.answer_envs import ENVS, RETRY_FEEDBACK, is_degenerate
from selfplay.errors import DataError, UserError
from selfplay.io import read_jsonl, write_jsonl

TINY = ["--set", "data.num=14", "--set", "data.eval_num=4", "--set", "generate.max_new_tokens=12",
        "--set", "generate.batch_size=4", "--set", "train.batch_size=4", "--set", "train.grad_accum=1",
        "--set", "train.precision=fp32", "--set", "eval.max_new_tokens=12", "--set", "train.logging_steps=1",
        "--set", "rise.eval_turns=3", "--set", "rise.eval_parallel=2", "--set", "train.max_length=256",
        "--set", "train.max_prompt_length=200"]


def record(question: str, reference: str, rid: str = "p0", task: str = "gsm8k") -> dict:
    return {"id": rid, "messages": [{"role": "user", "content": question}], "reference": reference,
            "meta": {"task": task}}


# --------------------------------------------------------------------------- environments


def test_gsm8k_rewards_on_real_rows(shared_data: Path) -> None:
    rows = read_jsonl(shared_data / "gsm8k" / "test_200.jsonl")[:20]
    env = ENVS["gsm8k"]
    for row in rows:
        gold = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert env.reward(f"Steps... so the answer is \\boxed{{{gold}}}.", row["answer"]) == 1.0
        assert env.reward(f"\\boxed{{{int(float(gold)) + 1}}}", row["answer"]) == 0.0
        assert env.reward(f"The answer is {gold}.", row["answer"]) == -1.0  # not boxed: unparsable for the anchor
    assert env.reward("\\boxed{1,234}", "#### 1234") == 1.0  # commas dropped like the anchor


def test_math_rewards_on_real_rows(shared_data: Path) -> None:
    pytest.importorskip("math_verify")
    from selfplay.data.answers import last_boxed

    env = ENVS["math"]
    rows = read_jsonl(shared_data / "math" / "test_200.jsonl")[:15]
    for row in rows:
        answer = last_boxed(row["solution"])
        assert env.reward(f"Therefore the answer is $\\boxed{{{answer}}}$.", row["solution"]) == 1.0
        assert env.reward("so the answer is \\boxed{-987654}", row["solution"]) == 0.0
        assert env.reward("I do not know.", row["solution"]) == -1.0


def test_math_set_valued_reference_matches_itself() -> None:
    pytest.importorskip("math_verify")
    from selfplay.envs.verifiers import check_math

    reference = "the possible values of d are \\boxed{5 - 10i}, \\boxed{11}, \\boxed{-3 + 6i}."
    assert check_math(reference, reference)
    assert ENVS["math"].reward("So d is \\boxed{11}, \\boxed{-3+6i} or \\boxed{5-10i}.", reference) == 1.0
    assert ENVS["math"].reward("d = \\boxed{11}", reference) == 0.0
    # a box earlier in the text (an intermediate result) is not part of the final answer
    assert not check_math("\\boxed{3}", "First \\boxed{3}. Then the total is \\boxed{7}.")


def test_conversation_and_feedback_texts() -> None:
    env = ENVS["gsm8k"]
    rec = record("How many?", "#### 3")
    start = env.reset(rec)
    assert [m["role"] for m in start] == ["user", "assistant", "user"]
    assert start[2]["content"].endswith("Now, let's move on to the next one.\nHow many?")
    assert "\\boxed{17}" in start[1]["content"]
    step = env.step(rec, "\\boxed{4}")
    assert (step.reward, step.done) == (0.0, False)
    assert step.feedback == "The answer is incorrect. Please try again. Here's the question: How many?"
    assert env.step(rec, "\\boxed{3}").done


def test_degenerate_filter() -> None:
    assert is_degenerate("the " * 151) and not is_degenerate("the " * 150)
    assert is_degenerate("x" * 301) and not is_degenerate("a normal answer \\boxed{3}")


# --------------------------------------------------------------------------- conversion criteria


def episode(rewards: list[float], actions: list[str] | None = None) -> dict:
    actions = actions or [f"answer {i}" for i in range(len(rewards))]
    obs = ["ok" if r == 1 else RETRY_FEEDBACK.format(question="q") for r in rewards]
    return {"id": "e", "query": "q", "turn_history": {"best_actions": actions, "best_observations": obs,
                                                      "best_rewards": rewards}}


@pytest.mark.parametrize("rewards, criteria, kept", [
    ([0, -1, 0, 1], "all", [0, 1, 2, 3]),
    ([0, -1, 0, 1], "better", [0, 2, 3]),      # turn 1 (-1) is worse than turn 0; turn 2 beats turn 1
    ([0, -1, 0, 1], "best", [0, 2, 3]),        # turn 1 is beaten by turn 0
    ([0, -1, 0, 1], "success", [3]),
    ([-1, 0, 0], "better", [0, 1]),            # turn 2 only ties turn 1
    ([-1, 0, 0], "best", [0, 1, 2]),
    ([1, 0], "all", [0]),                      # an episode ends at its first correct turn
    ([0, 0], "success", []),
])
def test_criteria_on_hand_built_trajectories(rewards: list[float], criteria: str, kept: list[int]) -> None:
    from selfplay.methods.rise import convert_episode

    start = [{"role": "user", "content": "question"}]
    out = convert_episode(start, episode(rewards), criteria, remove_duplicates=False)
    assert [a for _, a, _ in out] == [f"answer {i}" for i in kept]
    assert [r for _, _, r in out] == [rewards[i] for i in kept]
    for context, action, _ in out:  # the context holds every earlier answer and its feedback
        turn = int(action.split()[-1])
        assert len(context) == 1 + 2 * turn and context[0] == start[0]
        assert all(m["role"] == ("assistant" if i % 2 == 1 else "user") for i, m in enumerate(context))


def test_remove_duplicates_drops_repeated_and_empty_answers() -> None:
    from selfplay.methods.rise import convert_episode

    ep = episode([0, 0, 0, 1], ["same", " same ", "", "right"])
    out = convert_episode([{"role": "user", "content": "q"}], ep, "all", remove_duplicates=True)
    assert [a for _, a, _ in out] == ["same", "right"]


def test_anchor_log_reads_and_converts(tmp_path: Path, cli) -> None:
    """The anchor's log JSON ({idx: {query, dialogue, turn_history, max_reward}}) converts with our criteria."""
    log = {"0": {"task_id": 0, "query": "Tom has 3 apples and buys 4. How many?", "answer": "#### 7",
                 "max_reward": 1.0, "dialogue": [],
                 "turn_history": {"best_actions": ["\\boxed{6}", "\\boxed{7}"],
                                  "best_observations": [RETRY_FEEDBACK.format(question="q"), "Great job!"],
                                  "best_rewards": [0.0, 1.0], "actions": {"0": ["\\boxed{6}"]},
                                  "rewards": {"0": [0.0]}, "observations": {"0": ["..."]}}},
           "1": {"task_id": 1, "query": "What is 2+2?", "answer": "#### 4", "max_reward": -1.0,
                 "turn_history": {"best_actions": ["no idea"], "best_observations": ["retry"], "best_rewards": [-1.0]}}}
    path = tmp_path / "2_turns.json"
    path.write_text(json.dumps(log))
    res = cli(["rollout", "convert", path, "--out", tmp_path / "train.jsonl", "--criteria", "better"])
    assert res.exit_code == 2 and "--env" in res.output  # an anchor log does not say its environment
    res = cli(["rollout", "convert", path, "--out", tmp_path / "train.jsonl", "--env", "gsm8k",
               "--criteria", "better", "--no-shuffle"])
    assert res.exit_code == 0, res.output
    rows = read_jsonl(tmp_path / "train.jsonl")
    assert [(r["id"], r["response"], r["reward"]) for r in rows] == [
        ("0#t0@it0", "\\boxed{6}", 0.0), ("0#t1@it0", "\\boxed{7}", 1.0), ("1#t0@it0", "no idea", -1.0)]
    assert rows[1]["prompt"][-2:] == [{"role": "assistant", "content": "\\boxed{6}"},
                                      {"role": "user", "content": RETRY_FEEDBACK.format(question="q")}]
    assert "drama club" in rows[0]["prompt"][0]["content"]  # the anchor's one-shot example first
    broken = {"7": {"query": "q", "turn_history": {"best_actions": ["a"], "best_observations": [],
                                                   "best_rewards": ["x"]}}}
    path.write_text(json.dumps(broken))
    res = cli(["rollout", "convert", path, "--out", tmp_path / "t2.jsonl", "--env", "gsm8k"])
    assert res.exit_code == 2 and "2_turns.json" in res.output and "entry '7'" in res.output
    assert "best_rewards" in res.output


# --------------------------------------------------------------------------- scripted policies


class Scripted:
    """A turn model answering from a table: answers[problem id][call number] (the last repeats)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers, self.calls = answers, {k: 0 for k in answers}
        self.seen: list[list[dict]] = []

    def respond(self, conversations, n, seed, ids):
        out = []
        for conv, pid in zip(conversations, ids):
            self.seen.append(conv)
            script = self.answers[pid]
            texts = []
            for _ in range(n):
                texts.append(script[min(self.calls[pid], len(script) - 1)])
                self.calls[pid] += 1
            out.append(texts)
        return out


def test_sequential_evaluation_metrics_exactly() -> None:
    from selfplay.evals.multiturn import evaluate_multiturn

    env = ENVS["arith"]
    recs = [record(f"q{i}", f"#### {i + 1}", rid=f"p{i}", task="arith") for i in range(4)]
    answers = {  # turn answers per problem; the gold answer of p_i is i + 1
        "p0": ["\\boxed{1}", "\\boxed{9}", "\\boxed{9}"],       # right at turn 1, then a wrong majority
        "p1": ["\\boxed{5}", "\\boxed{2}", "\\boxed{2}"],       # right from turn 2 on
        "p2": ["no number", "\\boxed{7}", "\\boxed{3}"],       # unparsable, wrong, right
        "p3": ["\\boxed{4}", "\\boxed{8}", "\\boxed{8}"],       # right, then wrong twice
    }
    policy = Scripted(answers)
    m = evaluate_multiturn(env, policy.respond, recs, turns=3, context_window=2, parallel=0, seed=0)
    seq = m["sequential"]
    assert seq["acc"] == [0.5, 0.25, 0.5]
    assert seq["oracle"] == [0.5, 0.75, 1.0]
    # majority over turns <= t (ties: first seen): t1 p0,p3 right; t2 p0 (1 vs 9 tie -> 1), p1 (5 vs 2 -> 5 wrong),
    # p2 (7 only) wrong, p3 (4 vs 8 -> 4) right; t3 p0 9 wins, p1 2 wins, p2 7 vs 3 -> 7, p3 8 wins
    assert seq["majority"] == [0.5, 0.5, 0.25]
    # Turn against turn: t2 fixes p1 and breaks p0, p3; t3 fixes p2. Turn 1 -> 3: p1, p2 fixed; p0, p3 broken.
    assert seq["fixed"] == [0.0, 0.25, 0.25] and seq["broken"] == [0.0, 0.5, 0.0]
    assert [a - b for a, b in zip(seq["acc"][1:], seq["acc"])] == [f - b for f, b in zip(seq["fixed"][1:],
                                                                                         seq["broken"][1:])]
    assert seq["first_to_last"] == {"fixed": 0.5, "broken": 0.5}
    # Per problem, the iteration-table columns (0/1), from which intervals and paired changes are computed.
    assert m["outcomes"]["p0"] == {"mt_acc_t1": 1.0, "mt_acc_tlast": 0.0, "mt_oracle": 1.0, "mt_majority": 0.0,
                                   "mt_fixed": 0.0, "mt_broken": 1.0}
    assert m["outcomes"]["p2"] == {"mt_acc_t1": 0.0, "mt_acc_tlast": 1.0, "mt_oracle": 1.0, "mt_majority": 0.0,
                                   "mt_fixed": 1.0, "mt_broken": 0.0}
    assert [sum(o["mt_acc_tlast"] for o in m["outcomes"].values()) / 4] == seq["acc"][-1:]
    # the context window of 2 keeps only the previous attempt, and the feedback never says "correct"
    third_turn_prompts = policy.seen[8:]
    assert all(len(p) == 5 for p in third_turn_prompts)  # one-shot (2) + question + 1 attempt + feedback
    assert third_turn_prompts[0][3]["content"] == "\\boxed{9}"
    assert all("incorrect" in p[4]["content"] for p in third_turn_prompts)


def test_parallel_evaluation() -> None:
    from selfplay.evals.multiturn import evaluate_multiturn

    env = ENVS["arith"]
    recs = [record("q", "#### 3", rid="a", task="arith"), record("q2", "#### 5", rid="b", task="arith")]
    policy = Scripted({"a": ["\\boxed{3}", "\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "\\boxed{1}"],
                       "b": ["\\boxed{1}", "\\boxed{2}", "\\boxed{1}", "\\boxed{1}", "\\boxed{1}"]})
    m = evaluate_multiturn(env, policy.respond, recs, turns=1, context_window=2, parallel=4, seed=0)
    # a: turn 1 right; parallel draws 1, 2, 3, 1 -> pass, majority "1" wrong. b: wrong; parallel 2, 1, 1, 1 -> no 5
    assert m["sequential"]["acc"] == [0.5]
    assert m["parallel"] == {"pass": 0.5, "majority": 0.0, "samples": 4}
    assert m["outcomes"]["a"]["mt_pass_parallel"] == 1.0 and m["outcomes"]["a"]["mt_maj_parallel"] == 0.0
    assert m["outcomes"]["b"]["mt_pass_parallel"] == 0.0


def _cfg(**rise):
    from selfplay.methods import load_config

    cfg = load_config(None, ["method=rise", "rise.env=arith"])
    return dataclasses.replace(cfg, rise=dataclasses.replace(cfg.rise, **rise))


def test_rollout_best_of_n_stop_at_correct_and_degenerate_resampling(tmp_path: Path) -> None:
    from selfplay.stages.rollout import run_rollout

    data = tmp_path / "d.jsonl"
    write_jsonl(data, [record("q0", "#### 2", "p0", "arith"), record("q1", "#### 3", "p1", "arith")])
    loop_text = "loop " * 200
    policy = Scripted({
        "p0": ["\\boxed{1}", "\\boxed{5}", "\\boxed{2}", "\\boxed{2}"],        # turn 1 wrong; turn 2: best of 3
        "p1": [loop_text, loop_text, "\\boxed{3}", "\\boxed{4}", "\\boxed{4}"],  # degenerate, resampled, then right
    })
    cfg = _cfg(max_turns=3, num_samples=[1, 3])
    shard = run_rollout(cfg, "scripted", data, tmp_path / "out", loaded={"policy": policy})
    eps = {e["id"]: e for e in read_jsonl(shard)}
    p0 = eps["p0"]["turn_history"]
    assert p0["best_rewards"] == [0.0, 1.0] and p0["best_actions"] == ["\\boxed{1}", "\\boxed{2}"]
    assert p0["rewards"]["1"] == [0.0, 1.0, 1.0]  # the first of the best wins
    assert eps["p0"]["max_reward"] == 1.0 and eps["p0"]["turns"] == 2
    p1 = eps["p1"]["turn_history"]
    assert p1["best_actions"] == ["\\boxed{3}"] and p1["best_rewards"] == [1.0]  # the loop answers were dropped
    assert "drama club" not in eps["p1"]["prompt"][0]["content"]  # arith's short one-shot example


def test_teacher_url_failure_names_the_problem(tmp_path: Path, judge_server) -> None:
    from selfplay.stages.rollout import APITurnModel, TurnModels, run_rollout

    data = tmp_path / "d.jsonl"
    write_jsonl(data, [record("q0", "#### 2", "p0", "arith")])
    server = judge_server(lambda number, messages: (200, "\\boxed{2}") if number == 0 else (503, "overloaded"))
    cfg = _cfg(max_turns=2, num_samples=[1, 2], models=["policy", server.url + "#teacher"])
    cfg = dataclasses.replace(cfg, remote=dataclasses.replace(cfg.remote, max_retries=2, backoff=0.01))
    policy = Scripted({"p0": ["\\boxed{9}"]})
    # the teacher answers turn 2: one request per candidate, the 2nd keeps failing -> an error naming p0
    with pytest.raises(UserError, match="teacher .*problem 'p0': HTTP 503.*gave up after 3 tries"):
        run_rollout(cfg, "scripted", data, tmp_path / "out", loaded={"policy": policy})
    assert server.requests[0]["body"]["model"] == "teacher"
    assert server.requests[0]["body"]["messages"][-1]["content"].startswith("The answer is incorrect")
    # a working teacher: its answers become turn 2's candidates
    ok = judge_server(lambda number, messages: (200, "\\boxed{2}"))
    teacher = TurnModels(dataclasses.replace(cfg, rise=dataclasses.replace(cfg.rise, models=[ok.url])), "x")[0]
    assert isinstance(teacher, APITurnModel)
    assert teacher.respond([[{"role": "user", "content": "q"}]], 2, 0, ["p0"]) == [["\\boxed{2}", "\\boxed{2}"]]


def test_reference_without_answer_is_a_clear_error(cli, tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    write_jsonl(data, [record("q0", "#### 2", "p0", "arith"), record("q1", "no answer here", "p1", "arith")])
    res = cli(["rollout", "--model", tiny_model, "--data", data, "--out", tmp_path / "o", "--env", "arith"])
    assert res.exit_code == 2 and "d.jsonl, line 2, field 'reference'" in res.output
    assert not (tmp_path / "o").exists()
    res = cli(["rollout", "--model", tiny_model, "--data", data, "--out", tmp_path / "o", "--env", "arith",
               "--skip-invalid", "--max-new-tokens", "4", "--set", "generate.batch_size=2"])
    assert res.exit_code == 0, res.output
    assert [e["id"] for e in read_jsonl(tmp_path / "o" / "shard-00000-of-00001.jsonl")] == ["p0"]


def test_rollout_resumes_after_sigkill(tiny_model: Path, tmp_path: Path) -> None:
    """Kill a rollout once a few episodes are written; the rerun finishes the rest, losing and repeating
    nothing, and every episode equals an undisturbed run's (per-sample seeds)."""
    data = tmp_path / "d.jsonl"
    write_jsonl(data, [record(f"What is {i} + 1?", f"#### {i + 1}", f"p{i}", "arith") for i in range(12)])

    def cmd(out: Path) -> list[str]:
        return ["rollout", "--model", str(tiny_model), "--data",
                str(data), "--out", str(out), "--env", "arith", "--num-samples", "1,2", "--max-new-tokens", "24",
                "--set", "generate.batch_size=1"]

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    killed = tmp_path / "killed"
    proc = cli_process.CLIProcess(cmd(killed), env, capture=False)
    shard = killed / "shard-00000-of-00001.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (shard.exists() and shard.read_text().count("\n") >= 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = shard.read_text().count("\n")
    assert 2 <= written < 12, "killed too late or too early"
    assert cli_process.run_cli(cmd(killed), env).returncode == 0
    assert cli_process.run_cli(cmd(tmp_path / "clean"), env).returncode == 0
    ours = read_jsonl(shard)
    clean = read_jsonl(tmp_path / "clean" / "shard-00000-of-00001.jsonl")
    assert sorted(e["id"] for e in ours) == sorted(e["id"] for e in clean) == sorted(f"p{i}" for i in range(12))
    by_id = {e["id"]: e for e in clean}
    assert all(e["turn_history"] == by_id[e["id"]]["turn_history"] for e in ours)


# --------------------------------------------------------------------------- train and loop


def test_rise_loop_end_to_end(cli, tiny_model: Path, tmp_path: Path) -> None:
    run = tmp_path / "rise"
    res = cli(["loop", "--method", "rise", "--iters", "1", "--model", tiny_model, "--data", "synth:arith",
               "--run-dir", run, *TINY, "--set", "rise.env=arith", "--set", "rise.num_samples=[1, 2]"])
    assert res.exit_code == 0, res.output
    rows = read_jsonl(run / "eval" / "iterations.jsonl")
    assert [r["iteration"] for r in rows] == ["base", 0]
    for row in rows:
        assert 0 <= row["mt_acc_t1"] <= row["mt_oracle"] <= 1 and row["multiturn"]["turns"] == 3
        assert len(row["multiturn"]["sequential"]["acc"]) == 3 and row["multiturn"]["parallel"]["samples"] == 2
    episodes = read_jsonl(run / "iter_0" / "rollout.jsonl")
    assert len(episodes) == 10 and all(e["env"] == "arith" for e in episodes)
    examples = read_jsonl(run / "iter_0" / "train_data" / "examples.jsonl")
    assert examples and all(r["reward"] in (-1.0, 0.0, 1.0) for r in examples)
    turns = sum(len(e["turn_history"]["best_actions"]) for e in episodes)
    assert len(examples) <= turns
    assert not (run / "iter_0" / "train" / "ref_logps.jsonl").exists()  # RWR needs no reference
    metrics = read_jsonl(run / "iter_0" / "train" / "metrics.jsonl")
    assert {"loss", "nll", "weight"} <= set(metrics[-1])
    report = (run / "eval" / "report.md").read_text()
    assert "acc@t1" in report and "oracle@T" in report and "Δ acc@t1 vs base" in report
    per_prompt = read_jsonl(run / "iter_0" / "eval" / "per_prompt.jsonl")
    assert all({"mt_acc_t1", "mt_acc_tlast", "mt_oracle", "mt_majority", "mt_pass_parallel", "mt_maj_parallel"}
               <= set(r) for r in per_prompt)
    stats = rows[1]["stats"]
    assert stats["mt_acc_t1"]["method"] == "wilson" and stats["mt_oracle"]["n"] == rows[1]["mt_problems"]
    assert isinstance(stats["mt_maj_parallel"]["significant"], bool) and "outcomes" not in rows[1]["multiturn"]
    assert "acc@t1" in report and "oracle@T" in report
    html = (run / "eval" / "report.html").read_text()  # episodes turn by turn, kept turns marked
    assert "turn 1" in html and "badge kept" in html and "multi-turn answers" in html
    assert (run / "eval" / "base" / "multiturn.png").stat().st_size > 1000
    res = cli(["eval", "multiturn", "-m", run / "iter_0" / "train" / "model", "--data", run / "data",
               "--env", "arith", "--turns", "2", "--n", "2", "--limit", "3", "--out", tmp_path / "mt",
               "--max-new-tokens", "8"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "mt" / "multiturn.json").read_text())
    assert saved["problems"] == 3 and len(saved["sequential"]["acc"]) == 2 and "with oracle" in res.output
    assert "n = 3 problems" in res.output and re.search(r"0\.\d{3} \[0\.\d\d, [01]\.\d\d\]", res.output)
    assert all("outcomes" in r for r in read_jsonl(tmp_path / "mt" / "multiturn.jsonl"))


def test_rise_rejects_bad_settings() -> None:
    from selfplay.errors import ConfigError
    from selfplay.methods import load_config

    for sets, message in ((["rise.env=gsm9k"], "Did you mean 'gsm8k'"), (["rise.num_samples=[]"], "num_samples"),
                          (["rise.context_window=0"], "context_window"), (["train.loss=sft"], None)):
        if message is None:
            assert load_config(None, ["method=rise", *sets]).train.loss == "sft"  # SFT on the kept turns is allowed
            continue
        with pytest.raises(ConfigError, match=message):
            load_config(None, ["method=rise", *sets])
    with pytest.raises(DataError):
        from selfplay.methods.rise import read_episodes

        read_episodes(Path("/nonexistent/episodes.json"))
