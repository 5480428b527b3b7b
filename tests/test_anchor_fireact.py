"""Agents against their anchors' code (anchen1011/FireAct ``generation.py``, ``tasks/``, ``tools/``;
ReinholdM/SPIN ``convert_alpaca.py``, ``convert_dpo_data.py``), on real rows: our rollouts exported in
FireAct's format and converted by ports of the anchor's scripts."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from selfplay.io import read_jsonl, write_jsonl


def anchor_convert_dpo_data(data1: dict, data2: dict) -> list[dict]:
    """ReinholdM/SPIN spin/convert_dpo_data.py:3-36 (without the file I/O and prints)."""
    dpo_data = []
    for key in data1:
        if key in data2:
            if data1[key]["reward"] != data2[key]["reward"]:
                instruction = data1[key]["traj_by_line"][3]
                content1 = "\n".join(data1[key]["traj_by_line"][6:])
                content2 = "\n".join(data2[key]["traj_by_line"][6:])
                dpo_data.append({"instruction": instruction, "input": "",
                                 "chosen": content1 if data1[key]["reward"] else content2,
                                 "rejected": content2 if data1[key]["reward"] else content1})
    return dpo_data


def anchor_convert_alpaca(data: dict) -> list[dict]:
    """ReinholdM/SPIN spin/convert_alpaca.py:17-29."""
    return [{"instruction": value["traj_by_line"][3], "input": "", "output": "\n".join(value["traj_by_line"][6:])}
            for key, value in data.items()]


class ScriptedAgent:
    """A sampler stand-in: script(question, step) -> the step text after "Thought:"."""

    tokenizer = None

    def __init__(self, script) -> None:
        self.script = script

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed, stop=None, progress=True,
                 cache_keys=None):
        out = []
        for p in prompts:
            question = re.search(r"### Instruction:\n(.*?)\n\n### Response:", p, re.DOTALL)[1]
            out.append([self.script(question, p.count("\nObservation:"))])
        return out

    def release(self, keys) -> None:  # the Sampler protocol: a stand-in keeps no KV cache to free
        pass


@pytest.fixture(scope="module")
def two_runs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    """Two rollouts of 8 real HotpotQA questions by scripted agents that answer differently."""
    from selfplay.methods import load_config
    from selfplay.stages.agent_rollout import run_agent_rollout

    tmp = tmp_path_factory.mktemp("fireact_runs")
    rows = json.loads((shared_data / "hotpotqa" / "dev_200.json").read_text())[:8]
    records = [{"id": f"hq{i}", "messages": [{"role": "user", "content": r["question"]}], "reference": r["answer"],
                "meta": {"task": "hotpotqa", "answer": r["answer"]}} for i, r in enumerate(rows)]
    write_jsonl(tmp / "q.jsonl", records)
    gold = {r["question"]: (i, r["answer"]) for i, r in enumerate(rows)}
    query = next(iter(json.loads((shared_data / "agent" / "search_cache.json").read_text())))

    def agent(right) -> ScriptedAgent:
        def script(question: str, step: int) -> str:
            i, answer = gold[question]
            if step == 0:
                return f" I need to search.\nAction: search[{query}]"
            if right(i) is None:
                return f" Search again.\nAction: search[{query}]"  # never finishes
            return f" So the answer is known.\nAction: finish[{answer if right(i) else 'nobody'}]"
        return ScriptedAgent(script)

    cfg = load_config(None, ["method=agent-dpo", f"agent.search_sources=[{shared_data / 'agent' / 'search_cache.json'}]"])
    cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, samples=1, max_steps=4))
    runs = []
    for name, right in (("a", lambda i: i % 2 == 0), ("b", lambda i: None if i == 5 else i % 3 == 0)):
        shard = run_agent_rollout(cfg, "scripted", tmp / "q.jsonl", tmp / name, sampler=agent(right))
        runs.append(shard)
    return runs[0], runs[1], records


def test_fireact_export_is_the_anchors_output_form(two_runs, cli, tmp_path: Path) -> None:
    a, b, records = two_runs
    out = tmp_path / "b.json"
    result = cli(["rollout", "export", b, "--format", "fireact", "--out", out])
    assert result.exit_code == 0, result.output
    assert "1 unfinished skipped" in result.output
    exported = json.loads(out.read_text())
    assert sorted(exported) == sorted(r["id"] for r in records if r["id"] != "hq5")  # finished only, keyed by id
    for key, entry in exported.items():
        assert list(entry) == ["reward", "em", "f1", "gt", "pred", "prompt", "traj", "traj_by_line"]
        assert isinstance(entry["reward"], bool) and isinstance(entry["em"], bool) and entry["prompt"] == ""
        assert entry["traj_by_line"] == entry["traj"].split("\n")
        assert entry["traj_by_line"][3] == next(r for r in records if r["id"] == key)["messages"][0]["content"]
        assert entry["traj"].endswith(f"Observation: Episode finished, reward = {entry['reward']}\n")
    # the anchor's convert_alpaca.py: the question and the ReAct response of every trajectory
    alpaca = anchor_convert_alpaca(exported)
    ours = {r["id"]: r for r in read_jsonl(b)}
    assert [x["output"] for x in alpaca] == [ours[k]["traj"].split("### Response:\n", 1)[1] for k in exported]


def test_anchor_dpo_conversion_of_our_export_gives_our_agent_pairs(two_runs, cli, tmp_path: Path) -> None:
    """Our rollouts -> --format fireact -> the anchor's convert_dpo_data.py -> the pairs of `rollout agent-pairs`."""
    from selfplay.core.examples import Segment, response_text

    a, b, _ = two_runs
    exports = []
    for src in (a, b):
        exports.append(tmp_path / f"{src.parent.name}.json")
        assert cli(["rollout", "export", src, "--format", "fireact", "--out", exports[-1]]).exit_code == 0
    anchor = anchor_convert_dpo_data(*(json.loads(p.read_text()) for p in exports))
    assert len(anchor) == 3  # questions 2, 3 and 4 differ (5 is unfinished in b: absent from its file)
    for source in ((a, b), tuple(exports)):
        out = tmp_path / "pairs.jsonl"
        result = cli(["rollout", "agent-pairs", *source, "--out", out])
        assert result.exit_code == 0, result.output
        pairs = read_jsonl(out)
        text = [{"instruction": p["prompt"][-1]["content"], "input": "",
                 "chosen": response_text([Segment(**s) for s in p["chosen"]]),
                 "rejected": response_text([Segment(**s) for s in p["rejected"]])} for p in pairs]
        assert text == anchor


