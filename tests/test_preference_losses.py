"""Judge-training losses (GPM, Bradley-Terry) and GPO's target clamp: hand-derived numbers, TRL's reward loss."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from selfplay.core import judge_losses as JL
from selfplay.core import losses as L


def log1pexp(x: float) -> float:
    """log(1 + e^x) = -log sigmoid(-x): the loss of a pair whose logit is -x."""
    return math.log1p(math.exp(x))


def test_gpm_score_hand_derived_and_skew_symmetric():
    # m = 2 blocks: s = b0 (v_i0 v_j1 - v_i1 v_j0) + b1 (v_i2 v_j3 - v_i3 v_j2)
    vi = torch.tensor([1.0, 0.0, 0.6, 0.8])
    vj = torch.tensor([0.0, 1.0, 0.8, -0.6])
    # block 0: 1*1 - 0*0 = 1 ; block 1: 0.6*(-0.6) - 0.8*0.8 = -0.36 - 0.64 = -1
    assert JL.gpm_score(vi, vj).item() == pytest.approx(0.0)
    gates = torch.tensor([0.75, 0.25])
    assert JL.gpm_score(vi, vj, gates).item() == pytest.approx(0.75 * 1 - 0.25 * 1)
    # width 2 is the GPM repo's GeneralPreferenceLoss: chosen[0] * reject[1] - chosen[1] * reject[0]
    a, b = torch.tensor([[0.3, -0.2]]), torch.tensor([[0.5, 0.7]])
    assert JL.gpm_score(a, b).item() == pytest.approx(0.3 * 0.7 - (-0.2) * 0.5)
    # its HighDimGeneralPreferenceLoss: v_w R^T v_l with R[2k, 2k+1] = -1, R[2k+1, 2k] = 1
    g = torch.Generator().manual_seed(0)
    v = torch.randn(5, 6, generator=g)
    r = torch.zeros(6, 6)
    for k in range(0, 6, 2):
        r[k, k + 1], r[k + 1, k] = -1, 1
    s = JL.gpm_score(v[:, None, :], v[None, :, :])  # [5, 5]
    torch.testing.assert_close(s, v @ r.T @ v.T)
    assert torch.equal(s, -s.T) and torch.equal(s.diagonal(), torch.zeros(5))  # exactly, bit for bit


def test_gpm_loss_hand_derived():
    # s = 0.3*0.7 + 0.2*0.5 = 0.31 ; tau 0.1 -> -log sigmoid(3.1) = log(1 + e^-3.1)
    v_w, v_l = torch.tensor([[0.3, -0.2]]), torch.tensor([[0.5, 0.7]])
    out = JL.gpm_loss(v_w, v_l, tau=0.1)
    assert out.losses.item() == pytest.approx(log1pexp(-3.1), rel=1e-6)
    assert out.scores.item() == pytest.approx(0.31)
    # margin 0.11: (0.31 - 0.11) / 0.1 = 2
    assert JL.gpm_loss(v_w, v_l, tau=0.1, margin=torch.tensor([0.11])).losses.item() == pytest.approx(log1pexp(-2.0))
    # swapping the pair flips the score: log(1 + e^3.1)
    assert JL.gpm_loss(v_l, v_w, tau=0.1).losses.item() == pytest.approx(log1pexp(3.1), rel=1e-6)
    with pytest.raises(ValueError, match="Bradley-Terry"):
        JL.gpm_loss(v_w, v_l, center_rewards_coefficient=0.1)


def test_bt_loss_hand_derived_with_tau_margin_and_centring():
    r_w, r_l = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    out = JL.bt_loss(r_w[:, None], r_l[:, None], tau=1.0)
    torch.testing.assert_close(out.losses, torch.tensor([log1pexp(-1.0), log1pexp(1.0)]))
    torch.testing.assert_close(out.scores, torch.tensor([1.0, -1.0]))
    # tau 0.5 doubles the logit; margin 0.5 shifts it first: (1 - 0.5) / 0.5 = 1, (-1 - 0.5) / 0.5 = -3
    out = JL.bt_loss(r_w, r_l, tau=0.5, margin=torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(out.losses, torch.tensor([log1pexp(-1.0), log1pexp(3.0)]))
    # centring: + 0.01 * (r_w + r_l)^2 = 0.09 and 0.04
    out = JL.bt_loss(r_w, r_l, center_rewards_coefficient=0.01)
    torch.testing.assert_close(out.losses, torch.tensor([log1pexp(-1.0) + 0.09, log1pexp(1.0) + 0.04]))
    with pytest.raises(ValueError, match="gates"):
        JL.bt_loss(r_w, r_l, gates=torch.ones(2, 1))


def trl_reward_loss(r_w: torch.Tensor, r_l: torch.Tensor, margin: torch.Tensor | None, center: float | None):
    """trl 1.16's ``RewardTrainer.compute_loss`` on the given rewards (a stub model returns them as logits)."""
    from trl import RewardTrainer

    class Model:
        training = False

        def __call__(self, **inputs):
            return SimpleNamespace(logits=torch.cat([r_w, r_l])[:, None])

    stub = SimpleNamespace(model=Model(), args=SimpleNamespace(center_rewards_coefficient=center),
                           accelerator=SimpleNamespace(gather=lambda t: t, gather_for_metrics=lambda t: t),
                           _metrics={"eval": defaultdict(list), "train": defaultdict(list)}, _total_train_tokens=0,
                           _tp_size=1)
    inputs = {"attention_mask": torch.ones(2 * len(r_w), 3)}
    if margin is not None:
        inputs["margin"] = margin
    return RewardTrainer.compute_loss(stub, stub.model, inputs)


