"""ReAct trajectories (FireAct / SPIN-for-agents): parsing, rendering, and how a step's text becomes a call.

A trajectory is text of steps ``Thought: ...\\nAction: search[q]\\nObservation: ...`` ending with
``Action: finish[answer]`` and ``Observation: Episode finished, reward = ...``. The model writes the
Thought/Action lines; observations come from tools (:mod:`selfplay.envs.tools`), so in training they are
context, never scored (``selfplay.methods.agent.trajectory_segments``). How answers are scored is the
task's (:mod:`selfplay.envs.tasks`); the episode loop is :mod:`selfplay.envs.agent_episodes`.

How the model's step text becomes a tool call is an :class:`ActionFormat` (``agent.actions``):

* ``fireact`` (default) — the anchor's code (anchen1011/FireAct ``generation.py:78-110``, the same in
  ReinholdM/SPIN): the action is everything after the first ``"\\nAction: "`` (up to a second one, and
  over several lines), the tool name everything before its first ``[``, the argument what lies between the
  first ``[`` and the next ``[`` (or the end) minus its last character; a tool named with ``finish`` in it
  finishes; an action without ``[`` is no call at all.
* ``strict`` — the action is the first line after ``Action:`` and must read ``name[argument]`` exactly
  (``finish[Paris] because`` is an invalid action, ``search[a [b] c]`` searches ``a [b] c``), the name
  case-folded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from selfplay.errors import UserError, suggest

OBSERVATION_STOP = "\nObservation:"
FINISHED = "Episode finished, reward = {reward}"
FAILED_STEP = "Thought: failed\nAction: finish[]"
_ACTION = re.compile(r"^\s*(\w+)\s*\[(.*)\]\s*$", re.DOTALL)


@dataclass
class Step:
    """One ReAct step: the model's thought and action, and the observation the environment returned."""

    thought: str
    action: str  # as written after "Action: ", e.g. "search[capital of France]" or "finish[Paris]"
    observation: str | None = None

    @property
    def tool(self) -> str | None:
        parsed = parse_action(self.action)
        return parsed[0] if parsed else None


def parse_action(action: str) -> tuple[str, str] | None:
    """``"search[q]"`` -> ("search", "q"); the tool name is lower-cased; None when not ``name[arg]``."""
    match = _ACTION.match(action.strip())
    return (match[1].lower(), match[2]) if match else None


def split_thought_action(text: str) -> tuple[str, str] | None:
    """The ``strict`` split of the model's step text (what it wrote after ``Thought:``): (thought, the first
    line of the action); None when it holds no ``Action:``."""
    text = text.strip()
    if "\nAction: " in text or "\nAction:" in text:
        thought, action = re.split(r"\nAction:\s?", text, maxsplit=1)
    elif text.startswith("Action:"):
        thought, action = "", text[len("Action:"):]
    else:
        return None
    return prune_thought(thought.strip()), action.strip().split("\n")[0].strip()


def prune_thought(thought: str) -> str:
    """generation.py:35-38: a thought the model began with another ``Thought:`` loses it."""
    return thought[len("Thought:"):].strip() if thought.startswith("Thought:") else thought


def fireact_split(text: str) -> tuple[str, str] | None:
    """generation.py:78-87: ``"\\nAction: "`` in the stripped text splits it there and the action is the piece
    after (not stripped further); else ``"Action: "`` anywhere makes the thought empty and the action the
    text after its first 8 characters; else None (the step is sampled again)."""
    stripped = text.strip()
    if "\nAction: " in stripped:
        thought, action = stripped.split("\nAction: ")[:2]
    elif "Action: " in stripped:
        thought, action = "", text[len("Action: "):]
    else:
        return None
    return prune_thought(thought), action