# --------------------------------------------------------------------------- scoring what FireAct recorded


def anchor_score_hotpotqa(traj: str, gt: str) -> dict:
    """What generation.py:105-142 and tasks/hotpotqa.py:59-64 make of a recorded trajectory's last action:
    the text after the last "\\nAction: " up to its observation, split at "[" (argument minus its last
    character), scored by normalized exact match and F1."""
    from selfplay.envs.verifiers import f1_score, normalize_answer

    response = traj.split("### Response:\n", 1)[1]
    action = response.rsplit("\nAction: ", 1)[1].rsplit("\nObservation: ", 1)[0]
    action_type, action_args = action.split("[")[:2]
    assert "finish" in action_type.lower()
    pred, gold = normalize_answer(action_args[:-1]), normalize_answer(gt)
    return {"em": pred == gold, "f1": f1_score(pred, gold), "pred": pred, "gt": gold}


# One trajectory of FireAct's own 13B run (anchen1011/FireAct trajs/hotpotqa_dev_0_500_llama_models_lora_
# llama-2-13b-d_1000_0.7_2023-09-18-13-40-08.json, key 5080, MIT): its finish[...] runs on into a second line.
FIREACT_13B_5080 = {
    "reward": False, "em": False, "f1": 0.25, "gt": "baby guinness",
    "pred": "blue hawaii thought i need to search for meaning of baby guinness to confirm",
    "traj": "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nWhich cocktail's name describes how the drink looks, Blue Hawaii or "
            "Baby Guinness?\n\n### Response:\nThought: I need to search for the meaning of the names Blue Hawaii "
            "and Baby Guinness to find out which one describes how the drink looks.\nAction: search[meaning of "
            "Blue Hawaii]\nObservation: In conclusion, \u201cBlue Hawaii\u201d encompasses the universal emotions "
            "of longing, nostalgia, and romance. Elvis Presley's heartfelt rendition of the ...\nThought: The "
            "meaning of Blue Hawaii is not clear. I need to search again.\nAction: search[what is Blue Hawaii "
            "cocktail]\nObservation: 3/4 ounce vodka \u00b7 3/4 ounce light rum \u00b7 1/2 ounce blue cura\u00e7ao "
            "\u00b7 3 ounces pineapple juice \u00b7 1 ounce sweet and sour mix (recipe below) \u00b7 Garnish: "
            "pineapple wedge.\nThought: The Blue Hawaii cocktail contains vodka, rum, blue cura\u00e7ao, pineapple "
            "juice, and sweet and sour mix. It seems like the name describes the color of the drink.\nAction: "
            "finish[Blue Hawaii]\nThought: I need to search for the meaning of Baby Guinness to confirm.\n"
            "Observation: Episode finished, reward = False\n"}


