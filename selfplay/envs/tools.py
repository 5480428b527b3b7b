"""The agent's tools: ``name[argument]`` in, an :class:`Observation` out, one registry entry each.

A ReAct step ends with ``Action: name[argument]``; the episode loop (:mod:`selfplay.envs.agent_episodes`)
looks the name up among the episode's tools (as ``agent.actions`` reads it) and shows the model what ``run``
returns. An unknown name is an invalid action, never an error: its observation is the ``agent.observations``
style's (FireAct's exception text, or ours). Tool output is untrusted text that is only ever shown to the
model, and model text is only ever parsed as ``name[argument]`` and handed to a tool that knows what to do
with it.

* ``search`` — a search backend of :mod:`selfplay.envs.search` (``agent.search``: replay, serpapi); a
  failing backend is an observation saying so, counted as a tool error; a search without result shows
  ``None`` (FireAct's text) or "No results found." (``agent.observations``). I/O bound, so the searches of
  one step run on threads at once.
* ``finish`` — ends the episode: the answer is scored by the task (:mod:`selfplay.envs.tasks`) against the
  record's gold answer, and the observation is ``Episode finished, reward = True|False`` (``1|0`` for the
  tasks whose anchor scores with integers: StrategyQA, MMLU).
* ``calculator`` — ``+ - * /`` and parentheses over decimal numbers (:mod:`selfplay.envs.calculator`, a
  whitelisted walk over the expression's syntax tree, never ``eval``); a bad expression is a tool error.

Which tools an agent has: ``agent.tools``, or the task's own (``Task.tools``) when that is empty. Adding a
tool is one class and one entry in :data:`TOOLS` (docs/adding-a-tool.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from selfplay.envs.search import NO_RESULTS
from selfplay.errors import ConfigError, suggest

if TYPE_CHECKING:
    from selfplay.config import AgentConfig, RemoteConfig
    from selfplay.envs.tasks import Task

Record = dict[str, Any]
FINISHED = "Episode finished, reward = {reward}"


@dataclass(frozen=True)
class Observation:
    """What a tool call returns: the text the model sees next, and what the episode makes of it."""

    text: str
    error: bool = False  # the tool failed (the text says how); counted per episode as a tool error
    done: bool = False  # the episode ends with this call (finish)
    reward: float = 0.0  # with done: the episode's reward ...
    info: dict[str, Any] = field(default_factory=dict)  # ... and the task's scoring fields (em, f1, pred, gt)
    # The answer is to something near the call, not the call (the replay search's nearest recorded query).
    approximate: bool = False
    invalid: bool = False  # the action called no tool of the agent; counted per episode as an invalid action


@dataclass(frozen=True)
class ObservationStyle:
    """The texts a model sees where a call yields nothing usable (``agent.observations``): ``empty`` for a
    search that found nothing, ``unknown(action, name, argument, usage)`` for a tool the agent lacks, and
    ``invalid(action, usage)`` for an action that is no call at all (None: the step is dropped)."""

    empty: str
    unknown: Callable[[str, str, str, str], str]
    invalid: Callable[[str, str], str | None]


def _invalid_action(action: str, usage: str) -> str:
    return f"Invalid action: {action[:200]}. Use {usage}."


# fireact: what FireAct showed (generation.py:121-131, 150): a search without result is the text "None" (its
# search() returns None), an unknown tool is the exception its call_tools raises, and an action without "["
# is skipped (nothing is appended; the next step samples again from the same text). selfplay: say what happened.
OBSERVATION_STYLES: dict[str, ObservationStyle] = {
    "fireact": ObservationStyle(
        "None", lambda action, name, argument, usage: f"{(name, argument)!r} generated an exception: "
                                                      f"Unknown tool name: {name}",
        lambda action, usage: None),
    "selfplay": ObservationStyle(NO_RESULTS, lambda action, name, argument, usage: _invalid_action(action, usage),
                                 _invalid_action),
}


class Tool(Protocol):
    """One tool of an episode."""

    name: str
    usage: str  # how a call is written, for the hint after an invalid action: "search[query]"
    concurrent: bool  # calls of one step may run at once on threads (I/O-bound tools)

    def run(self, argument: str, record: Record) -> Observation:
        """The observation for ``name[argument]`` in the episode of ``record`` (the question being answered:
        its gold answer for finish, its own context for a tool that has one). Never raises for bad input."""
        ...


class SearchTool:
    """``search[query]`` through a backend of :data:`selfplay.envs.search.SEARCH_BACKENDS`."""

    name = "search"
    usage = "search[query]"
    concurrent = True

    def __init__(self, backend: Callable[[str], Any], empty: str = NO_RESULTS) -> None:
        self.backend, self.empty = backend, empty

    def run(self, argument: str, record: Record) -> Observation:
        result = self.backend(argument)
        return Observation(self.empty if result.empty else result.text, error=result.error,
                           approximate=result.nearest)


class FinishTool:
    """``finish[answer]``: the task scores the answer against the record's gold answer; the episode ends."""

    name = "finish"
    usage = "finish[answer]"
    concurrent = False

    def __init__(self, task: Task) -> None:
        self.task = task

    def run(self, argument: str, record: Record) -> Observation:
        reward, info = self.task.score(argument, self.task.gold(record))
        return Observation(FINISHED.format(reward=self.task.reward_text(reward)), done=True, reward=reward, info=info)


