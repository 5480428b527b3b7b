"""What a self-play method is, as one registry entry (the house style of :mod:`selfplay.judges.base`).

A :class:`Method` declares everything the stages need to run it, so ``loop`` and ``train`` never branch
on a method's name:

* ``collects`` — what an iteration gathers with the current model, the name of a collector in
  :mod:`selfplay.stages.collect`: ``references`` (nothing new: the SFT answers), ``samples`` (n samples per
  prompt), ``ranked`` (samples judged K×K by ``rank.judge``), ``turns`` (multi-turn self-correction
  rollouts in an environment) or ``trajectories`` (tool-using agent episodes);
* ``build`` — how the collected records become training records (pairs or weighted single responses,
  see :mod:`selfplay.core.examples`), with statistics for the run's log;
* ``objective`` and ``default_loss`` — which trainer objective and loss (:mod:`selfplay.core.objectives`);
* ``preset`` — the anchors' numbers, layered between the defaults and the user's YAML;
* ``names``, ``columns``, ``evaluations`` — how its training metrics are named, which extra columns its
  iteration table shows and which extra per-iteration evaluations it runs;
* ``margin`` — whether its evaluations report the SPIN margin against the previous iterate;
* ``iterates`` — False for a judge trained once with ``selfplay train`` (gpm, bt-rm): ``loop`` refuses it.

Adding a method is one module that defines a ``Method`` plus one line in :data:`selfplay.methods.METHODS`
(see docs/adding-a-method.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selfplay.config import Config

# (collected records of one iteration, iteration index, the iteration's config) -> (training records, stats)
BuildFn = Callable[[list[dict[str, Any]], int, "Config"], tuple[list[dict[str, Any]], dict[str, Any]]]
# (key, column title, format) of a per-iteration table column.
Column = tuple[str, str, str]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    collects: str
    build: BuildFn
    objective: str
    default_loss: str
    preset: dict[str, Any] = field(default_factory=dict)
    # Train on this iteration's records plus the previous iteration's (SPIN), when loop.mix_previous is on.
    mixes_previous: bool = False
    # How the logged metrics name the two responses of a pair, or the single response.
    names: tuple[str, str] = ("chosen", "rejected")
    columns: tuple[Column, ...] = ()
    evaluations: tuple[str, ...] = ()
    # The evaluation metric that says whether the method did what it trains for (RISE: turn-T accuracy without
    # an oracle); ``loop.stop_metric: auto`` watches it where the evaluation has it. None: the task accuracy.
    target_metric: str | None = None
    # Extra config checks, run when the config is built (before any model is loaded).
    check: Callable[[Config], None] | None = None
    # False for methods that train a judge once (``selfplay train``), which ``loop`` refuses.
    iterates: bool = True
    # Its evaluations also score each model's own greedy answers and the previous iterate's, for the SPIN margin
    # (the log-ratio SPIN trains). SPIN and its SFT baselines report it; for the others those two answers were a
    # column no one reads, and most of each evaluation's scoring (SPPO quickstart: evaluations 442 s -> 326 s).
    margin: bool = False
