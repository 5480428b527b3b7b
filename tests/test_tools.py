"""Agent tools: the calculator's safe evaluator, the tool registry and its config checks, and the episode loop
dispatching actions to tools (scripted steps and the tiny model's own)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from selfplay.envs.calculator import MAX_LENGTH
from selfplay.envs.tasks import TASKS
from selfplay.envs.tools import TOOLS, CalculatorTool, check_tools, make_tools, usage_hint
from selfplay.errors import ConfigError


def calc(expression: str):
    return CalculatorTool().run(expression, {})


@pytest.mark.parametrize(("expression", "value"), [
    ("1 + 2", "3"), ("7 - 10", "-3"), ("6 * 7", "42"), ("7 / 2", "3.5"), ("1 / 3", "0.3333333333333333333333333333"),
    ("2 + 3 * 4", "14"), ("(2 + 3) * 4", "20"), ("10 - 4 - 3", "3"), ("24 / 4 / 2", "3"),  # precedence, left to right
    ("1.5 + 2.25", "3.75"), ("0.1 + 0.2", "0.3"), (".5 * 4", "2"), ("2.50 * 2", "5"),  # exact decimals
    ("-3 + 5", "2"), ("-(2 + 3)", "-5"), ("4 * -2", "-8"), ("--5", "5"), ("+7", "7"),  # unary minus (and plus)
    (" ( ( 1 ) ) ", "1"), ("999999999999999 + 1", "1000000000000000"),
])
def test_calculator_evaluates(expression, value):
    observation = calc(expression)
    assert observation.text == value and not observation.error and not observation.done


@pytest.mark.parametrize(("expression", "why"), [
    ("1 / 0", "division by zero"), ("5 / (2 - 2)", "division by zero"), ("0 / 0", "undefined"),
    ("2 ** 10", "powers not supported"), ("7 // 2", "floor division not supported"),
    ("abs(-1)", "unsupported character 'a'"), ("__import__('os').system('true')", "unsupported character '_'"),
    ("x + 1", "unsupported character 'x'"), ("(1).real", "unsupported character 'r'"), ("1e300", "'e'"),
    ("2 % 3", "unsupported character '%'"), ("[1]", "unsupported character '['"), ("1 < 2", "'<'"),
    ("1_000", "'_'"), ("0x10", "'x'"), ("1j", "'j'"),
    ("9" * 20, "out of range"), ("999999999999999 * 999999999999999", "out of range"),
    ("1" + "+1" * MAX_LENGTH, "longer than"), ("(1 + 2", "not a valid expression"), ("1 +", "not a valid expression"),
    ("1.2.3", "not a valid expression"), ("", "empty expression"), ("(" * 150 + "1" + ")" * 150, "longer than"),
    ("(" * 95 + "1" + ")" * 95, ""),  # deep but short: fine
])
def test_calculator_refuses_with_an_error_observation(expression, why):
    observation = calc(expression)  # never raises
    if not why:
        assert observation.text == "1" and not observation.error
        return
    assert observation.error and observation.text.startswith("calculator error: ") and why in observation.text


def test_registry_and_config_checks(shared_data: Path):
    from selfplay.config import AgentConfig

    assert {"search", "finish", "calculator"} <= set(TOOLS)
    arith = TASKS["arith"]
    plain = AgentConfig(task="arith")
    assert list(make_tools(plain, arith)) == ["calculator", "finish"]  # the task's tools when none are named
    tools = make_tools(dataclasses.replace(plain, tools=["finish", "calculator"]), arith)
    assert usage_hint(tools) == "finish[answer] or calculator[expression]"
    with pytest.raises(ConfigError, match="Did you mean 'calculator'"):
        check_tools(dataclasses.replace(plain, tools=["calculater", "finish"]), arith)
    with pytest.raises(ConfigError, match="no tool that ends an episode"):
        check_tools(dataclasses.replace(plain, tools=["calculator"]), arith)
    with pytest.raises(ConfigError, match="search_sources"):  # the search tool's own settings are checked
        check_tools(AgentConfig(task="hotpotqa"), TASKS["hotpotqa"])
    cache = str(shared_data / "agent" / "search_cache.json")
    hotpot = make_tools(AgentConfig(task="hotpotqa", search_sources=[cache]), TASKS["hotpotqa"])
    assert usage_hint(hotpot) == "search[query] or finish[answer]"  # the anchor's hint, unchanged


def _steps_for(script):
    """A StepSampler that answers each episode's prompt by script(question, step, observations so far)."""
    seen: list[tuple[str, int]] = []

    def respond(prompts: list[str], temperature: float, seed: int, keys: list) -> list[str]:
        out = []
        for prompt in prompts:
            question = re.search(r"Question (\w+)", prompt)[1]
            observations = re.findall(r"^Observation: (.*)$", prompt, re.M)
            seen.append((question, len(observations)))
            out.append(script(question, len(observations), observations))
        return out

    return respond, seen


