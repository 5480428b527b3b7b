"""Pure preference / regression losses on sequence log-probs.

Every pairwise loss takes four ``[B]`` tensors of sequence log-probs, SUMMED over the response tokens
(computed in :mod:`selfplay.core.logprobs`): the policy's and the reference model's log-prob of the
chosen and of the rejected response. It returns a :class:`LossOutput` with the per-example losses
(differentiable) and the detached implicit rewards ``beta * (log pi - log pi_ref)`` used for logging.

Notation shared by the docstrings::

    lr_w = policy_chosen_logps   - ref_chosen_logps      # chosen log-ratio,   [B]
    lr_l = policy_rejected_logps - ref_rejected_logps    # rejected log-ratio, [B]
    h    = lr_w - lr_l                                   # log-ratio margin,   [B]

Losses are looked up by name in :data:`LOSSES` (see :func:`get_loss`), never through an if/elif chain.

Why every pairwise loss spells out the same eight parameters (:class:`LossFn`) rather than taking one
inputs object: each loss stays a pure function of plain tensors that reads like its paper's equation, can
be called from a test, a notebook or TRL's numbers with nothing to construct first, and a loss that ignores
an input (``chosen_prob`` for ``sigmoid``) says so in its docstring rather than by omission; the
repetition is the signature, checked once by :class:`LossFn`. The likelihood losses (:func:`sft_loss`,
:func:`rwr_loss`) and the table that binds them to the trainer's config live apart
(:data:`selfplay.core.objectives.LIKELIHOOD_LOSSES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from selfplay.errors import ConfigError, UserError, suggest

__all__ = [
    "LABEL_SMOOTHING_LOSSES",
    "LOSSES",
    "LOSS_FIELDS",
    "LossFn",
    "LossOutput",
    "LOSS_OPTIONS",
    "get_loss",
    "gpo_loss",
    "hinge_loss",
    "ipo_loss",
    "rwr_loss",
    "rwr_weights",
    "sft_loss",
    "sigmoid_loss",
    "sppo_hard_loss",
    "sppo_loss",
    "sppo_single_loss",
    "weighted_nll_loss",
]


@dataclass
class LossOutput:
    """Result of a pairwise loss; every tensor has shape ``[B]``."""

    losses: torch.Tensor  # per-example loss, differentiable
    chosen_rewards: torch.Tensor  # detached, beta * (policy_chosen - ref_chosen)
    rejected_rewards: torch.Tensor  # detached, beta * (policy_rejected - ref_rejected)


class LossFn(Protocol):
    """Signature shared by every entry of :data:`LOSSES`."""

    def __call__(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
        *,
        beta: float,
        chosen_prob: torch.Tensor | None = None,
        rejected_prob: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> LossOutput: ...


def _log_ratios(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(lr_w, lr_l)``, each ``[B]``, after checking that the four inputs are ``[B]`` vectors.

    Half-precision inputs are promoted to float32: the squared-error targets reach ``1/(2*beta)`` (500
    at the SPPO default beta=1e-3), where bfloat16 cannot even represent neighbouring integers.
    """
    tensors = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1 or policy_chosen_logps.dim() != 1:
        raise ValueError(f"log-prob tensors must all have the same shape [B]; got {[tuple(t.shape) for t in tensors]}")
    dtype = torch.promote_types(policy_chosen_logps.dtype, torch.float32)
    pc, pr, rc, rr = (t.to(dtype) for t in tensors)
    return pc - rc, pr - rr


def _output(losses: torch.Tensor, lr_w: torch.Tensor, lr_l: torch.Tensor, beta: float) -> LossOutput:
    """Pack per-example losses with the detached implicit rewards ``beta * log-ratio``."""
    return LossOutput(losses=losses, chosen_rewards=beta * lr_w.detach(), rejected_rewards=beta * lr_l.detach())