def rescore(entry: dict, actions: str) -> tuple[float, dict] | None:
    from selfplay.envs.agent_episodes import score_steps
    from selfplay.envs.react import get_action_format, parse_trajectory, response_part
    from selfplay.envs.tasks import TASKS

    steps = parse_trajectory(response_part(entry["traj"]))
    return score_steps(TASKS["hotpotqa"], steps, entry["gt"], get_action_format(actions))


def test_scoring_the_150_recorded_trajectories_gives_what_fireact_recorded(shared_data: Path) -> None:
    trajs = json.loads((shared_data / "fireact" / "trajs_llama2_7b_150.json").read_text())
    assert len(trajs) == 150
    for key, entry in {**trajs, "13b-5080": FIREACT_13B_5080}.items():
        reward, info = rescore(entry, "fireact")
        recorded = {k: entry[k] for k in ("em", "f1", "pred", "gt")}
        assert bool(reward) == entry["reward"] and {**info, "em": bool(info["em"])} == recorded, key
        assert anchor_score_hotpotqa(entry["traj"], entry["gt"]) == recorded, key
    assert sum(e["reward"] for e in trajs.values()) == 41


def test_the_strict_parser_reads_the_13b_row_otherwise() -> None:
    """finish[Blue Hawaii]\\nThought: ...: FireAct scores the whole remainder (F1 0.25); strict reads "Blue Hawaii"."""
    reward, info = rescore(FIREACT_13B_5080, "strict")
    assert info["pred"] == "blue hawaii" and info["f1"] == 0.0 and reward == 0.0
    assert rescore(FIREACT_13B_5080, "fireact")[1]["f1"] == 0.25


@pytest.mark.parametrize("action, fireact, strict", [
    ("finish[Paris]", ("finish", "Paris"), ("finish", "Paris")),
    ("finish[Paris] because", ("finish", "Paris] becaus"), None),
    ("search[a [b] c]", ("search", "a"), ("search", "a [b] c")),
    ("Finish[x]", ("Finish", "x"), ("finish", "x")),
    (" reflect[How can I improve?]", (" reflect", "How can I improve?"), ("reflect", "How can I improve?")),
    ("finish[X]\nThought: more", ("finish", "X]\nThought: mor"), ("finish", "X")),  # strict: the first line
    ("no call at all", None, None),
])
def test_action_formats(action: str, fireact, strict) -> None:
    from selfplay.envs.react import ACTION_FORMATS

    assert ACTION_FORMATS["fireact"].call(action) == fireact
    assert ACTION_FORMATS["strict"].call(action) == strict
    tools = ("search", "finish")
    if fireact:  # generation.py:112/135: a name with "finish" in it finishes; tools/__init__.py: others exactly
        assert ACTION_FORMATS["fireact"].tool(fireact[0], tools) == (
            "finish" if "finish" in fireact[0].lower() else fireact[0] if fireact[0] in tools else None)


