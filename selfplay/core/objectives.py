"""Training objectives behind one interface, so the trainer has one loop for every method.

An objective says what a training record holds (a pair, or a single response), whether the trainer must
precompute reference log-probs (none are computed when it does not), which losses it offers, and how a
batch's sequence log-probs become a loss and the metrics the anchors log:

* :class:`PreferenceObjective` — pairwise losses of :data:`selfplay.core.losses.LOSSES` against a
  precomputed reference (SPIN, SPPO, GPO, DPO): ``rewards/{win,lose}``, ``rewards/margins``, ...
* :class:`LikelihoodObjective` — weighted likelihood without a reference, the losses of
  :data:`LIKELIHOOD_LOSSES`: ``sft`` (continued supervised fine-tuning), ``rwr`` (RISE's reward-weighted
  regression) and ``weighted`` (weights given with the records): ``nll``, ``weight``, ``logps/response``.
* :class:`ScorerObjective` — a judge being trained (GPM, Bradley-Terry reward model): pairs scored by a head
  on the decoder, no log-probs and no reference: ``accuracy``, ``prob``, ``score``.

Beyond the loss, an objective owns what the trainer does differently for it (hooks with the log-prob
defaults): how records are loaded and tokenized, what model is trained and wrapped for accelerate, how a
batch is laid out. The trainer calls the hooks and never asks which objective it runs.

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
from selfplay.core import judge_losses as JL
from selfplay.core import losses as L
from selfplay.core import preference_model as PM
from selfplay.core.examples import (RecordKind, Segment, TokenizedExample, TrainRecord, load_examples,
                                    tokenize_records)
from selfplay.core.logprobs import SequenceLogps, training_batch
from selfplay.data.preference_pairs import read_preference_pairs
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
        """(scalar loss, detached scalar metrics) of one batch; ``names`` name the two responses in logs.
        ``logps``/``num_tokens`` are the two outputs of :meth:`scorer`'s forward."""

    # ---- trainer hooks; the defaults are the log-prob objectives'

    def load_records(self, path: Any, fields: tuple[str, ...]) -> list[TrainRecord]:
        """Read and validate the training records (errors name file, line and field)."""
        return load_examples(path, self.record_kind, fields)

    def tokenize(self, records: list[TrainRecord], tokenizer: Any, *, prompt_format: str, max_length: int,
                 max_prompt_length: int) -> tuple[list[TokenizedExample], int]:
        return tokenize_records(records, tokenizer, prompt_format=prompt_format, max_length=max_length,
                                max_prompt_length=max_prompt_length)

    def trained_model(self, policy: Any, train: TrainConfig, model_dir: Any, device: str | None) -> Any:
        """The module whose parameters train (the loaded causal LM, after LoRA)."""
        return policy

    def scorer(self, model: Any, sync: bool) -> torch.nn.Module:
        """What accelerate prepares and the loop calls: forward(**batch) -> the two inputs of :meth:`compute`."""
        return SequenceLogps(model, sync=sync)

    def batch(self, model: Any, examples: list[Any], pad_id: int) -> dict[str, torch.Tensor]:
        return training_batch(model, examples, pad_id)


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
        options = {kw: getattr(train, key) for kw, key in L.LOSS_OPTIONS.get(loss, {}).items()}
        out = L.get_loss(loss)(pc, pr, ref[:, 0], ref[:, 1], beta=train.beta, label_smoothing=train.label_smoothing,
                               **{f: values[f].to(pc.dtype) for f in self.required_fields(loss)}, **options)
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


