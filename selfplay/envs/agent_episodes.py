"""ReAct episodes with tools, batched across questions (ReinholdM/SPIN ``generation_fireact.py``).

Each step every live episode samples ``Thought: ... Action: ...`` until ``"\\nObservation:"`` (one batched
sampling call per seed group). A step with no ``Action: `` is sampled again up to ``agent.retries`` times
and then becomes ``Thought: failed / Action: finish[]``; the action's tool (:mod:`selfplay.envs.tools`)
gives the observation — the calls of I/O-bound tools (search) of one step run concurrently — and a tool
that ends the episode (finish) scores it; an episode is cut after ``agent.max_steps`` steps. Model output
is never executed: an action is only ever parsed as ``tool[argument]`` and handed to a tool that knows it.

How a step's text becomes a call is ``agent.actions`` (:data:`selfplay.envs.react.ACTION_FORMATS`: FireAct's
parser, or a strict one) and what the model sees where a call yields nothing usable is
``agent.observations`` (:data:`selfplay.envs.tools.OBSERVATION_STYLES`); with FireAct's (the defaults) an
action without ``[`` is dropped as the anchor drops it: nothing is appended, the step counts against
``agent.max_steps``, and the next step samples again (on another seed).

Differences from the anchor, on purpose: a retry keeps the ``"\\nObservation:"`` stop (the anchor's retry
had none and could invent observations inside the action), and greedy evaluation retries at
``agent.temperature`` (a greedy retry would repeat itself).

The loop samples through a :data:`StepSampler` callable, so the rollout stage and the agent evaluation
both drive it with their own model (:func:`sampler_steps` wraps a sampler) and neither depends on the other.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfplay.envs.react import FAILED_STEP, OBSERVATION_STOP, ActionFormat, Step, get_action_format, render_steps
from selfplay.envs.tasks import Task, get_task, gold_answer
from selfplay.envs.tools import Observation, ObservationStyle, Tool, make_tools, observation_style, usage_hint
from selfplay.errors import UserError

if TYPE_CHECKING:
    from selfplay.config import AgentConfig, Config, GenerateConfig, RemoteConfig

Messages = list[dict[str, str]]
# (prompt texts, temperature, seed, episode keys) -> one step text per prompt: what the model writes after
# "Thought:", ending before "\nObservation:". A step sampler may keep per-episode state between an episode's
# steps under its key (a KV cache: the next step's prompt extends this one); if it has a ``release(keys)``
# method the loop calls it as each episode ends.
StepSampler = Callable[[list[str], float, int, list[Hashable]], list[str]]


@dataclass(frozen=True)
class Agent:
    """What an episode plays with: the task that scores answers, the tools by name, a few-shot prompt."""

    task: Task
    tools: dict[str, Tool]
    fewshot: str = ""
    actions: ActionFormat = field(default_factory=lambda: get_action_format("fireact"))
    observations: ObservationStyle = field(default_factory=lambda: observation_style("fireact"))

    @property
    def usage(self) -> str:
        return usage_hint(self.tools)


def load_agent(agent: AgentConfig, remote: RemoteConfig | None = None) -> Agent:
    """The task, the tools and the few-shot text of ``agent``, all checked before any model is loaded;
    ``remote``: the timeouts and retries of tools that call a service (the search backends)."""
    fewshot = ""
    if agent.fewshot:
        path = Path(agent.fewshot)
        if not path.is_file():
            raise UserError(f"agent.fewshot: file not found: {path}")
        fewshot = path.read_text(encoding="utf-8")
    task = get_task(agent.task)
    return Agent(task, make_tools(agent, task, remote), fewshot, get_action_format(agent.actions),
                 observation_style(agent.observations))


@dataclass
class AgentEpisode:
    """One trajectory being played."""

    record: dict[str, Any]
    prompt: str  # the formatted prompt the trajectory continues
    messages: Messages  # the prompt as chat turns (the training record's prompt)
    seed: int
    steps: list[Step] = field(default_factory=list)
    finished: bool = False
    reward: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    tool_errors: int = 0
    invalid_actions: int = 0
    retries: int = 0
    dropped_steps: int = 0  # actions that were no call, dropped as FireAct drops them (also invalid actions)
    approximate_results: int = 0  # tool answers to a nearby call (the replay search's nearest recorded query)

    def text(self) -> str:
        return self.prompt + render_steps(self.steps)

    @property
    def key(self) -> tuple[str, int]:
        """The episode among a call's: its question and its seed (samples of one question differ by seed)."""
        return (str(self.record["id"]), self.seed)

    def to_json(self) -> dict[str, Any]:
        traj = self.text()
        return {"reward": bool(self.reward), "em": self.info.get("em", 0.0), "f1": self.info.get("f1", 0.0),
                "gt": self.info.get("gt", ""), "pred": self.info.get("pred", ""), "prompt": self.messages,
                "traj": traj, "traj_by_line": traj.split("\n"), "steps": [vars(s) for s in self.steps],
                "finished": self.finished, "num_steps": len(self.steps), "tool_errors": self.tool_errors,
                "invalid_actions": self.invalid_actions, "retries": self.retries, "dropped_steps": self.dropped_steps,
                "approximate_results": self.approximate_results}