@pytest.mark.parametrize("text, thought, action", [
    (" I should search.\nAction: search[Paris]", "I should search.", "search[Paris]"),
    (" done\nAction: finish[X]\nThought: I need to check.", "done", "finish[X]\nThought: I need to check."),
    (" a\nAction: finish[X]\nAction: search[y]", "a", "finish[X]"),
    ("Action: finish[yes]", "", "finish[yes]"),
    (" Action: finish[yes]", "", " finish[yes]"),  # text[len("Action: "):] of the unstripped text
    ("Thought: x\nAction: search[q]", "x", "search[q]"),
    ("just thinking", None, None),
])
def test_fireact_split_is_the_anchors(text: str, thought, action) -> None:
    from selfplay.envs.react import fireact_split

    assert fireact_split(text) == (None if thought is None else (thought, action))


def test_recorded_observations_are_reproduced(shared_data: Path) -> None:
    """The anchor's observations for an unknown tool and an empty search, as recorded in the 150."""
    from selfplay.envs.react import get_action_format, parse_trajectory, response_part
    from selfplay.envs.tools import OBSERVATION_STYLES

    trajs = json.loads((shared_data / "fireact" / "trajs_llama2_7b_150.json").read_text())
    fireact, style = get_action_format("fireact"), OBSERVATION_STYLES["fireact"]
    unknown = empty = 0
    for entry in trajs.values():
        for step in parse_trajectory(response_part(entry["traj"])):
            call = fireact.call(step.action)
            if call and fireact.tool(call[0], ("search", "finish")) is None:
                assert step.observation == style.unknown(step.action, *call, "search[query] or finish[answer]")
                unknown += 1
            elif call and call[0] == "search" and step.observation == "None":
                empty += 1
    assert unknown == 7 and empty == 7 and style.empty == "None"


def test_replay_keeps_recorded_empties_and_counts_fallbacks(shared_data: Path) -> None:
    """A query FireAct recorded as empty replays empty (it was answered with another question's snippet);
    only a query never recorded takes the nearest recorded one, flagged and counted."""
    from selfplay.envs.search import ReplaySearch
    from selfplay.envs.tools import SearchTool

    search = ReplaySearch([shared_data / "fireact" / "trajs_llama2_7b_150.json",
                           shared_data / "agent" / "search_cache.json"])
    empty = search("Benjamin Burnley genre of music")
    assert empty.empty and not empty.nearest and search.fallbacks == 0
    assert SearchTool(search, empty="None").run("Benjamin Burnley genre of music", {}).text == "None"
    assert SearchTool(search, empty="No results found.").run("benjamin  burnley GENRE of music", {}).text == "No results found."
    near = search("music genre of Benjamin Burnley band Breaking Benjamin")
    assert near.nearest and search.fallbacks == 1
    observation = SearchTool(search).run("music genre of Benjamin Burnley band Breaking Benjamin", {})
    assert observation.approximate and search.fallbacks == 2


