"""Training objectives behind one interface, so the trainer has one loop for every method.

An objective says what a training record holds (a pair, or a single response), whether the trainer must
precompute reference log-probs (none are computed when it does not), which losses it offers, and how a
batch's sequence log-probs become a loss and the metrics the anchors log:

* :class:`PreferenceObjective` — pairwise losses of :data:`selfplay.core.losses.LOSSES` against a
  precomputed reference (SPIN, SPPO, GPO, DPO): ``rewards/{win,lose}``, ``rewards/margins``, ...
* :class:`LikelihoodObjective` — weighted likelihood without a reference, the losses of
  :data:`LIKELIHOOD_LOSSES`: ``sft`` (continued supervised fine-tuning) and ``rwr`` (RISE's reward-weighted
  regression): ``nll``, ``weight``, ``logps/response``.

Shapes: a batch of B records with k responses each is scored as B*k rows (see
:func:`selfplay.core.logprobs.example_batch`): ``logps``/``num_tokens`` [B*k], ``ref`` [B, k],
each value in ``values`` [B].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from selfplay.config import TrainConfig
from selfplay.core import losses as L
from selfplay.core.examples import RecordKind
from selfplay.errors import ConfigError, suggest

Metrics = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Objective(ABC):
    """Base of the objectives; see the module docstring."""

    name: str
    record_kind: RecordKind
    needs_reference: bool

    @property
    def responses(self) -> int:
        """Responses per record (rows per record in a batch)."""
        return 2 if self.record_kind == "pair" else 1

    @abstractmethod
    def loss_names(self) -> list[str]:
        """The losses this objective computes."""

    @abstractmethod
    def required_fields(self, loss: str) -> tuple[str, ...]:
        """Numeric record fields ``loss`` reads (checked when the records are loaded)."""

    def check(self, loss: str, train: TrainConfig) -> None:
        """Refuse a loss this objective lacks, or options that loss ignores, when the config is built."""
        if loss not in self.loss_names():
            raise ConfigError(f"train.loss '{loss}' is not a {self.name} loss.{suggest(loss, self.loss_names())} "
                              f"Choose one of: {', '.join(self.loss_names())}.")

    @abstractmethod
    def compute(self, loss: str, logps: torch.Tensor, num_tokens: torch.Tensor, values: dict[str, torch.Tensor],
                ref: torch.Tensor | None, train: TrainConfig, names: tuple[str, str]) -> tuple[torch.Tensor, Metrics]:
        """(scalar loss, detached scalar metrics) of one batch; ``names`` name the two responses in logs."""


class PreferenceObjective(Objective):
    """Pairwise losses on (chosen, rejected) log-ratios against the iteration's starting model."""

    def __init__(self) -> None:
        super().__init__("preference", "pair", needs_reference=True)

    def loss_names(self) -> list[str]:
        return sorted(L.LOSSES)

    def required_fields(self, loss: str) -> tuple[str, ...]:
        return L.LOSS_FIELDS.get(loss, ())

    def check(self, loss: str, train: TrainConfig) -> None:
        super().check(loss, train)
        if train.label_smoothing and loss not in L.LABEL_SMOOTHING_LOSSES:
            raise ConfigError(f"train.label_smoothing={train.label_smoothing} only applies to the "
                              f"{'/'.join(sorted(L.LABEL_SMOOTHING_LOSSES))} losses, not '{loss}'; set it to 0.")
        if train.beta <= 0:
            raise ConfigError(f"train.beta must be positive, got {train.beta}")

    def compute(self, loss: str, logps: torch.Tensor, num_tokens: torch.Tensor, values: dict[str, torch.Tensor],
                ref: torch.Tensor | None, train: TrainConfig, names: tuple[str, str]) -> tuple[torch.Tensor, Metrics]:
        assert ref is not None, "the preference objective needs reference log-probs"
        pc, pr = logps.view(2, -1).unbind(0)
        ref = ref.to(pc.dtype)
        out = L.get_loss(loss)(pc, pr, ref[:, 0], ref[:, 1], beta=train.beta, label_smoothing=train.label_smoothing,
                               **{f: values[f].to(pc.dtype) for f in self.required_fields(loss)})
        value = out.losses.mean()
        cr, rr = out.chosen_rewards, out.rejected_rewards
        win, lose = names
        return value, {"loss": value.detach().float(), f"rewards/{win}": cr.mean(), f"rewards/{lose}": rr.mean(),
                       "rewards/margins": (cr - rr).mean(), "rewards/accuracies": (cr > rr).float().mean(),
                       f"logps/{win}": pc.detach().mean(), f"logps/{lose}": pr.detach().mean()}