def _target(values: torch.Tensor | None, name: str, loss: str, like: torch.Tensor) -> torch.Tensor:
    """The per-example preference signal ``values`` as a ``[B]`` tensor on ``like``'s device and dtype.

    A missing value is a programming error (the pair builder must attach it), hence ValueError.
    """
    if values is None:
        raise ValueError(f"loss '{loss}' needs {name} (one value per pair); got None")
    values = torch.as_tensor(values, device=like.device).to(like.dtype)
    if values.shape != like.shape:
        raise ValueError(f"{name} must have shape {tuple(like.shape)} for loss '{loss}'; got {tuple(values.shape)}")
    return values


# The GPM repo's GPO target threshold (CLAMP_THRES in its run scripts), see :func:`gpo_loss`.
GPO_CLAMP = 1000.0


def _no_label_smoothing(label_smoothing: float, loss: str) -> None:
    """Refuse label smoothing where the loss has no use for it, instead of silently ignoring it."""
    if label_smoothing:
        raise ConfigError(
            f"label_smoothing={label_smoothing} only applies to the sigmoid/dpo/spin losses, not '{loss}'; "
            "set it to 0"
        )


def sigmoid_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    chosen_prob: torch.Tensor | None = None,
    rejected_prob: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Logistic loss on the log-ratio margin: SPIN (arXiv 2401.01335, eq. 4.7 with the logistic loss
    l(t) = log(1 + exp(-t))) and DPO (arXiv 2305.18290, eq. 7); with label smoothing eps it is the
    conservative DPO (cDPO) form::

        loss = -(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h)

    Shapes: the four log-prob inputs ``[B]`` -> ``LossOutput`` of ``[B]`` tensors. ``chosen_prob`` and
    ``rejected_prob`` are unused (accepted so every loss shares one signature).
    """
    lr_w, lr_l = _log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    logits = beta * (lr_w - lr_l)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return _output(losses, lr_w, lr_l, beta)


def hinge_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    chosen_prob: torch.Tensor | None = None,
    rejected_prob: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Hinge loss on the log-ratio margin: SPIN (arXiv 2401.01335, eq. 4.7 with l(t) = max(0, 1 - t)),
    the SLiC form used by TRL's ``hinge``::

        loss = relu(1 - beta * h)

    Shapes: the four log-prob inputs ``[B]`` -> ``LossOutput`` of ``[B]`` tensors.
    """
    _no_label_smoothing(label_smoothing, "hinge")
    lr_w, lr_l = _log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return _output(torch.relu(1 - beta * (lr_w - lr_l)), lr_w, lr_l, beta)


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    chosen_prob: torch.Tensor | None = None,
    rejected_prob: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """IPO (Azar et al., arXiv 2310.12036, eq. 17, with tau = beta) on the summed log-ratio margin::

        loss = (h - 1 / (2 * beta)) ** 2

    This is the paper's (and the SPPO repo's) form on sequence sums. TRL's ``ipo`` divides each
    log-ratio by the completion length first; for one-token completions the two agree.
    Shapes: the four log-prob inputs ``[B]`` -> ``LossOutput`` of ``[B]`` tensors.
    """
    _no_label_smoothing(label_smoothing, "ipo")
    lr_w, lr_l = _log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return _output((lr_w - lr_l - 1 / (2 * beta)) ** 2, lr_w, lr_l, beta)


