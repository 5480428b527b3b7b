"""Losses of a judge being trained (``selfplay train --method gpm | bt-rm``): pure functions on the pooled
outputs of a preference-model head (:mod:`selfplay.core.preference_model`), not on log-probs.

``v_w``, ``v_l``: [B, D] embeddings (D = 2m, a General Preference Model) or rewards [B, 1] (D = 1,
Bradley-Terry). Kept apart from :mod:`selfplay.core.losses` (the policy's losses on sequence log-probs);
the same house rules: docstrings name the paper's equation, a table maps names to functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

@dataclass
class ScorerLossOutput:
    """Per-pair losses (differentiable) and the detached scores they came from, all ``[B]``."""

    losses: torch.Tensor
    scores: torch.Tensor  # s(w > l) (GPM) or r_w - r_l (BT), before the margin and tau


def gpm_score(v_i: torch.Tensor, v_j: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
    """The skew-symmetric GPM preference score (arXiv 2410.02197, eq. 4 with the block operator R^>)::

        s(i > j | x) = sum_k b_k (v_i[2k] v_j[2k+1] - v_i[2k+1] v_j[2k])

    with b_k = 1 without a prompt head. Exactly skew-symmetric in floating point: s(i > j) = -s(j > i)
    bit for bit, s(i > i) = 0. Shapes: ``v_i``, ``v_j`` [..., 2m], ``gates`` [..., m] (broadcast) -> [...].
    """
    if v_i.shape[-1] % 2 or v_j.shape[-1] != v_i.shape[-1]:
        raise ValueError(f"GPM embeddings need one even width; got {tuple(v_i.shape)} and {tuple(v_j.shape)}")
    blocks = v_i[..., 0::2] * v_j[..., 1::2] - v_i[..., 1::2] * v_j[..., 0::2]  # [..., m]
    return (blocks if gates is None else blocks * gates).sum(-1)


def _pairwise_logistic(scores: torch.Tensor, margin: torch.Tensor | None, tau: float) -> torch.Tensor:
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    shifted = scores if margin is None else scores - margin.to(scores.dtype)
    return -F.logsigmoid(shifted / tau)


def gpm_loss(v_w: torch.Tensor, v_l: torch.Tensor, *, tau: float = 0.1, margin: torch.Tensor | None = None,
             gates: torch.Tensor | None = None, center_rewards_coefficient: float = 0.0) -> ScorerLossOutput:
    """General Preference Model loss (arXiv 2410.02197, eq. 6; the GPM repo's ``GeneralPreferenceLoss`` /
    ``HighDimGeneralPreferenceLoss``, its ``tau`` default 0.1 in the run scripts)::

        loss = -log sigmoid((s(w > l) - margin) / tau)

    ``v_w``, ``v_l`` [B, 2m] (L2-normalised by the model), ``gates`` [B, m] the prompt head's softmax b (None:
    b = 1), ``margin`` [B] or None -> :class:`ScorerLossOutput` of [B]. Reward centring is a BT option.
    """
    if center_rewards_coefficient:
        raise ValueError("center_rewards_coefficient applies to Bradley-Terry reward models (width 1), not GPM")
    scores = gpm_score(v_w, v_l, gates)
    return ScorerLossOutput(_pairwise_logistic(scores, margin, tau), scores.detach())


def bt_loss(v_w: torch.Tensor, v_l: torch.Tensor, *, tau: float = 1.0, margin: torch.Tensor | None = None,
            gates: torch.Tensor | None = None, center_rewards_coefficient: float = 0.0) -> ScorerLossOutput:
    """Bradley-Terry reward-model loss (the GPM repo's ``PairWiseLoss``; with tau = 1 it is TRL's
    ``RewardTrainer.compute_loss``, trl 1.16), with TRL's optional reward centring (Eisenstein et al. 2023)::

        loss = -log sigmoid((r_w - r_l - margin) / tau) + c * (r_w + r_l) ** 2

    TRL adds ``c * mean((r_w + r_l) ** 2)`` to the batch mean; the per-pair form here has the same mean.
    ``v_w``, ``v_l`` [B, 1] rewards (or [B]), ``margin`` [B] or None -> :class:`ScorerLossOutput` of [B].
    ``gates`` must be None (a scalar reward has no blocks to gate).
    """
    if gates is not None:
        raise ValueError("a Bradley-Terry reward has no prompt-head gates")
    r_w, r_l = v_w.reshape(v_w.shape[0], -1), v_l.reshape(v_l.shape[0], -1)
    if r_w.shape[1] != 1 or r_l.shape != r_w.shape:
        raise ValueError(f"Bradley-Terry rewards must be [B] or [B, 1]; got {tuple(v_w.shape)}, {tuple(v_l.shape)}")
    r_w, r_l = r_w[:, 0], r_l[:, 0]
    losses = _pairwise_logistic(r_w - r_l, margin, tau)
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (r_w + r_l) ** 2
    return ScorerLossOutput(losses, (r_w - r_l).detach())


# Losses of preference-model training: name -> function on the pooled outputs (see the section above).
SCORER_LOSSES: dict[str, Callable[..., ScorerLossOutput]] = {"gpm": gpm_loss, "bt": bt_loss}