@dataclass(frozen=True)
class LikelihoodLoss:
    """A likelihood loss: ``compute(logps [B], num_tokens [B], values, train) -> (scalar loss, weights [B])``,
    the per-record value it reads (``field``, "" for none) and its own config checks."""

    compute: Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], TrainConfig],
                      tuple[torch.Tensor, torch.Tensor]]
    field: str = ""
    check: Callable[[TrainConfig], None] | None = None


def _sft(logps: torch.Tensor, num_tokens: torch.Tensor, values: dict[str, torch.Tensor],
         train: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    return L.sft_loss(logps, num_tokens), torch.ones_like(logps)


def _rwr(logps: torch.Tensor, num_tokens: torch.Tensor, values: dict[str, torch.Tensor],
         train: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    rewards = values["reward"].to(logps.dtype)
    value = L.rwr_loss(logps, rewards, temperature=train.rwr_temperature, num_tokens=num_tokens,
                       weighting=train.rwr_weighting)
    return value, L.rwr_weights(rewards, temperature=train.rwr_temperature, weighting=train.rwr_weighting)


def _check_rwr(train: TrainConfig) -> None:
    if train.rwr_weighting == "exp" and train.rwr_temperature <= 0:
        raise ConfigError(f"train.rwr_temperature must be positive, got {train.rwr_temperature}")


# Likelihood losses (no reference), by name: SFT weighs every example alike; RWR (RISE) weighs each by its
# reward (see selfplay.core.losses.rwr_loss).
LIKELIHOOD_LOSSES: dict[str, LikelihoodLoss] = {
    "sft": LikelihoodLoss(_sft),
    "rwr": LikelihoodLoss(_rwr, field="reward", check=_check_rwr),
}


class LikelihoodObjective(Objective):
    """Weighted negative log-likelihood of the trained response tokens; no reference model."""

    def __init__(self) -> None:
        super().__init__("likelihood", "single", needs_reference=False)

    def loss_names(self) -> list[str]:
        return sorted(LIKELIHOOD_LOSSES)

    def required_fields(self, loss: str) -> tuple[str, ...]:
        field = LIKELIHOOD_LOSSES[loss].field if loss in LIKELIHOOD_LOSSES else ""
        return (field,) if field else ()

    def check(self, loss: str, train: TrainConfig) -> None:
        super().check(loss, train)
        if train.label_smoothing:
            raise ConfigError(f"train.label_smoothing applies to preference losses, not '{loss}'; set it to 0.")
        if LIKELIHOOD_LOSSES[loss].check is not None:
            LIKELIHOOD_LOSSES[loss].check(train)

    def compute(self, loss: str, logps: torch.Tensor, num_tokens: torch.Tensor, values: dict[str, torch.Tensor],
                ref: torch.Tensor | None, train: TrainConfig, names: tuple[str, str]) -> tuple[torch.Tensor, Metrics]:
        value, weights = LIKELIHOOD_LOSSES[loss].compute(logps, num_tokens, values, train)
        nll = -(logps.detach() / num_tokens.clamp(min=1)).mean()
        return value, {"loss": value.detach().float(), "nll": nll, "weight": weights.detach().mean(),
                       f"logps/{names[0]}": logps.detach().mean()}


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (PreferenceObjective(), LikelihoodObjective())}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}'.{suggest(name, OBJECTIVES)}")
    return OBJECTIVES[name]


def batch_values(examples: list[Any], fields: tuple[str, ...], device: torch.device) -> dict[str, torch.Tensor]:
    """The numeric fields of a batch's records as [B] float32 tensors."""
    return {f: torch.tensor([e.values[f] for e in examples], device=device, dtype=torch.float32) for f in fields}