def sppo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    chosen_prob: torch.Tensor | None = None,
    rejected_prob: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """SPPO (arXiv 2405.00675, Algorithm 1: regress log(pi/pi_t) onto eta * (P(y > pi_t) - 1/2) with
    eta = 1/beta), as in the authors' code (uclaml/SPPO ``sppo/trainer.py``, loss_type ``sppo``)::

        loss = ((lr_w - (p_w - 1/2) / beta) ** 2 + (lr_l - (p_l - 1/2) / beta) ** 2) / 2

    ``chosen_prob`` = p_w and ``rejected_prob`` = p_l are the estimated win rates of the chosen and the
    rejected sample against the current policy: the row means of the K x K win-probability matrix.
    Shapes: every input ``[B]`` -> ``LossOutput`` of ``[B]`` tensors.
    """
    _no_label_smoothing(label_smoothing, "sppo")
    lr_w, lr_l = _log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    p_w = _target(chosen_prob, "chosen_prob", "sppo", lr_w)
    p_l = _target(rejected_prob, "rejected_prob", "sppo", lr_l)
    losses = ((lr_w - (p_w - 0.5) / beta) ** 2 + (lr_l - (p_l - 0.5) / beta) ** 2) / 2
    return _output(losses, lr_w, lr_l, beta)


def sppo_single_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    chosen_prob: torch.Tensor | None = None,
    rejected_prob: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """SPPO with a single pairwise probability, the authors' ``sppo_single`` (uclaml/SPPO
    ``sppo/trainer.py``): the opponent is the paired sample only, so the winner's target uses
    p = P(chosen > rejected) and the loser's uses P(rejected > chosen) - 1/2 = -(p - 1/2)::

        loss = ((lr_w - (p - 1/2) / beta) ** 2 + (lr_l + (p - 1/2) / beta) ** 2) / 2

    ``chosen_prob`` = p, the matrix entry P[w][l] (not a row mean); ``rejected_prob`` is unused.
    Shapes: every input ``[B]`` -> ``LossOutput`` of ``[B]`` tensors.
    """
    _no_label_smoothing(label_smoothing, "sppo_single")
    lr_w, lr_l = _log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    p = _target(chosen_prob, "chosen_prob", "sppo_single", lr_w)
    losses = ((lr_w - (p - 0.5) / beta) ** 2 + (lr_l + (p - 0.5) / beta) ** 2) / 2
    return _output(losses, lr_w, lr_l, beta)


