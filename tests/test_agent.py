"""Agents: the ReAct parser on the real FireAct trajectories, EM/F1, the replay and SerpAPI search backends,
the rollout loop on a scripted policy (retries, the step cap, finish), resume after SIGKILL, training
records with observations as context, the agent evaluation and the spin-agent loop."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import cli_process
import pytest

from selfplay.envs.react import (
    FAILED_STEP,
    is_react_trajectory,
    parse_trajectory,
    render_steps,
    response_part,
    split_thought_action,
)
from selfplay.envs.tasks import TASKS
from selfplay.envs.verifiers import exact_match, f1_score
from selfplay.errors import DataError, UserError
from selfplay.io import read_jsonl, write_jsonl
from selfplay.methods.agent import trajectory_segments


@pytest.fixture(scope="module")
def fireact(shared_data: Path) -> dict:
    return json.loads((shared_data / "fireact" / "trajs_llama2_7b_150.json").read_text())


# --------------------------------------------------------------------------- parsing and scoring


def test_parser_rereads_every_shared_fireact_trajectory(fireact: dict) -> None:
    """Byte for byte, "Action:  reflect[...]" (two spaces) included; the scores are test_anchor_fireact's."""
    assert len(fireact) == 150
    for key, entry in fireact.items():
        response = response_part(entry["traj"])
        steps = parse_trajectory(response)
        assert render_steps(steps) == response, key
        assert [s.observation for s in steps] == [line[len("Observation: "):] for line in response.split("\n")
                                                  if line.startswith("Observation: ")], key
        assert steps[-1].observation.startswith("Episode finished, reward = ")


def test_segments_make_observations_context(fireact: dict) -> None:
    steps = parse_trajectory(response_part(next(iter(fireact.values()))["traj"]))
    segments = trajectory_segments(steps)
    assert [s.train for s in segments] == [True, False] * len(steps)
    assert all(s.text.startswith("\nObservation: ") for s in segments if not s.train)
    assert all(s.text.startswith("Thought: ") and "\nAction: " in s.text for s in segments if s.train)


@pytest.mark.parametrize("text, parsed", [
    (" I should search.\nAction: search[Paris]", ("I should search.", "search[Paris]")),
    ("Action: finish[yes]", ("", "finish[yes]")),
    ("Thought: x\nAction:  finish[a b]\nmore", ("x", "finish[a b]")),
    ("just thinking, no action", None),
    (FAILED_STEP, ("failed", "finish[]")),
])
def test_split_thought_action(text: str, parsed) -> None:
    assert split_thought_action(text) == parsed


def test_em_f1_official_normalisation() -> None:
    assert exact_match("The  Eiffel Tower!", "eiffel tower") == 1.0
    assert exact_match("an apple", "apple") == 1.0 and exact_match("apples", "apple") == 0.0
    assert f1_score("the big red barn", "red barn") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert f1_score("yes", "no") == 0.0 and f1_score("no answer", "noanswer") == 0.0
    assert f1_score("yes it is", "yes") == 0.0  # yes/no/noanswer golds only match exactly
    assert TASKS["strategyqa"].score("Yes, because...", "yes")[0] == 1.0
    # the anchor's startswith rules (tasks/mmlu.py:42-46, tasks/strategyqa.py:21-25)
    assert TASKS["mmlu"].score("(B) the ring", "B")[0] == 0.0 and TASKS["mmlu"].score("b. the ring", "B")[0] == 1.0
    assert TASKS["mmlu"].score("C", "B")[0] == 0.0
    assert TASKS["strategyqa"].score("Nope", "no")[0] == 1.0 and TASKS["strategyqa"].score(" yes", "yes")[0] == 0.0


def test_react_references_are_scored_without_observations(fireact: dict) -> None:
    from selfplay.stages.evaluate import reference_segments

    response = response_part(next(iter(fireact.values()))["traj"])
    assert is_react_trajectory(response)
    assert any(not s.train for s in reference_segments(response))
    assert [s.train for s in reference_segments("just an answer")] == [True]


# --------------------------------------------------------------------------- search backends


def test_replay_search_exact_then_nearest(shared_data: Path, fireact: dict) -> None:
    from selfplay.envs.search import NO_RESULTS, ReplaySearch

    search = ReplaySearch([shared_data / "fireact" / "trajs_llama2_7b_150.json",
                           shared_data / "agent" / "search_cache.json"])
    lines = next(iter(fireact.values()))["traj_by_line"]
    i = next(j for j, line in enumerate(lines) if line.startswith("Action: search["))
    query, observation = lines[i][len("Action: search["):-1], lines[i + 1][len("Observation: "):]
    assert search(query).text == observation and search(f"  {query.upper()} ").text == observation
    near = search(query.split()[-1] + " " + " ".join(query.split()[:-1]))  # reordered words: no exact hit
    assert near.text == observation and not near.error
    assert search("zzzz qqqq").text == NO_RESULTS
    cache = json.loads((shared_data / "agent" / "search_cache.json").read_text())
    q, result = next(iter(cache.items()))
    assert search(q).text == result