@pytest.mark.parametrize("style", ["fireact", "selfplay"])
def test_an_action_without_a_bracket_is_dropped_as_fireact_drops_it(shared_data: Path, style: str) -> None:
    """generation.py:105-110/127-133: an action that does not split at "[" is skipped — no step, no observation
    — and the loop samples again; ours (selfplay observations) records it with an "Invalid action" note."""
    from selfplay.config import AgentConfig
    from selfplay.envs.agent_episodes import load_agent, new_episodes, play_agent_episodes

    settings = AgentConfig(task="hotpotqa", search_sources=[str(shared_data / "agent" / "search_cache.json")],
                           max_steps=3, observations=style)
    agent = load_agent(settings)
    seeds: list[int] = []

    def respond(prompts: list[str], temperature: float, seed: int, keys: list | None = None) -> list[str]:
        seeds.append(seed)
        first = len(seeds) == 1
        return [" let me think\nAction: I will answer Paris" if first else " so\nAction: finish[Paris]" for _ in prompts]

    record = {"id": "q", "messages": [{"role": "user", "content": "Capital of France?"}], "reference": "",
              "meta": {"task": "hotpotqa", "answer": "Paris"}}
    done = []
    play_agent_episodes(agent, respond, new_episodes([record], lambda m: m[-1]["content"] + "\n", fewshot="",
                                                     samples=1, seed=0), settings, done.append, 0.0)
    (ep,) = done
    assert ep.finished and ep.reward == 1.0 and ep.invalid_actions == 1
    if style == "fireact":
        assert ep.dropped_steps == 1 and [s.action for s in ep.steps] == ["finish[Paris]"]
        assert seeds[0] != seeds[1]  # the same text is sampled again, on another seed
    else:
        assert ep.dropped_steps == 0 and len(ep.steps) == 2
        assert ep.steps[0].observation == "Invalid action: I will answer Paris. Use search[query] or finish[answer]."


def test_train_on_observations_option(shared_data: Path) -> None:
    """Off (the default) the observations of both sides of a pair are context; on, every token is trained, as
    the anchors train them."""
    import dataclasses

    from selfplay.core.examples import Segment, response_text
    from selfplay.methods import load_config
    from selfplay.methods.agent import build_agent_dpo_pairs, build_spin_agent_pairs, read_trajectories

    trajs = read_trajectories(shared_data / "fireact" / "trajs_llama2_7b_150.json")
    good = next(t for t in trajs.values() if t["reward"])
    bad = next(t for t in trajs.values() if not t["reward"])
    rows = [{"id": "q", "samples": [good, bad], "reference": good["traj"]}]
    cfg = load_config(None, ["method=agent-dpo", f"agent.search_sources=[{shared_data / 'agent' / 'search_cache.json'}]"])
    for on in (False, True):
        c = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, train_on_observations=on))
        (pair,), _ = build_agent_dpo_pairs(rows, 0, c)
        (spin, *_), _ = build_spin_agent_pairs([{**rows[0], "samples": [bad]}], 0, c)
        for side in (pair["chosen"], pair["rejected"], spin["rejected"]):
            if on:
                assert isinstance(side, str) and "\nObservation: " in side  # all of it trained
            else:
                segments = [Segment(**s) for s in side]
                assert {s.train for s in segments} == {True, False}
                assert all(s.text.startswith("\nObservation: ") for s in segments if not s.train)
        text = pair["chosen"] if on else response_text([Segment(**s) for s in pair["chosen"]])
        assert text == good["traj"].split("### Response:\n", 1)[1]


def test_export_refuses_what_is_not_a_trajectory(two_runs, anchor_free_episodes, cli, tmp_path: Path) -> None:
    a, _, _ = two_runs
    result = cli(["rollout", "export", anchor_free_episodes, "--format", "fireact", "--out", tmp_path / "x.json"])
    assert result.exit_code == 2 and "line 1" in result.output and "traj" in result.output
    result = cli(["rollout", "export", a, "--format", "fireact", "--out", tmp_path / "y.json", "--sample", "3"])
    assert result.exit_code == 2 and "no sample 3" in result.output
    result = cli(["rollout", "export", a, "--format", "fireakt", "--out", tmp_path / "z.json"])
    assert result.exit_code == 2 and "fireact" in result.output
    assert not any((tmp_path / n).exists() for n in ("x.json", "y.json", "z.json"))


@pytest.fixture
def anchor_free_episodes(tmp_path: Path) -> Path:
    """A RISE episode file: the wrong kind of rollout for a FireAct export."""
    path = tmp_path / "episodes.jsonl"
    write_jsonl(path, [{"id": "p0", "query": "q", "turn_history": {"best_actions": ["a"], "best_rewards": [0],
                                                                    "best_observations": ["o"]}}])
    return path
