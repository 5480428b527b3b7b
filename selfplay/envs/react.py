"""ReAct trajectories (FireAct / SPIN-for-agents): parsing and rendering.

A trajectory is text of steps ``Thought: ...\\nAction: search[q]\\nObservation: ...`` ending with
``Action: finish[answer]`` and ``Observation: Episode finished, reward = ...``. The model writes the
Thought/Action lines; observations come from tools (:mod:`selfplay.envs.tools`), so in training they are
context, never scored (``selfplay.methods.agent.trajectory_segments``). How answers are scored is the
task's (:mod:`selfplay.envs.tasks`); the episode loop is :mod:`selfplay.envs.agent_episodes`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OBSERVATION_STOP = "\nObservation:"
FINISHED = "Episode finished, reward = {reward}"
FAILED_STEP = "Thought: failed\nAction: finish[]"
_ACTION = re.compile(r"^\s*(\w+)\s*\[(.*)\]\s*$", re.DOTALL)
_STEP_LINE = re.compile(r"^(Thought|Action|Observation):\s?(.*)$")


@dataclass
class Step:
    """One ReAct step: the model's thought and action, and the observation the environment returned."""

    thought: str
    action: str  # e.g. "search[capital of France]" or "finish[Paris]"
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
    """The model's step text (what it wrote after ``Thought:``) as (thought, action), as the anchor parses it;
    None when it holds no ``Action: ``."""
    text = text.strip()
    if "\nAction: " in text or "\nAction:" in text:
        thought, action = re.split(r"\nAction:\s?", text, maxsplit=1)
    elif text.startswith("Action:"):
        thought, action = "", text[len("Action:"):]
    else:
        return None
    thought = thought.strip()
    thought = thought[len("Thought:"):].strip() if thought.startswith("Thought:") else thought
    return thought, action.strip().split("\n")[0].strip()


def parse_trajectory(text: str) -> list[Step]:
    """The steps of a trajectory's response text (``Thought:``/``Action:``/``Observation:`` lines; an
    observation runs until the next ``Thought:`` or ``Action:`` line)."""
    steps: list[Step] = []
    current: dict[str, list[str]] = {}
    key = None

    def flush() -> None:
        # Thoughts and observations keep their text exactly (the trajectory re-renders byte for byte);
        # the action is stripped ("Action:  finish[x]" occurs) since it is parsed as tool[argument].
        if "action" in current:
            obs = "\n".join(current["observation"]) if "observation" in current else None
            steps.append(Step("\n".join(current.get("thought", [])), "\n".join(current["action"]).strip(), obs))

    for line in text.split("\n"):
        match = _STEP_LINE.match(line)
        if match:
            name = match[1].lower()
            if name == "thought" and "action" in current:
                flush()
                current = {}
            if name == "action" and "action" in current:  # two actions in a row: a new step
                flush()
                current = {}
            key = name
            current.setdefault(key, []).append(match[2])
        elif key is not None and line.strip():
            current[key].append(line)
    flush()
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