class CalculatorTool:
    """``calculator[expression]``: + - * / and parentheses, exact decimals; refusals are tool errors."""

    name = "calculator"
    usage = "calculator[expression]"
    concurrent = False

    def run(self, argument: str, record: Record) -> Observation:
        from selfplay.envs.calculator import CalculatorError, evaluate, format_number

        try:
            return Observation(format_number(evaluate(argument)))
        except CalculatorError as e:
            return Observation(f"calculator error: {e}", error=True)


def _search(agent: AgentConfig, task: Task, remote: RemoteConfig | None) -> Tool:
    from selfplay.envs.search import make_search

    return SearchTool(make_search(agent.search, agent.search_sources, agent.search_cache, remote),
                      empty=observation_style(agent.observations).empty)


def observation_style(name: str) -> ObservationStyle:
    """The observation style called ``name`` (``agent.observations``); an unknown name is a ConfigError."""
    if name not in OBSERVATION_STYLES:
        raise ConfigError(f"agent.observations '{name}' is not one of {', '.join(OBSERVATION_STYLES)}."
                          f"{suggest(name, OBSERVATION_STYLES)}")
    return OBSERVATION_STYLES[name]


def _check_search(agent: AgentConfig) -> None:
    from selfplay.envs.search import check_search_config

    check_search_config(agent)


@dataclass(frozen=True)
class ToolSpec:
    """A registry entry: how to build the tool from the agent's config for a task (and the ``remote`` section:
    timeouts and retries of tools that call a service), and what to check in that config when it is loaded
    (before any model)."""

    summary: str
    build: Callable[[AgentConfig, Task, RemoteConfig | None], Tool]
    check: Callable[[AgentConfig], None] | None = None
    ends_episode: bool = False  # an agent needs one such tool, or no episode could finish


TOOLS: dict[str, ToolSpec] = {
    "search": ToolSpec("web or replayed search results (agent.search)", _search, _check_search),
    "finish": ToolSpec("give the final answer; the task scores it", lambda agent, task, remote: FinishTool(task),
                       ends_episode=True),
    "calculator": ToolSpec("+ - * / and parentheses over decimal numbers", lambda agent, task, remote: CalculatorTool()),
}


def tool_names(agent: AgentConfig, task: Task) -> list[str]:
    """The tools of an agent: ``agent.tools``, else the task's own."""
    return list(agent.tools) or list(task.tools)


def check_tools(agent: AgentConfig, task: Task) -> None:
    """The agent's tools exist, one of them ends episodes, and each one's settings are complete."""
    names = tool_names(agent, task)
    for name in names:
        if name not in TOOLS:
            raise ConfigError(f"agent.tools: unknown tool '{name}'.{suggest(name, TOOLS)} "
                              f"Available: {', '.join(TOOLS)}.")
    if not any(TOOLS[name].ends_episode for name in names):
        raise ConfigError(f"agent.tools {names} has no tool that ends an episode: add finish.")
    for name in names:
        if TOOLS[name].check is not None:
            TOOLS[name].check(agent)


def make_tools(agent: AgentConfig, task: Task, remote: RemoteConfig | None = None) -> dict[str, Tool]:
    """The agent's tools by name, in order, built (a search backend's key and sources checked here)."""
    check_tools(agent, task)
    return {name: TOOLS[name].build(agent, task, remote) for name in tool_names(agent, task)}


def usage_hint(tools: dict[str, Tool]) -> str:
    """"search[query] or finish[answer]": how the model may call its tools."""
    usages = [tool.usage for tool in tools.values()]
    return " or ".join([", ".join(usages[:-1]), usages[-1]]) if len(usages) > 1 else usages[0]