def sppo_hard_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    chosen_prob: torch.Tensor | None = None,
    rejected_prob: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Hard-label SPPO, exactly TRL's ``sppo_hard`` loss_type (trl 1.16 ``DPOTrainer._compute_loss``):
    SPPO (arXiv 2405.00675) with P = 1 for the winner and 0 for the loser, and no halving::

        loss = (lr_w - 1 / (2 * beta)) ** 2 + (lr_l + 1 / (2 * beta)) ** 2

    Shapes: the four log-prob inputs ``[B]`` -> ``LossOutput`` of ``[B]`` tensors.
    """
    _no_label_smoothing(label_smoothing, "sppo_hard")
    lr_w, lr_l = _log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = (lr_w - 0.5 / beta) ** 2 + (lr_l + 0.5 / beta) ** 2
    return _output(losses, lr_w, lr_l, beta)


def gpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    chosen_prob: torch.Tensor | None = None,
    rejected_prob: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    clamp: float | None = GPO_CLAMP,
) -> LossOutput:
    """General Preference Optimization (GPM paper, arXiv 2410.02197, Sec. "General Preference
    Optimization"): the SPPO regression with the win probability replaced by the skew-symmetric GPM
    preference score s(y > pi_t); the update pi_t+1 ~ pi_t * exp(eta * s) has log Z ~ 0 because
    E_{y ~ pi_t} s(y > pi_t) = 0 for a skew-symmetric s, so the "- 1/2" offset of SPPO disappears::

        t_w = clip(s_w / beta, -clamp, clamp),   t_l = clip(s_l / beta, -clamp, clamp)
        loss = ((lr_w - t_w) ** 2 + (lr_l - t_l) ** 2) / 2

    ``chosen_prob`` = s_w and ``rejected_prob`` = s_l carry the raw scores (row means of the K x K
    matrix s(i > j) = -s(j > i)), not probabilities. ``clamp`` bounds the regression target: the GPM
    repo's GPO scripts export ``CLAMP_THRES=1000`` beside ``beta=0.001`` (``run_gpo_llama-3_table_gp.sh``).
    Their trainer is not in the public repository; at beta = 1e-3 a threshold of 1000 can only bind on
    score / beta (raw scores are O(10)), so the target is what is clamped here. ``None`` disables it.
    Shapes: every input ``[B]`` -> ``LossOutput``.
    """
    _no_label_smoothing(label_smoothing, "gpo")
    lr_w, lr_l = _log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    t_w = _target(chosen_prob, "chosen_prob (GPM score)", "gpo", lr_w) / beta
    t_l = _target(rejected_prob, "rejected_prob (GPM score)", "gpo", lr_l) / beta
    if clamp is not None:
        t_w, t_l = t_w.clamp(-clamp, clamp), t_l.clamp(-clamp, clamp)
    losses = ((lr_w - t_w) ** 2 + (lr_l - t_l) ** 2) / 2
    return _output(losses, lr_w, lr_l, beta)


LOSSES: dict[str, LossFn] = {
    "sigmoid": sigmoid_loss,
    "dpo": sigmoid_loss,
    "spin": sigmoid_loss,
    "hinge": hinge_loss,
    "ipo": ipo_loss,
    "sppo": sppo_loss,
    "sppo_single": sppo_single_loss,
    "sppo_hard": sppo_hard_loss,
    "gpo": gpo_loss,
}

# The pair fields each loss reads beyond the log-probs; the example loader checks every record carries
# them before any model is loaded (the pair builders of SPPO/GPO attach them).
LOSS_FIELDS: dict[str, tuple[str, ...]] = {
    "sppo": ("chosen_prob", "rejected_prob"),
    "gpo": ("chosen_prob", "rejected_prob"),
    "sppo_single": ("chosen_prob",),
}
# Extra keyword options of a loss, read from the train config: loss -> {loss keyword: train config key}.
LOSS_OPTIONS: dict[str, dict[str, str]] = {"gpo": {"clamp": "gpo_clamp"}}
# The regression losses (SPPO, GPO): squared distances of the log-ratios to targets of size 1/beta, so their
# values scale as 1/beta^2 (thousands and more at the anchors' beta = 1e-3), which a reader of the iteration
# table would otherwise take for a divergence.
_SQUARED_TARGET_LOSSES: frozenset[str] = frozenset({"sppo", "sppo_single", "sppo_hard", "gpo"})


def loss_note(loss: str, beta: float) -> str | None:
    """A line for the iteration table where the loss's values need one (see _SQUARED_TARGET_LOSSES), else None."""
    if loss not in _SQUARED_TARGET_LOSSES:
        return None
    return (f"train loss ({loss}): the squared distance of each response's log(pi/pi_ref) to its target, "
            f"(P(win) - 1/2)/beta or the judge's score/beta, with 1/beta = {1 / beta:g}; it scales as 1/beta^2 "
            f"(up to {0.25 / beta ** 2:g} for SPPO's targets), so compare it across steps and iterations, "
            f"not with other losses")


# Losses that accept label smoothing (cDPO); the others refuse a non-zero value.
LABEL_SMOOTHING_LOSSES: frozenset[str] = frozenset({"sigmoid", "dpo", "spin"})


def get_loss(name: str) -> LossFn:
    """The loss called ``name`` in :data:`LOSSES`; an unknown name is a :class:`UserError` that
    suggests the closest valid one."""
    try:
        return LOSSES[name]
    except KeyError:
        raise UserError(
            f"unknown loss '{name}'.{suggest(name, LOSSES)} Valid losses: {', '.join(sorted(LOSSES))}"
        ) from None


def rwr_loss(
    policy_logps: torch.Tensor,
    rewards: torch.Tensor,
    *,
    temperature: float = 0.4,
    num_tokens: torch.Tensor | None = None,
    weighting: str = "exp",
) -> torch.Tensor:
    """Reward-weighted regression of RISE (arXiv 2407.18219, Sec. 4: maximise
    sum_t log pi(y_t | history) * exp(r(y_t) / tau)), as a scalar loss::

        w    = exp(rewards / temperature)   (weighting "exp")   or   rewards   (weighting "reward")
        loss = -(w * policy_logps / num_tokens).mean()

    ``exp`` is the paper's weight, and what the official conversion script writes into its training data
    (cmu-mind/RISE ``workflow_convert.py``: ``exp(reward / --temperature)``, default 0.4), so a failed turn
    (r = 0) keeps weight 1, a correct one (r = 1) weighs e^2.5 ~ 12.2 and an unparsable one (r = -1)
    e^-2.5 ~ 0.08. ``reward`` uses the raw reward: 0-reward turns contribute nothing, -1 turns are pushed
    down. Weights are not normalised over the batch and carry no gradient. ``num_tokens`` ([B], trained
    token counts) makes each example's term its mean token log-likelihood, as FastChat's per-sample loss
    in the anchor does; ``None`` keeps the sums.
    Shapes: ``policy_logps`` [B] (summed over trained tokens), ``rewards`` [B] -> scalar.
    """
    if policy_logps.shape != rewards.shape or policy_logps.dim() != 1:
        raise ValueError(f"policy_logps and rewards must both be [B]; got {tuple(policy_logps.shape)}, "
                         f"{tuple(rewards.shape)}")
    weights = rwr_weights(rewards.detach().to(policy_logps.dtype), temperature=temperature, weighting=weighting)
    per_example = policy_logps if num_tokens is None else policy_logps / _token_counts(num_tokens, policy_logps)
    return -(weights * per_example).mean()


def rwr_weights(rewards: torch.Tensor, *, temperature: float = 0.4, weighting: str = "exp") -> torch.Tensor:
    """RWR's per-example weights [B]: ``exp(rewards / temperature)`` ("exp"), or the rewards ("reward")."""
    if weighting == "exp":
        return torch.exp(rewards / temperature)
    if weighting == "reward":
        return rewards
    raise ValueError(f"unknown RWR weighting '{weighting}' (exp or reward)")


def weighted_nll_loss(policy_logps: torch.Tensor, weights: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    """Each record's mean token NLL times its given weight, averaged over the batch::

        loss = -(weights * policy_logps / num_tokens).mean()

    What the RISE anchor's FastChat trainer computes from a ``finetune.json`` whose messages carry a ``loss``
    weight (cmu-mind/RISE ``FastChat/fastchat/train/train.py:44-70``: per-sample loss times
    ``reward_weights``, then the mean); the weights arrive precomputed (``exp(reward / 0.4)`` there), so
    this is :func:`rwr_loss` with ``weighting="reward"`` reading them from the records' ``weight``.
    Shapes: ``policy_logps`` [B] (summed over trained tokens), ``weights`` [B], ``num_tokens`` [B] -> scalar.
    """
    return rwr_loss(policy_logps, weights, num_tokens=num_tokens, weighting="reward")


def sft_loss(policy_logps: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning loss: the mean negative log-likelihood per response token over the whole
    batch, ``-sum(policy_logps) / sum(num_tokens)`` (the token-level mean of HF's causal-LM loss).

    Shapes: ``policy_logps`` [B] (summed over response tokens), ``num_tokens`` [B] -> scalar.
    """
    if policy_logps.dim() != 1:
        raise ValueError(f"policy_logps must be [B]; got {tuple(policy_logps.shape)}")
    return -policy_logps.sum() / _token_counts(num_tokens, policy_logps).sum()


def _token_counts(num_tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``num_tokens`` as a float ``[B]`` tensor matching ``like``, floored at 1 so an empty response
    cannot divide by zero."""
    counts = torch.as_tensor(num_tokens, device=like.device).to(like.dtype)
    if counts.shape != like.shape:
        raise ValueError(f"num_tokens must have shape {tuple(like.shape)}; got {tuple(counts.shape)}")
    return counts.clamp(min=1)