def test_serpapi_backend_caches_and_fails_softly(tmp_path: Path, chat_server, monkeypatch: pytest.MonkeyPatch) -> None:
    from selfplay.envs.search import SearchResult, SerpApiSearch, make_search

    monkeypatch.delenv("SERPAPI_API_KEY", raising=False)
    with pytest.raises(UserError, match="SERPAPI_API_KEY"):
        make_search("serpapi", [], None)
    monkeypatch.setenv("SERPAPI_API_KEY", "secret-key-123")
    healthy = {"on": False}
    server = chat_server(lambda n, body: (200, json.dumps({"answer_box": {"answer": "Paris"}}), 0.0) if healthy["on"]
                         else (503, "down for secret-key-123", 0.0))
    search = SerpApiSearch(tmp_path / "cache.json", url=server.url + "/search.json", timeout=5, retries=1, backoff=0.01)
    failed = search("capital of France")  # 503 twice: an observation, counted, not a crash
    assert failed.error and "search failed: HTTP 503" in failed.text and "secret-key-123" not in failed.text
    assert len(server.requests) == 2 and server.requests[0]["body"]["query"]["q"] == "capital of France"
    healthy["on"] = True
    assert search("capital of France") == SearchResult("Paris")
    assert search("capital of France").text == "Paris" and len(server.requests) == 3  # cached
    assert json.loads((tmp_path / "cache.json").read_text()) == {"capital of France": "Paris"}


# --------------------------------------------------------------------------- the rollout loop


class ScriptedAgent:
    """A sampler stand-in: script(question, step, attempt) -> the step text after "Thought:"."""

    tokenizer = None

    def __init__(self, script) -> None:
        self.script, self.attempts, self.released = script, {}, []

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed, stop=None, progress=True,
                 cache_keys=None):
        assert stop == ["\nObservation:"] and n == 1 and len(set(cache_keys)) == len(prompts)
        assert not set(cache_keys) & set(self.released)  # an ended episode is never sampled again
        out = []
        for p in prompts:
            question = re.search(r"### Instruction:\n(.*?)\n\n### Response:", p, re.DOTALL)[1]
            step = p.count("\nObservation:")
            key = (question, step)
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
            out.append([self.script(question, step, attempt)])
        return out

    def release(self, keys) -> None:
        self.released += keys


def _agent_cfg(shared_data: Path, **agent):
    import dataclasses

    from selfplay.methods import load_config

    cfg = load_config(None, ["method=spin-agent", f"agent.search_sources=[{shared_data / 'agent' / 'search_cache.json'}]"])
    return dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, **agent))


def test_scripted_policy_retries_step_cap_and_finish(shared_data: Path) -> None:
    from selfplay.core.samplers import format_prompt
    from selfplay.envs.agent_episodes import load_agent, new_episodes, play_agent_episodes, sampler_steps

    cache = json.loads((shared_data / "agent" / "search_cache.json").read_text())
    query = next(iter(cache))

    def script(question: str, step: int, attempt: int) -> str:
        if question == "q-ok":
            return f" look it up\nAction: search[{query}]" if step == 0 else " found it\nAction: finish[Paris]"
        if question == "q-retry":  # five steps without an action, the sixth try (5th retry) has one
            return "rambling" if attempt < 5 else " ok\nAction: finish[London]"
        if question == "q-fail":
            return "never an action"
        return f" again\nAction: search[{query}]"  # q-loop: never finishes

    records = [{"id": q, "messages": [{"role": "user", "content": q}], "reference": "", "meta": {"answer": a}}
               for q, a in (("q-ok", "Paris"), ("q-retry", "Paris"), ("q-fail", "Paris"), ("q-loop", "Paris"))]
    cfg = _agent_cfg(shared_data, retries=5, max_steps=11)
    sampler = ScriptedAgent(script)
    done = {}
    agent = load_agent(cfg.agent)  # hotpotqa's tools: the replay search and finish
    assert list(agent.tools) == ["search", "finish"]
    episodes = new_episodes(records, lambda m: format_prompt(None, m, cfg.generate.prompt_format), fewshot="",
                            samples=cfg.agent.samples, seed=cfg.generate.seed)
    play_agent_episodes(agent, sampler_steps(sampler, cfg.generate), episodes, cfg.agent,
                        lambda ep: done.setdefault(ep.record["id"], ep), 0.0)
    ok, retry, fail, loop = (done[q] for q in ("q-ok", "q-retry", "q-fail", "q-loop"))
    assert ok.finished and ok.reward == 1.0 and len(ok.steps) == 2 and ok.steps[0].observation == cache[query]
    assert ok.steps[1].observation == "Episode finished, reward = True" and ok.retries == 0
    assert retry.finished and retry.reward == 0.0 and retry.retries == 5 and retry.steps[0].action == "finish[London]"
    assert fail.finished and fail.retries == 5 and (fail.steps[0].thought, fail.steps[0].action) == ("failed", "finish[]")
    assert sampler.attempts[("q-fail", 0)] == 6  # the first try and 5 retries
    assert not loop.finished and len(loop.steps) == 11 and loop.reward == 0.0
    assert all(s.observation == cache[query] for s in loop.steps)
    # Every episode released its cache exactly once, as it ended (finished or out of steps).
    assert sorted(sampler.released) == sorted(ep.key for ep in episodes)