def question_messages(record: dict[str, Any], fewshot: str) -> Messages:
    """The trajectory's prompt as chat turns: the record's turns, a few-shot prompt before the question."""
    messages = [dict(m) for m in record["messages"]]
    if fewshot:
        messages[-1]["content"] = f"{fewshot.rstrip()}\n\n{messages[-1]['content']}"
    return messages


def new_episodes(records: list[dict[str, Any]], render: Callable[[Messages], str], *, fewshot: str, samples: int,
                 seed: int) -> list[AgentEpisode]:
    """``samples`` fresh episodes per record (sample j on ``seed + 104729 j``); ``render`` formats a prompt."""
    out = []
    for rec in records:
        messages = question_messages(rec, fewshot)
        prompt = render(messages)
        out += [AgentEpisode(rec, prompt, messages, seed + 104729 * j) for j in range(samples)]
    return out


class SamplerSteps:
    """A :data:`StepSampler` over a sampler (:class:`selfplay.core.samplers.Sampler`) with the run's top_p and
    length limit, stopping each step at ``"\\nObservation:"``. The episode keys reach the sampler as cache
    keys: on the HF backend an episode's next step prefills only the observation and ``Thought:`` it
    appended (:mod:`selfplay.core.prefix_cache`), and :meth:`release` frees an ended episode's cache."""

    def __init__(self, sampler: Any, generate: GenerateConfig) -> None:
        self.sampler, self.generate = sampler, generate

    def __call__(self, prompts: list[str], temperature: float, seed: int, keys: list[Hashable]) -> list[str]:
        texts = self.sampler.generate(prompts, n=1, temperature=temperature, top_p=self.generate.top_p,
                                      max_new_tokens=self.generate.max_new_tokens, seed=seed, stop=[OBSERVATION_STOP],
                                      progress=False, cache_keys=keys)
        return [text for (text,) in texts]

    def release(self, keys: list[Hashable]) -> None:
        self.sampler.release(keys)


def sampler_steps(sampler: Any, generate: GenerateConfig) -> SamplerSteps:
    """The :data:`StepSampler` of ``sampler`` (see :class:`SamplerSteps`)."""
    return SamplerSteps(sampler, generate)


def _sample_steps(respond: StepSampler, episodes: list[AgentEpisode], temperature: float, attempt: int) -> list[str]:
    """One step text per episode (what follows ``Thought:``), each episode on its own seed."""
    out: list[str] = [""] * len(episodes)
    by_seed: dict[int, list[int]] = {}
    for i, ep in enumerate(episodes):
        # A dropped step leaves the text as it was: another seed, so a sampled step is drawn anew.
        by_seed.setdefault(ep.seed + 7919 * attempt + 15485863 * ep.dropped_steps, []).append(i)
    for seed, idx in by_seed.items():
        prompts = [episodes[i].text() + "Thought:" for i in idx]
        for i, text in zip(idx, respond(prompts, temperature, seed, [episodes[i].key for i in idx])):
            out[i] = text
    return out


def _next_steps(respond: StepSampler, episodes: list[AgentEpisode], settings: AgentConfig,
                temperature: float, actions: ActionFormat) -> list[tuple[str, str]]:
    """(thought, action) per episode, resampling steps without an action up to ``agent.retries`` times."""
    parsed: list[tuple[str, str] | None] = [None] * len(episodes)
    todo = list(range(len(episodes)))
    for attempt in range(settings.retries + 1):
        temp = temperature if attempt == 0 else max(temperature, settings.temperature)
        for i, text in zip(todo, _sample_steps(respond, [episodes[i] for i in todo], temp, attempt)):
            parsed[i] = actions.split(text)
        if attempt:
            for i in todo:
                episodes[i].retries += 1
        todo = [i for i in todo if parsed[i] is None]
        if not todo:
            break
    failed = actions.split(FAILED_STEP)
    return [p if p is not None else failed for p in parsed]  # type: ignore[misc]