@pytest.mark.parametrize("style", ["fireact", "selfplay"])
def test_episode_dispatches_actions_to_the_tools(tiny_model: Path, style: str):
    """Arithmetic questions with the calculator: the chat template of the tiny model renders the prompts,
    scripted steps call the tools, and each observation is what the tool returned (an unknown tool: the
    anchor's exception text, or ours)."""
    from selfplay.config import AgentConfig
    from selfplay.core.samplers import format_prompt
    from selfplay.envs.agent_episodes import Agent, new_episodes, play_agent_episodes, trajectory_row
    from selfplay.envs.react import get_action_format
    from selfplay.envs.tools import observation_style
    from selfplay.models import load_model

    _, tok = load_model(str(tiny_model), dtype="float32", device="cpu")
    task = TASKS["arith"]
    settings = AgentConfig(task="arith", max_steps=4, retries=1, observations=style)
    agent = Agent(task, make_tools(settings, task), actions=get_action_format("fireact"),
                  observations=observation_style(style))

    def script(question: str, step: int, observations: list[str]) -> str:
        if question == "sum":  # computes, then answers with the calculator's result
            if step == 0:
                return " add them\nAction: calculator[(4 + 3) * 2]"
            return f" done\nAction: finish[{observations[-1]}]"
        if question == "zero":  # a calculator error, then a wrong answer
            return " divide\nAction: calculator[1 / 0]" if step == 0 else " guess\nAction: finish[3]"
        if question == "unknown":  # a tool it does not have, then gives up
            return " look\nAction: search[seven]" if step == 0 else " hmm\nAction: finish[]"
        return " think more\nAction: calculator[1 + 1]"  # "loop": never finishes

    records = [{"id": q, "messages": [{"role": "user", "content": f"Question {q}: what is (4 + 3) * 2?"}],
                "reference": "(4 + 3) * 2 = 14\n#### 14", "meta": {"task": "arith", "answer": "14"}}
               for q in ("sum", "zero", "unknown", "loop")]
    respond, seen = _steps_for(script)
    episodes = new_episodes(records, lambda m: format_prompt(tok, m, "chat"), fewshot="", samples=1, seed=0)
    assert episodes[0].prompt == format_prompt(tok, records[0]["messages"], "chat")
    done = {}
    play_agent_episodes(agent, respond, episodes, settings, lambda ep: done.setdefault(ep.record["id"], ep), 0.0)

    ok, zero, unknown, loop = (done[q] for q in ("sum", "zero", "unknown", "loop"))
    assert [s.observation for s in ok.steps] == ["14", "Episode finished, reward = True"]
    assert ok.finished and ok.reward == 1.0 and ok.info["em"] == 1.0 and ok.tool_errors == 0
    assert zero.steps[0].observation == "calculator error: division by zero" and zero.tool_errors == 1
    assert zero.finished and zero.reward == 0.0
    assert unknown.invalid_actions == 1 and unknown.steps[0].observation == {
        "fireact": "('search', 'seven') generated an exception: Unknown tool name: search",
        "selfplay": "Invalid action: search[seven]. Use calculator[expression] or finish[answer]."}[style]
    assert unknown.finished and unknown.reward == 0.0
    assert not loop.finished and len(loop.steps) == 4 and loop.reward == 0.0
    assert all(s.observation == "2" for s in loop.steps)
    assert ("loop", 3) in seen  # each step saw the observations before it
    row = trajectory_row(records[0], [ok], {"kind": "agent"})
    assert row["em"] == 1.0 and row["gt"] == "14" and "Observation: 14\n" in row["traj"]


def test_episode_with_the_tiny_models_own_steps(tiny_model: Path):
    """The loop driven by the tiny model through sampler_steps: every episode ends (finished or out of
    steps), every step has an observation, and the same seed replays the same trajectories."""
    from selfplay.config import AgentConfig, GenerateConfig
    from selfplay.core.samplers import HFSampler, format_prompt
    from selfplay.envs.agent_episodes import Agent, new_episodes, play_agent_episodes, sampler_steps
    from selfplay.models import load_model

    model, tok = load_model(str(tiny_model), dtype="float32", device="cpu")
    sampler = HFSampler(model, tok, batch_size=4)
    settings = AgentConfig(task="arith", max_steps=2, retries=1)
    agent = Agent(TASKS["arith"], make_tools(settings, TASKS["arith"]))
    records = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"What is {i} + {i}?"}],
                "reference": f"#### {2 * i}", "meta": {"answer": str(2 * i)}} for i in range(3)]

    def play() -> list:
        done: list = []
        episodes = new_episodes(records, lambda m: format_prompt(tok, m, "chat"), fewshot="", samples=2, seed=5)
        play_agent_episodes(agent, sampler_steps(sampler, GenerateConfig(max_new_tokens=8)), episodes, settings,
                            done.append, 0.7)
        return done

    first, second = play(), play()
    assert len(first) == 6 and all(ep.steps and all(s.observation is not None for s in ep.steps) for ep in first)
    assert all(ep.finished or len(ep.steps) == 2 for ep in first)
    key = lambda eps: sorted((ep.record["id"], ep.seed, ep.text()) for ep in eps)  # noqa: E731
    assert key(first) == key(second)