@pytest.mark.parametrize("margin, center", [(None, None), ([0.2, -0.3, 1.0], None), (None, 0.01), ([0.5, 0, 0], 0.1)])
def test_bt_loss_is_trls_reward_loss(margin, center):
    g = torch.Generator().manual_seed(1)
    r_w, r_l = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    m = None if margin is None else torch.tensor(margin, dtype=torch.float64)
    ours = JL.bt_loss(r_w, r_l, tau=1.0, margin=m, center_rewards_coefficient=center or 0.0).losses.mean()
    torch.testing.assert_close(ours, trl_reward_loss(r_w, r_l, m, center), rtol=1e-12, atol=1e-12)
    # and the formula TRL's docs give, written out
    shifted = r_w - r_l - (0 if m is None else m)
    formula = -torch.nn.functional.logsigmoid(shifted).mean() + (center or 0) * ((r_w + r_l) ** 2).mean()
    torch.testing.assert_close(ours, formula, rtol=1e-12, atol=1e-12)


def test_scorer_loss_table():
    assert JL.SCORER_LOSSES == {"gpm": JL.gpm_loss, "bt": JL.bt_loss}
    assert not set(JL.SCORER_LOSSES) & set(L.LOSSES)  # not log-prob losses: the preference objective lacks them


def test_gpo_target_is_clamped_at_the_anchors_threshold():
    zeros = torch.zeros(2)
    lr_w, lr_l = torch.tensor([10.0, 0.0]), torch.tensor([-5.0, 0.0])
    s_w, s_l = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, -0.2])
    # beta 1e-3: targets 2000 -> 1000 (clamped), 500 ; -3000 -> -1000 (clamped), -200
    out = L.gpo_loss(lr_w, lr_l, zeros, zeros, beta=1e-3, chosen_prob=s_w, rejected_prob=s_l)
    expected = [((10 - 1000) ** 2 + (-5 + 1000) ** 2) / 2, ((0 - 500) ** 2 + (0 + 200) ** 2) / 2]
    torch.testing.assert_close(out.losses, torch.tensor(expected))
    assert L.GPO_CLAMP == 1000.0
    free = L.gpo_loss(lr_w, lr_l, zeros, zeros, beta=1e-3, chosen_prob=s_w, rejected_prob=s_l, clamp=None)
    assert free.losses[0].item() == pytest.approx(((10 - 2000) ** 2 + (-5 + 3000) ** 2) / 2)
    tight = L.gpo_loss(lr_w, lr_l, zeros, zeros, beta=1e-3, chosen_prob=s_w, rejected_prob=s_l, clamp=100.0)
    assert tight.losses[1].item() == pytest.approx(((0 - 100) ** 2 + (0 + 100) ** 2) / 2)


def test_preference_objective_passes_the_configured_clamp():
    from selfplay.config import TrainConfig
    from selfplay.core.objectives import get_objective

    objective = get_objective("preference")
    logps = torch.tensor([1.0, -1.0])  # chosen, rejected of one pair
    ref = torch.zeros(1, 2)
    values = {"chosen_prob": torch.tensor([5.0]), "rejected_prob": torch.tensor([-5.0])}
    clamped, _ = objective.compute("gpo", logps, torch.ones(2), values, ref, TrainConfig(beta=1e-3), ("c", "r"))
    free, _ = objective.compute("gpo", logps, torch.ones(2), values, ref, TrainConfig(beta=1e-3, gpo_clamp=None),
                                ("c", "r"))
    assert clamped.item() == pytest.approx(((1 - 1000) ** 2 + (-1 + 1000) ** 2) / 2)
    assert free.item() == pytest.approx(((1 - 5000) ** 2 + (-1 + 5000) ** 2) / 2)