def test_rollout_resumes_after_sigkill_and_reads_back(tiny_model: Path, tmp_path: Path, shared_data: Path, cli) -> None:
    data = tmp_path / "q.jsonl"
    write_jsonl(data, [{"id": f"q{i}", "messages": [{"role": "user", "content": f"Who wrote book {i}?"}],
                        "reference": "", "meta": {"task": "hotpotqa", "answer": f"author {i}"}} for i in range(10)])

    def cmd(out: Path) -> list[str]:
        return ["rollout", "agent", "--model", str(tiny_model), "--data",
                str(data), "--out", str(out), "--search-sources", str(shared_data / "agent" / "search_cache.json"),
                "--max-steps", "3", "--set", "agent.retries=1", "--set", "generate.max_new_tokens=12",
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
    assert 2 <= shard.read_text().count("\n") < 10, "killed too late or too early"
    assert cli_process.run_cli(cmd(killed), env).returncode == 0
    assert cli_process.run_cli(cmd(tmp_path / "clean"), env).returncode == 0
    ours, clean = read_jsonl(shard), read_jsonl(tmp_path / "clean" / "shard-00000-of-00001.jsonl")
    assert sorted(r["id"] for r in ours) == sorted(r["id"] for r in clean) == sorted(f"q{i}" for i in range(10))
    by_id = {r["id"]: r for r in clean}
    assert all(r["traj"] == by_id[r["id"]]["traj"] for r in ours)
    row = ours[0]
    assert {"reward", "em", "f1", "gt", "pred", "prompt", "traj", "traj_by_line"} <= set(row)
    # our FireAct reader reads the trajectories back
    res = cli(["data", "prepare", shard, "--out", tmp_path / "prepared", "--format", "fireact"])
    assert res.exit_code == 0, res.output
    assert len(read_jsonl(tmp_path / "prepared" / "train.jsonl")) == 10


def test_missing_serpapi_key_fails_before_any_model(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERPAPI_API_KEY", raising=False)
    data = tmp_path / "q.jsonl"
    write_jsonl(data, [{"id": "q", "messages": [{"role": "user", "content": "q"}], "reference": "a"}])
    res = cli(["rollout", "agent", "--model", tmp_path / "no-such-model", "--data", data, "--out", tmp_path / "o",
               "--search", "serpapi"])
    assert res.exit_code == 2 and "SERPAPI_API_KEY" in res.output and "no-such-model" not in res.output
    assert not (tmp_path / "o").exists()


def test_dpo_pairs_between_trajectory_files(cli, fireact: dict, tmp_path: Path) -> None:
    flipped = {k: {**v, "reward": not v["reward"]} for k, v in list(fireact.items())[:20]}
    (tmp_path / "a.json").write_text(json.dumps(dict(list(fireact.items())[:20])))
    (tmp_path / "b.json").write_text(json.dumps(flipped))
    res = cli(["rollout", "agent-pairs", tmp_path / "a.json", tmp_path / "b.json", "--out", tmp_path / "p.jsonl"])
    assert res.exit_code == 0, res.output
    pairs = read_jsonl(tmp_path / "p.jsonl")
    assert len(pairs) == 20
    obs = [seg for p in pairs for seg in p["chosen"] if not seg["train"]]
    assert obs and all(seg["text"].startswith("\nObservation:") for seg in obs)
    broken = dict(list(fireact.items())[:2])
    broken[next(iter(broken))] = {"reward": True, "traj": "no sections"}
    (tmp_path / "c.json").write_text(json.dumps(broken))
    res = cli(["rollout", "agent-pairs", tmp_path / "c.json", tmp_path / "b.json", "--out", tmp_path / "p2.jsonl"])
    assert res.exit_code == 2 and "c.json" in res.output and f"entry '{next(iter(broken))}'" in res.output


# --------------------------------------------------------------------------- evaluation and the loop


def test_eval_agent_cli(cli, tiny_model: Path, shared_data: Path, tmp_path: Path) -> None:
    res = cli(["eval", "agent", "-m", tiny_model, "--data", shared_data / "hotpotqa" / "dev_200.json",
               "--ids-from", shared_data / "fireact" / "trajs_llama2_7b_150.json", "--limit", "3",
               "--search-sources", shared_data / "agent" / "search_cache.json", "--max-steps", "2",
               "--max-new-tokens", "12", "--set", "agent.retries=1", "--out", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "ev" / "agent.json").read_text())
    assert metrics["episodes"] == 3 and 0 <= metrics["em"] <= metrics["f1"] + 1e-9 <= 1 + 1e-9
    assert 1 <= metrics["steps"] <= 2 and "EM" in res.output and "n = 3 episodes" in res.output
    assert "eval agent (hotpotqa)" in res.output  # progress over the episodes
    assert {k: v["method"] for k, v in metrics["stats"].items()} == {
        "em": "wilson", "f1": "bootstrap", "steps": "bootstrap", "finished": "wilson"}
    assert metrics["stats"]["em"]["n"] == 3 and "outcomes" not in metrics
    assert len(read_jsonl(tmp_path / "ev" / "agent.jsonl")) == 3


def test_spin_agent_loop(cli, tiny_model: Path, shared_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "agent"
    res = cli(["loop", "--method", "spin-agent", "--iters", "1", "--model", tiny_model, "--run-dir", run,
               "--data", shared_data / "fireact" / "hotpotqa_alpaca_200.json",
               "--set", "data.num=12", "--set", "data.eval_num=4",
               "--set", f"agent.search_sources=[{shared_data / 'agent' / 'search_cache.json'}]",
               "--set", "agent.max_steps=2", "--set", "agent.retries=1", "--set", "generate.max_new_tokens=12",
               "--set", "eval.max_new_tokens=16", "--set", "train.batch_size=4", "--set", "train.epochs=1",
               "--set", "train.precision=fp32", "--set", "train.max_length=384"])
    assert res.exit_code == 0, res.output
    rows = read_jsonl(run / "eval" / "iterations.jsonl")
    assert [r["iteration"] for r in rows] == ["base", 0]
    assert all(0 <= r["agent_em"] <= 1 and r["agent"]["episodes"] == 4 and "real_loglik" in r for r in rows)
    pairs = read_jsonl(run / "iter_0" / "train_data" / "pairs.jsonl")
    assert len(pairs) == 8
    chosen = pairs[0]["chosen"]
    assert isinstance(chosen, list) and any(not s["train"] for s in chosen)  # real observations are context
    assert (run / "iter_0" / "train" / "model" / "adapter_config.json").exists()  # LoRA, as the anchor
    assert "EM" in (run / "eval" / "report.md").read_text()
    per_prompt = read_jsonl(run / "iter_0" / "eval" / "per_prompt.jsonl")
    assert len(per_prompt) == 4 and all({"agent_em", "agent_f1", "agent_steps", "agent_finished"} <= set(r)
                                        for r in per_prompt)
    assert rows[1]["stats"]["agent_em"]["n"] == 4 and rows[1]["stats"]["agent_steps"]["method"] == "bootstrap"
    html = (run / "eval" / "report.html").read_text()  # trajectories step by step, the real one chosen
    assert "step 1:" in html and "real trajectory (SFT data)" in html and "badge chosen" in html
    assert "agent trajectories" in html  # the held-out episodes
    from huggingface_hub import ModelCard

    for name, library in (("model", "peft"), ("merged", "transformers")):  # the LoRA adapter and the merged model
        card = ModelCard.load(run / "iter_0" / "train" / name / "README.md").data.to_dict()
        assert card["library_name"] == library and card["tags"] == ["selfplay", "spin-agent", "lora"]
        assert "agent_em" in card["selfplay"]["held_out"] and card["selfplay"]["iteration"] == 0
    with pytest.raises(DataError):
        from selfplay.methods.agent import read_trajectories

        read_trajectories(tmp_path / "missing.json")