def _weighted(logps: torch.Tensor, num_tokens: torch.Tensor, values: dict[str, torch.Tensor],
              train: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    weights = values["weight"].to(logps.dtype)
    return L.weighted_nll_loss(logps, weights, num_tokens), weights


def _check_rwr(train: TrainConfig) -> None:
    if train.rwr_weighting == "exp" and train.rwr_temperature <= 0:
        raise ConfigError(f"train.rwr_temperature must be positive, got {train.rwr_temperature}")


# Likelihood losses (no reference), by name: SFT weighs every example alike; RWR (RISE) weighs each by its
# reward (see selfplay.core.losses.rwr_loss); "weighted" by the weight the record carries (the RISE anchor's
# finetune.json, read by `selfplay data prepare`: selfplay.core.losses.weighted_nll_loss).
LIKELIHOOD_LOSSES: dict[str, LikelihoodLoss] = {
    "sft": LikelihoodLoss(_sft),
    "rwr": LikelihoodLoss(_rwr, field="reward", check=_check_rwr),
    "weighted": LikelihoodLoss(_weighted, field="weight"),
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


class ScorerObjective(Objective):
    """Train a judge: a GPM (loss ``gpm``) or a Bradley-Terry reward model (loss ``bt``) on preference pairs.

    Records are pairs (``{prompt, chosen, rejected, margin?}``; :mod:`selfplay.data.preference_pairs` also reads
    UltraFeedback/Skywork-style message lists and ranked samples); each side is encoded as a whole conversation
    (:mod:`selfplay.core.preference_model`) and the head on the decoder gives ``(values, gates)`` per row.
    """

    def __init__(self) -> None:
        super().__init__("scorer", "pair", needs_reference=False)

    def loss_names(self) -> list[str]:
        return sorted(JL.SCORER_LOSSES)

    def required_fields(self, loss: str) -> tuple[str, ...]:
        return ("margin",)  # 0 where a pair has none (the loader fills it)

    def check(self, loss: str, train: TrainConfig) -> None:
        super().check(loss, train)
        g = train.gpm
        PM.check_head(g.value_head_dim, g.prompt_head, g.tau)
        if (loss == "bt") != (g.value_head_dim == 1):
            raise ConfigError(f"train.loss '{loss}' needs train.gpm.value_head_dim "
                              f"{'= 1 (a scalar reward)' if loss == 'bt' else '= 2m (even)'}, "
                              f"got {g.value_head_dim}")
        if g.center_rewards_coefficient and loss != "bt":
            raise ConfigError("train.gpm.center_rewards_coefficient centres Bradley-Terry rewards; set it to 0 "
                              f"for loss '{loss}'")
        if train.label_smoothing:
            raise ConfigError(f"train.label_smoothing applies to log-prob preference losses, not '{loss}'; "
                              "set it to 0.")
        if train.eval_every:
            raise ConfigError(f"train.eval_every evaluates a policy's answers to validation prompts; a judge being "
                              f"trained (loss '{loss}') gives none: set it to 0.")

    def load_records(self, path: Any, fields: tuple[str, ...]) -> list[TrainRecord]:
        return [TrainRecord(p["id"], p["prompt"], [[Segment(p["chosen"])], [Segment(p["rejected"])]],
                            {"margin": p["margin"]}) for p in read_preference_pairs(str(path))]

    def tokenize(self, records: list[TrainRecord], tokenizer: Any, *, prompt_format: str, max_length: int,
                 max_prompt_length: int) -> tuple[list[TokenizedExample], int]:
        return PM.tokenize_conversations(records, tokenizer, max_length)  # type: ignore[return-value]

    def trained_model(self, policy: Any, train: TrainConfig, model_dir: Any, device: str | None) -> Any:
        g = train.gpm
        model = PM.PreferenceModel.from_causal_lm(policy, PM.HeadSpec(g.value_head_dim, g.prompt_head, g.tau,
                                                                      g.normalize))
        heads = PM.find_head_weights(model_dir)
        if heads is not None:  # a GPM / BT checkpoint: training continues from its heads
            model.load_heads(heads, f"starting model '{model_dir}'")
        if device is not None:
            for head in (model.value_head, model.prompt_head):
                if head is not None:
                    head.to(device)
        return model

    def scorer(self, model: Any, sync: bool) -> torch.nn.Module:
        return PM.HeadScorer(model)

    def batch(self, model: Any, examples: list[Any], pad_id: int) -> dict[str, torch.Tensor]:
        return PM.conversation_batch(examples, pad_id)

    def compute(self, loss: str, logps: torch.Tensor, num_tokens: torch.Tensor, values: dict[str, torch.Tensor],
                ref: torch.Tensor | None, train: TrainConfig, names: tuple[str, str]) -> tuple[torch.Tensor, Metrics]:
        embeddings, gates = logps, num_tokens  # the scorer's outputs: [2B, D] values and [2B, m] gates
        v_w, v_l = embeddings.chunk(2)
        g = train.gpm
        # The anchor gates with the chosen row's prompt state (both rows share the prompt).
        b = gates.chunk(2)[0] if gates.shape[-1] else None
        out = JL.SCORER_LOSSES[loss](v_w, v_l, tau=g.tau, margin=values["margin"], gates=b,
                                    center_rewards_coefficient=g.center_rewards_coefficient)
        value = out.losses.mean()
        logits = (out.scores - values["margin"]) / g.tau
        return value, {"loss": value.detach().float(), "accuracy": (out.scores > 0).float().mean(),
                       "prob": torch.sigmoid(logits).mean(), "score": out.scores.mean()}


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (PreferenceObjective(), LikelihoodObjective(),
                                                        ScorerObjective())}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}'.{suggest(name, OBJECTIVES)}")
    return OBJECTIVES[name]


def batch_values(examples: list[Any], fields: tuple[str, ...], device: torch.device) -> dict[str, torch.Tensor]:
    """The numeric fields of a batch's records as [B] float32 tensors."""
    return {f: torch.tensor([e.values[f] for e in examples], device=device, dtype=torch.float32) for f in fields}
