"""Policy-optimisation math against hand-computed values and plain reference loops."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.losses import (
    AdaptiveKLController,
    gae,
    kl_k1,
    kl_k3,
    group_normalized_advantages,
    leave_one_out_baseline,
    masked_mean,
    policy_gradient_loss,
    token_logprobs,
    value_loss,
    whiten,
)


def test_importance_sampled_gradient_equals_on_policy_gradient_at_pi_bar():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 6, requires_grad=True)
    tokens = torch.randint(0, 6, (3, 4))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    adv = torch.randn(3, 4)
    logp = token_logprobs(logits, tokens)
    for clip in (None, 0.2):  # at ratio 1 clipping is inactive
        loss, stats = policy_gradient_loss(logp, logp.detach(), adv, mask, clip)
        (g_is,) = torch.autograd.grad(loss, logits, retain_graph=True)
        reinforce = -masked_mean(adv * logp, mask)
        (g_pg,) = torch.autograd.grad(reinforce, logits, retain_graph=True)
        torch.testing.assert_close(g_is, g_pg, atol=1e-7, rtol=0)
        assert stats["policy/ratio_mean"] == pytest.approx(1.0) and stats["policy/clipfrac"] == 0.0


def test_clipping_zeroes_the_gradient_outside_the_range_on_the_right_side():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    # ratios 1.5 (A > 0: clipped, no gradient), 0.5 (A < 0: clipped, no gradient),
    # 1.5 with A < 0 and 0.5 with A > 0 (the pessimistic side: unclipped, gradient flows)
    new = torch.log(torch.tensor([[0.75, 0.25, 0.75, 0.25]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    mask = torch.ones(1, 4)
    loss, stats = policy_gradient_loss(new, old, adv, mask, clip_range=0.2)
    (grad,) = torch.autograd.grad(loss, new)
    # d/dlogp of -A * ratio / 4 = -A * ratio / 4
    assert grad[0, 0] == 0 and grad[0, 1] == 0
    assert grad[0, 2].item() == pytest.approx(1.0 * 1.5 / 4) and grad[0, 3].item() == pytest.approx(-1.0 * 0.5 / 4)
    assert stats["policy/clipfrac"] == 0.5
    assert stats["policy/ratio_max"] == pytest.approx(1.5)
    # loss by hand: mean of [-1.2, 0.8 (clipped: -(-1)*0.8), 1.5, -0.5]
    assert loss.item() == pytest.approx((-1.2 + 0.8 + 1.5 - 0.5) / 4)
    # without clipping every token has gradient
    loss, _ = policy_gradient_loss(new, old, adv, mask, clip_range=None)
    (grad,) = torch.autograd.grad(loss, new)
    assert (grad != 0).all()


def test_k1_and_k3_are_unbiased_for_a_known_kl():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.2, 0.6])
    exact = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    logp, logq = p.log(), q.log()
    # expectations under x ~ p, summed exactly over the support
    assert (p * kl_k1(logp, logq)).sum().item() == pytest.approx(exact, rel=1e-6)
    assert (p * kl_k3(logp, logq)).sum().item() == pytest.approx(exact, rel=1e-6)
    assert (kl_k3(logp, logq) >= 0).all()
    assert kl_k1(logp, logp).abs().max() == 0 and kl_k3(logp, logp).abs().max() == 0


def test_leave_one_out_baseline_by_hand():
    scores = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    assert leave_one_out_baseline(scores).tolist() == [[4.0, 3.5, 1.5], [1.5, 1.5, 0.0]]
    with pytest.raises(ValueError):
        leave_one_out_baseline(torch.ones(2, 1))


def test_group_normalized_advantages_by_hand():
    scores = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    # group means 3 and 1; sample std sqrt(((-2)^2 + (-1)^2 + 3^2) / 2) = sqrt(7), sqrt((1 + 1 + 4) / 2) = sqrt(3)
    centred = [[-2.0, -1.0, 3.0], [-1.0, -1.0, 2.0]]
    assert group_normalized_advantages(scores, "none").tolist() == centred
    s7, s3 = math.sqrt(7) + 1e-4, math.sqrt(3) + 1e-4
    assert group_normalized_advantages(scores, "group").flatten().tolist() == pytest.approx(
        [-2 / s7, -1 / s7, 3 / s7, -1 / s3, -1 / s3, 2 / s3], rel=1e-6)
    # batch: mean-centred per group, scaled by the sample std of all six scores (mean 2, squares sum 26, / 5)
    sb = math.sqrt(26 / 5) + 1e-4
    assert group_normalized_advantages(scores, "batch").flatten().tolist() == pytest.approx(
        [c / sb for row in centred for c in row], rel=1e-6)
    # a group of equal scores gets zero advantages (no division by zero)
    assert group_normalized_advantages(torch.tensor([[2.0, 2.0]]), "group").tolist() == [[0.0, 0.0]]
    with pytest.raises(ValueError):
        group_normalized_advantages(torch.ones(2, 1))


def test_whiten_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    w = whiten(x, mask)
    std = math.sqrt(2 / 3)
    assert w[:3].tolist() == pytest.approx([-1 / std, 0.0, 1 / std], rel=1e-5)


def reference_gae(rewards, values, lengths, gamma, lam):
    out = []
    for r, v, n in zip(rewards, values, lengths):
        adv = [0.0] * len(r)
        nxt = 0.0
        for t in reversed(range(n)):
            v_next = v[t + 1] if t + 1 < n else 0.0
            delta = r[t] + gamma * v_next - v[t]
            nxt = delta + gamma * lam * nxt
            adv[t] = nxt
        out.append(adv)
    return out


def test_gae_matches_a_plain_reference_loop():
    torch.manual_seed(0)
    rewards = torch.randn(4, 7)
    values = torch.randn(4, 7)
    lengths = [7, 3, 1, 5]
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in lengths])
    for gamma, lam in ((1.0, 0.95), (0.9, 1.0), (0.99, 0.0)):
        adv, ret = gae(rewards, values, mask, gamma, lam)
        expected = torch.tensor(reference_gae(rewards.tolist(), values.tolist(), lengths, gamma, lam))
        torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(ret, (expected + values) * mask, atol=1e-5, rtol=0)


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    assert ctl.update(current_kl=12.0, n_steps=100) == pytest.approx(0.1 * (1 + 0.2 * 100 / 10_000))
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)  # 4.5 / 6 - 1 = -0.25, clipped to -0.2
    assert ctl.update(current_kl=4.5, n_steps=1000) == pytest.approx(0.1 * (1 - 0.2 * 0.1))
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)  # inside the clip range: error 0.1
    assert ctl.update(current_kl=6.6, n_steps=1000) == pytest.approx(0.1 * (1 + 0.1 * 0.1))


def test_token_logprobs_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # probabilities 1/4, 3/4
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))


def test_value_loss_by_hand_with_and_without_clipping():
    old = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    new = torch.tensor([[0.5, -0.1, 1.0, 0.0]], requires_grad=True)
    ret = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last token is padding: ignored
    loss, stats = value_loss(new, old, ret, mask, clip_range=None)
    # 0.5 * mean of (0.5 - 1)^2, (-0.1 - 1)^2, 0 over three real tokens
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.21 + 0.0) / 3)
    # clip 0.2: token 0's clipped value is 0.2, (0.2 - 1)^2 = 0.64 > 0.25, so the clipped term wins and
    # its gradient is zero; token 1 moved by -0.1 (inside the range): unclipped, gradient flows.
    loss, stats = value_loss(new, old, ret, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21 + 0.0) / 3)
    (grad,) = torch.autograd.grad(loss, new)
    assert grad[0, 0] == 0 and grad[0, 3] == 0
    assert grad[0, 1].item() == pytest.approx((-0.1 - 1.0) / 3)
    assert stats["value/clipfrac"] == pytest.approx(1 / 3)


def test_value_clipfrac_counts_moves_out_of_the_range_not_rounding_ties():
    """A value that moved by 0.025 (inside clip 0.2): old + (new - old) is one float32 step away from new,
    so the clipped square can exceed the plain one by rounding; that is not clipping. Loss and gradient
    are those of the unclipped term either way."""
    old, new = torch.tensor([[-0.00969307404011488]]), torch.tensor([[0.015604972839355469]], requires_grad=True)
    ret = torch.tensor([[0.013573152013123035]])
    assert (old + (new - old)).item() != new.item()  # the tie this guards against
    loss, stats = value_loss(new, old, ret, torch.ones(1, 1), clip_range=0.2)
    assert stats["value/clipfrac"] == 0.0
    assert loss.item() == pytest.approx(0.5 * (new.item() - ret.item()) ** 2, rel=1e-5)
