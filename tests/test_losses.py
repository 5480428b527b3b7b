"""selfplay.core.losses: hand-derived values, TRL agreement, gradients, shapes and errors."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from selfplay.core import losses as L
from selfplay.errors import ConfigError, UserError

# Shared inputs for the hand-derived cases: beta = 0.5 and
#   row 0: pc=-1, pr=-3, rc=-2, rr=-2  ->  lr_w = 1, lr_l = -1, h = 2
#   row 1: everything 0                ->  lr_w = 0, lr_l =  0, h = 0
PC = torch.tensor([-1.0, 0.0])
PR = torch.tensor([-3.0, 0.0])
RC = torch.tensor([-2.0, 0.0])
RR = torch.tensor([-2.0, 0.0])
BETA = 0.5


def expect(out: L.LossOutput, losses: list[float]) -> None:
    torch.testing.assert_close(out.losses, torch.tensor(losses), rtol=1e-6, atol=1e-6)
    # rewards = beta * log-ratio: row 0 -> 0.5 * 1 and 0.5 * -1; row 1 -> 0.
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.5, 0.0]))


def test_table_names_and_aliases():
    assert set(L.LOSSES) == {"sigmoid", "dpo", "spin", "hinge", "ipo", "sppo", "sppo_single", "sppo_hard", "gpo"}
    assert L.LOSSES["dpo"] is L.LOSSES["spin"] is L.LOSSES["sigmoid"] is L.sigmoid_loss
    assert L.get_loss("sppo_hard") is L.sppo_hard_loss
    assert set(L.LOSS_FIELDS) <= set(L.LOSSES) and L.LABEL_SMOOTHING_LOSSES <= set(L.LOSSES)


def test_sigmoid_hand_derived():
    # row 0: beta*h = 1 -> -logsigmoid(1) = log(1 + e^-1) = 0.3132617
    # row 1: beta*h = 0 -> log 2 = 0.6931472
    expect(L.sigmoid_loss(PC, PR, RC, RR, beta=BETA), [math.log1p(math.exp(-1)), math.log(2)])


def test_sigmoid_label_smoothing_hand_derived():
    # eps = 0.1, row 0: 0.9 * log(1 + e^-1) + 0.1 * log(1 + e^1) = 0.9*0.3132617 + 0.1*1.3132617 = 0.4132617
    # row 1: 0.9 * log 2 + 0.1 * log 2 = log 2 (a zero margin is symmetric)
    out = L.sigmoid_loss(PC, PR, RC, RR, beta=BETA, label_smoothing=0.1)
    expect(out, [0.4132617, math.log(2)])
    # eps = 0.5 makes the loss blind to which response is chosen: swapping chosen and rejected changes nothing
    half = L.sigmoid_loss(PC, PR, RC, RR, beta=BETA, label_smoothing=0.5).losses
    flipped = L.sigmoid_loss(PR, PC, RR, RC, beta=BETA, label_smoothing=0.5).losses
    torch.testing.assert_close(half, flipped)


def test_hinge_hand_derived():
    # row 0: relu(1 - 0.5*2) = 0 ; row 1: relu(1 - 0) = 1
    expect(L.hinge_loss(PC, PR, RC, RR, beta=BETA), [0.0, 1.0])
    # swapped chosen/rejected: h = -2 -> relu(1 + 1) = 2
    swapped = L.hinge_loss(PR[:1], PC[:1], RR[:1], RC[:1], beta=BETA).losses
    torch.testing.assert_close(swapped, torch.tensor([2.0]))


def test_ipo_hand_derived():
    # 1/(2*beta) = 1 ; row 0: (2 - 1)^2 = 1 ; row 1: (0 - 1)^2 = 1
    expect(L.ipo_loss(PC, PR, RC, RR, beta=BETA), [1.0, 1.0])
    # beta = 0.25 -> 1/(2*beta) = 2 ; row 0: (2 - 2)^2 = 0 ; row 1: (0 - 2)^2 = 4
    torch.testing.assert_close(L.ipo_loss(PC, PR, RC, RR, beta=0.25).losses, torch.tensor([0.0, 4.0]))


def test_sppo_hand_derived():
    # p_w = 0.9, p_l = 0.2 ; targets (0.9-0.5)/0.5 = 0.8 and (0.2-0.5)/0.5 = -0.6
    # row 0: ((1 - 0.8)^2 + (-1 + 0.6)^2) / 2 = (0.04 + 0.16) / 2 = 0.1
    # row 1: ((0 - 0.8)^2 + (0 + 0.6)^2) / 2 = (0.64 + 0.36) / 2 = 0.5
    out = L.sppo_loss(PC, PR, RC, RR, beta=BETA, chosen_prob=torch.tensor([0.9, 0.9]),
                      rejected_prob=torch.tensor([0.2, 0.2]))
    expect(out, [0.1, 0.5])


def test_sppo_single_hand_derived():
    # p = P(chosen > rejected) = 0.75 ; (p - 0.5)/beta = 0.5
    # row 0: ((1 - 0.5)^2 + (-1 + 0.5)^2) / 2 = (0.25 + 0.25) / 2 = 0.25
    # row 1: ((0 - 0.5)^2 + (0 + 0.5)^2) / 2 = 0.25
    out = L.sppo_single_loss(PC, PR, RC, RR, beta=BETA, chosen_prob=torch.tensor([0.75, 0.75]))
    expect(out, [0.25, 0.25])


def test_sppo_single_is_sppo_with_complementary_probs():
    # With one opponent, P(rejected > chosen) = 1 - p, so sppo(p_w=p, p_l=1-p) must equal sppo_single(p).
    pc, pr, rc, rr, p = (torch.randn(6, generator=torch.Generator().manual_seed(i)) for i in range(5))
    p = torch.sigmoid(p)
    single = L.sppo_single_loss(pc, pr, rc, rr, beta=0.1, chosen_prob=p).losses
    full = L.sppo_loss(pc, pr, rc, rr, beta=0.1, chosen_prob=p, rejected_prob=1 - p).losses
    torch.testing.assert_close(single, full)


def test_sppo_hard_hand_derived():
    # 0.5/beta = 1 ; row 0: (1 - 1)^2 + (-1 + 1)^2 = 0 ; row 1: (0 - 1)^2 + (0 + 1)^2 = 2 (no halving)
    expect(L.sppo_hard_loss(PC, PR, RC, RR, beta=BETA), [0.0, 2.0])


def test_gpo_hand_derived():
    # s_w = 0.3, s_l = -0.2 ; targets 0.3/0.5 = 0.6 and -0.2/0.5 = -0.4
    # row 0: ((1 - 0.6)^2 + (-1 + 0.4)^2) / 2 = (0.16 + 0.36) / 2 = 0.26
    # row 1: ((0 - 0.6)^2 + (0 + 0.4)^2) / 2 = (0.36 + 0.16) / 2 = 0.26
    out = L.gpo_loss(PC, PR, RC, RR, beta=BETA, chosen_prob=torch.tensor([0.3, 0.3]),
                     rejected_prob=torch.tensor([-0.2, -0.2]))
    expect(out, [0.26, 0.26])
    # GPO with scores s = P - 1/2 is SPPO with probabilities P.
    sppo = L.sppo_loss(PC, PR, RC, RR, beta=BETA, chosen_prob=torch.tensor([0.8, 0.8]),
                       rejected_prob=torch.tensor([0.3, 0.3])).losses
    torch.testing.assert_close(out.losses, sppo)


def test_rwr_hand_derived():
    logps, rewards = torch.tensor([-2.0, -4.0]), torch.tensor([0.0, 1.0])
    # weights exp(r/0.4) = [1, e^2.5 = 12.1824940]
    # summed: -(1*-2 + 12.182494*-4) / 2 = (2 + 48.729976) / 2 = 25.364988
    torch.testing.assert_close(L.rwr_loss(logps, rewards), torch.tensor(25.364988))
    # per token with num_tokens [2, 4]: per-example logps [-1, -1] -> (1 + 12.182494) / 2 = 6.591247
    torch.testing.assert_close(L.rwr_loss(logps, rewards, num_tokens=torch.tensor([2, 4])), torch.tensor(6.591247))
    # temperature 1: weights [1, e] -> (2 + 4e) / 2 = 1 + 2e = 6.4365637
    torch.testing.assert_close(L.rwr_loss(logps, rewards, temperature=1.0), torch.tensor(1 + 2 * math.e))


def test_rwr_weights_are_not_batch_normalised():
    # The paper's weights are exp(r/T) per example: adding another example does not rescale the others.
    one = L.rwr_loss(torch.tensor([-3.0]), torch.tensor([1.0]))
    two = L.rwr_loss(torch.tensor([-3.0, -3.0]), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(one, two)
    torch.testing.assert_close(one, torch.tensor(3 * math.exp(2.5)))


def test_sft_hand_derived():
    # -(-2 + -6) / (1 + 3) = 8 / 4 = 2 ; a zero token count is floored at 1: -(-3) / (1 + 1) = 1.5
    torch.testing.assert_close(L.sft_loss(torch.tensor([-2.0, -6.0]), torch.tensor([1, 3])), torch.tensor(2.0))
    torch.testing.assert_close(L.sft_loss(torch.tensor([-3.0, 0.0]), torch.tensor([1, 0])), torch.tensor(1.5))


PROBS = {"chosen_prob": torch.tensor([0.8, 0.6, 0.7]), "rejected_prob": torch.tensor([0.3, 0.1, 0.4])}


@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_gradients_finite_and_shapes(name):
    g = torch.Generator().manual_seed(1)
    pc, pr = (torch.randn(3, generator=g).mul(20).requires_grad_() for _ in range(2))
    rc, rr = (torch.randn(3, generator=g).mul(20) for _ in range(2))
    out = L.get_loss(name)(pc, pr, rc, rr, beta=0.1, **PROBS)
    assert out.losses.shape == out.chosen_rewards.shape == out.rejected_rewards.shape == (3,)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    out.losses.mean().backward()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    assert pc.grad.abs().sum() > 0


def test_scalar_losses_have_finite_gradients():
    logps = torch.tensor([-20.0, -5.0], requires_grad=True)
    (L.rwr_loss(logps, torch.tensor([1.0, 0.0]), num_tokens=torch.tensor([10, 5]))
     + L.sft_loss(logps, torch.tensor([10, 5]))).backward()
    assert torch.isfinite(logps.grad).all()
    assert (logps.grad < 0).all()  # both losses push every log-prob up


def test_sigmoid_gradient_direction():
    # Minimising the DPO loss must raise the chosen log-prob and lower the rejected one.
    pc, pr = torch.tensor([-5.0], requires_grad=True), torch.tensor([-5.0], requires_grad=True)
    L.sigmoid_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1).losses.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()


def test_half_precision_inputs_are_promoted():
    # 1/(2*beta) = 500 at beta=1e-3: bf16 spacing there is 2, so the loss is computed in float32.
    x = torch.tensor([-7.0], dtype=torch.bfloat16)
    out = L.sppo_hard_loss(x, x, x, x, beta=1e-3)
    assert out.losses.dtype == torch.float32
    torch.testing.assert_close(out.losses, torch.tensor([2 * 500.0**2]))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        L.sigmoid_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2), beta=0.1)
    with pytest.raises(ValueError, match=r"\[B\]"):
        L.sigmoid_loss(*(torch.zeros(2, 2) for _ in range(4)), beta=0.1)
    with pytest.raises(ValueError, match="chosen_prob must have shape"):
        L.sppo_loss(*(torch.zeros(2) for _ in range(4)), beta=0.1, chosen_prob=torch.zeros(3),
                    rejected_prob=torch.zeros(2))
    with pytest.raises(ValueError, match="num_tokens"):
        L.sft_loss(torch.zeros(2), torch.ones(3))


@pytest.mark.parametrize("name", sorted(L.LOSS_FIELDS))
def test_missing_probabilities_are_an_error(name):
    with pytest.raises(ValueError, match="chosen_prob"):
        L.get_loss(name)(*(torch.zeros(2) for _ in range(4)), beta=0.1)


@pytest.mark.parametrize("name", ["hinge", "ipo", "sppo", "sppo_single", "sppo_hard", "gpo"])
def test_label_smoothing_refused_where_unused(name):
    with pytest.raises(ConfigError, match="label_smoothing"):
        L.get_loss(name)(*(torch.zeros(3) for _ in range(4)), beta=0.1, label_smoothing=0.1, **PROBS)


def test_unknown_loss_name_suggests_nearest():
    with pytest.raises(UserError, match="Did you mean 'sppo_hard'") as info:
        L.get_loss("sppo_hrad")
    assert "unknown loss 'sppo_hrad'" in str(info.value)
    with pytest.raises(UserError, match="Valid losses: dpo, gpo, hinge"):
        L.get_loss("zzz")


# --- agreement with TRL's own DPOTrainer loss code --------------------------------------------------


def trl_dpo_loss(loss_type: str, pc, pr, rc, rr, beta: float) -> tuple[torch.Tensor, dict]:
    """Run trl 1.16's ``DPOTrainer._compute_loss`` on the given sequence log-probs.

    The trainer object is replaced by the few attributes that method reads; the "model" returns the
    log-probs as one completion token per sequence, so TRL's sums over tokens give back exactly ``pc``
    / ``pr`` (and its per-token IPO normalisation divides by 1). Returns TRL's batch-mean loss and
    its logged metrics.
    """
    from trl import DPOTrainer

    batch = pc.shape[0]
    per_token = torch.cat([pc, pr])[:, None]  # [2B, 1]: chosen rows first, as TRL concatenates them

    def model(**_kwargs):
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool())

    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )
    inputs = {
        "input_ids": torch.ones(2 * batch, 2, dtype=torch.long),
        "attention_mask": torch.ones(2 * batch, 2, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1]] * (2 * batch)),  # prompt token, then one completion token
        "ref_chosen_logps": rc,
        "ref_rejected_logps": rr,
    }
    loss = DPOTrainer._compute_loss(trainer, model, inputs, False)
    return loss, trainer._metrics["train"]


@pytest.mark.parametrize(("ours", "trl_name"), [("sigmoid", "sigmoid"), ("dpo", "sigmoid"), ("spin", "sigmoid"),
                                                ("sppo_hard", "sppo_hard"), ("hinge", "hinge"), ("ipo", "ipo")])
@pytest.mark.parametrize("beta", [0.1, 0.5, 1e-3])
def test_matches_trl(ours, trl_name, beta):
    g = torch.Generator().manual_seed(7)
    pc, pr, rc, rr = (-30 * torch.rand(5, generator=g, dtype=torch.float64) for _ in range(4))
    out = L.get_loss(ours)(pc, pr, rc, rr, beta=beta)
    # TRL returns the batch mean; calling it one row at a time checks every per-example loss.
    for row in range(5):
        one = slice(row, row + 1)
        trl_loss, _ = trl_dpo_loss(trl_name, pc[one], pr[one], rc[one], rr[one], beta)
        torch.testing.assert_close(out.losses[row], trl_loss, rtol=1e-9, atol=1e-9)
    trl_mean, metrics = trl_dpo_loss(trl_name, pc, pr, rc, rr, beta)
    torch.testing.assert_close(out.losses.mean(), trl_mean, rtol=1e-9, atol=1e-9)
    assert metrics["rewards/chosen"][0] == pytest.approx(out.chosen_rewards.mean().item(), rel=1e-9)
    assert metrics["rewards/rejected"][0] == pytest.approx(out.rejected_rewards.mean().item(), rel=1e-9)


def test_the_squared_losses_carry_a_note_on_their_scale() -> None:
    """SPPO/GPO losses scale as 1/beta^2: a table of them says so (the anchors' beta = 1e-3 gives values in
    the thousands, which read as a divergence otherwise); the logistic losses need no note."""
    from selfplay.core.losses import LOSSES, loss_note

    note = loss_note("sppo", 1e-3)
    assert note is not None and "1/beta = 1000;" in note and "up to 250000" in note
    assert all(loss_note(name, 1e-3) for name in ("sppo_single", "sppo_hard", "gpo"))
    assert not any(loss_note(name, 0.1) for name in ("sigmoid", "dpo", "spin", "hinge", "ipo"))
    assert {"sppo", "sppo_single", "sppo_hard", "gpo"} <= LOSSES.keys()
    # The bound it quotes: SPPO's loss at the start (log-ratios 0) with targets at their extremes.
    import torch

    from selfplay.core.losses import sppo_loss

    zero = torch.zeros(1)
    start = sppo_loss(zero, zero, zero, zero, beta=1e-3, chosen_prob=torch.ones(1), rejected_prob=torch.zeros(1))
    assert abs(start.losses.item() - 250000) < 1e-3 * 250000