def _call_tools(agent: Agent, episodes: list[AgentEpisode], steps: list[Step]) -> list[Observation | None]:
    """Each step's observation: from the tool its action calls, the observation style's text for an unknown
    tool or an action that is no call (``invalid``), or None where the style drops the step. Calls of
    concurrent (I/O-bound) tools run together on threads, the others here, in episode order."""
    calls: list[tuple[int, Tool, str]] = []
    observations: list[Observation | None] = [None] * len(steps)
    for i, step in enumerate(steps):
        call = agent.actions.call(step.action)
        if call is None:
            text = agent.observations.invalid(step.action, agent.usage)
            observations[i] = None if text is None else Observation(text, invalid=True)
            continue
        name = agent.actions.tool(call[0], agent.tools)
        if name is None:
            observations[i] = Observation(agent.observations.unknown(step.action, *call, agent.usage), invalid=True)
        else:
            calls.append((i, agent.tools[name], call[1]))
    threaded = [call for call in calls if call[1].concurrent]
    if threaded:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            results = pool.map(lambda call: call[1].run(call[2], episodes[call[0]].record), threaded)
            for (i, _, _), observation in zip(threaded, results):
                observations[i] = observation
    for i, tool, argument in calls:
        if not tool.concurrent:
            observations[i] = tool.run(argument, episodes[i].record)
    return observations


def play_agent_episodes(agent: Agent, respond: StepSampler, episodes: list[AgentEpisode], settings: AgentConfig,
                        on_done: Callable[[AgentEpisode], None], temperature: float) -> None:
    """Play ``episodes`` step by step, all together; ``on_done(episode)`` fires as each one ends.
    ``settings`` gives max_steps, retries and the retry temperature; ``temperature`` is the first try's.
    An ending episode is released from ``respond`` (its kept cache freed at once) before ``on_done``."""
    release = getattr(respond, "release", None)

    def end(ep: AgentEpisode) -> None:
        if release is not None:
            release([ep.key])
        on_done(ep)

    live = list(episodes)
    for _ in range(settings.max_steps):
        if not live:
            break
        steps = [Step(t, a) for t, a in _next_steps(respond, live, settings, temperature, agent.actions)]
        still = []
        for ep, step, observation in zip(live, steps, _call_tools(agent, live, steps)):
            if observation is None:  # dropped, as FireAct skips an action without "["
                ep.invalid_actions += 1
                ep.dropped_steps += 1
                still.append(ep)
                continue
            step.observation = observation.text
            ep.invalid_actions += observation.invalid
            ep.tool_errors += observation.error
            ep.approximate_results += observation.approximate
            if observation.done:
                ep.reward, ep.info, ep.finished = observation.reward, observation.info, True
            ep.steps.append(step)
            if ep.finished:
                end(ep)
            else:
                still.append(ep)
        live = still
    for ep in live:  # out of steps: unfinished, reward 0 (the anchor counts them as failures)
        ep.info = agent.task.score("", agent.task.gold(ep.record))[1]
        ep.reward = 0.0
        end(ep)


def trajectory_row(record: dict[str, Any], episodes: list[AgentEpisode], info: dict[str, Any]) -> dict[str, Any]:
    """The output line of one question: its first trajectory's anchor fields, all of them under ``samples``."""
    row = {"id": record["id"], "question": record["messages"][-1]["content"], "gt": gold_answer(record),
           "reference": record.get("reference"), **episodes[0].to_json(), "sampler": info}
    row["gt"] = episodes[0].info.get("gt", row["gt"])
    if len(episodes) > 1:
        row["samples"] = [ep.to_json() for ep in episodes]
    if record.get("meta"):
        row["meta"] = record["meta"]
    return row


def agent_info(cfg: Config, model: str, agent: Agent) -> dict[str, Any]:
    """The settings every trajectory of an output must share (checked on resume), saved with each row."""
    a, g = cfg.agent, cfg.generate
    return {"kind": "agent", "model": model, "task": a.task, "search": a.search, "tools": list(agent.tools),
            "actions": a.actions, "observations": a.observations,
            "max_steps": a.max_steps, "retries": a.retries, "temperature": a.temperature, "samples": a.samples,
            "fewshot": a.fewshot, "top_p": g.top_p, "max_new_tokens": g.max_new_tokens, "seed": g.seed,
            "prompt_format": g.prompt_format}


def score_steps(task: Task, steps: list[Step], gold: str, actions: ActionFormat) -> tuple[float, dict[str, Any]] | None:
    """The score of a played trajectory's final ``finish`` as ``actions`` reads it (reward, info), None when its
    last step does not finish. Scoring a recorded FireAct trajectory with its own parser (``fireact``) gives
    the reward, EM, F1 and prediction FireAct recorded."""
    if not steps:
        return None
    call = actions.call(steps[-1].action)
    if call is None or actions.tool(call[0], ("finish",)) != "finish":
        return None
    return task.score(call[1], gold)