def fireact_call(action: str) -> tuple[str, str] | None:
    """generation.py:105-110: (the text before the first ``[``, the text between it and the next ``[``
    minus its last character); None without a ``[`` (the anchor skips the step)."""
    parts = action.split("[")
    if len(parts) < 2:
        return None
    return parts[0], parts[1][:-1]


def _fireact_tool(name: str, tools: Collection[str]) -> str | None:
    # generation.py:112/135: any name containing "finish" finishes; tools/__init__.py:3-7: others match exactly.
    if "finish" in name.lower() and "finish" in tools:
        return "finish"
    return name if name in tools else None


@dataclass(frozen=True)
class ActionFormat:
    """How a step's text becomes a tool call: ``split`` (step text -> (thought, action); None: no action, the
    step is sampled again), ``call`` (action -> (the tool name as written, argument); None: not a call) and
    ``tool`` (the name as written, the agent's tools -> the tool it calls; None: an unknown tool)."""

    name: str
    split: Callable[[str], tuple[str, str] | None]
    call: Callable[[str], tuple[str, str] | None]
    tool: Callable[[str, Collection[str]], str | None]


ACTION_FORMATS: dict[str, ActionFormat] = {f.name: f for f in (
    ActionFormat("fireact", fireact_split, fireact_call, _fireact_tool),
    ActionFormat("strict", split_thought_action, lambda action: parse_action(action.strip().split("\n")[0]),
                 lambda name, tools: name if name in tools else None),
)}


def get_action_format(name: str) -> ActionFormat:
    if name not in ACTION_FORMATS:
        raise UserError(f"unknown action format '{name}'.{suggest(name, ACTION_FORMATS)} "
                        f"Available: {', '.join(ACTION_FORMATS)}.")
    return ACTION_FORMATS[name]


def parse_trajectory(text: str) -> list[Step]:
    """The steps of a trajectory's response text, as the anchor writes them (generation.py:150:
    ``Thought: {thought}\\nAction: {action}\\nObservation: {observation}\\n`` per step): a thought runs to
    the next ``"\\nAction: "``, an action to the next ``"\\nObservation: "`` (it may span lines: FireAct
    keeps everything after ``Action: ``), an observation to the next line starting ``Thought:``. So
    :func:`render_steps` gives the text back byte for byte; a trailing thought without an action is dropped."""
    steps: list[Step] = []
    pos = text.find("Thought:")
    while pos >= 0:
        body = pos + len("Thought:")
        body += text.startswith(" ", body)
        act = text.find("\nAction: ", body)
        if act < 0:
            break
        thought = text[body:act]
        obs = text.find("\nObservation: ", act + 1)
        if obs < 0:
            steps.append(Step(thought, text[act + len("\nAction: "):].rstrip("\n")))
            break
        nxt = text.find("\nThought:", obs + 1)
        end = nxt if nxt >= 0 else len(text)
        observation = text[obs + len("\nObservation: "):end]
        steps.append(Step(thought, text[act + len("\nAction: "):obs],
                          observation[:-1] if nxt < 0 and observation.endswith("\n") else observation))
        pos = nxt + 1 if nxt >= 0 else -1
    return steps


def render_steps(steps: list[Step]) -> str:
    """Steps as trajectory text (each observation line ends with a newline, as the anchor writes them)."""
    out = []
    for s in steps:
        out.append(f"Thought: {s.thought}\nAction: {s.action}\n")
        if s.observation is not None:
            out.append(f"Observation: {s.observation}\n")
    return "".join(out)


def is_react_trajectory(text: str) -> bool:
    """Whether a reference answer is a ReAct trajectory (has Action lines and observations)."""
    return bool(re.search(r"^Action:", text, re.M)) and bool(re.search(r"^Observation:", text, re.M))


def response_part(trajectory: str) -> str:
    """The response of a full anchor ``traj`` (after ``### Response:``), else the text itself."""
    marker = re.search(r"### Response:[ \t]*\n?", trajectory)
    return trajectory[marker.end():] if marker else trajectory
