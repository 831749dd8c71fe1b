"""Unit tests of lit_rl.objectives on small hand-built tensors, each checked against numbers worked out by hand
or by an independent formula written out here (never by the function under test)."""

import math

import pytest
import torch
from torch.testing import assert_close

from lit_rl.objectives import actor_objective, aux_value_loss, clone_kl, normalize_advantages, policy_loss, value_loss
from lit_rl.nets.distributions import CategoricalDist, DiagGaussianDist

F64 = torch.float64

# Six samples at clip_coef 0.2, so the clip range is [0.8, 1.2]. Per sample: ratio, advantage, and the
# objective min(A * r, A * clip(r)) worked out by hand.
CLIP = 0.2
RATIOS = [1.3, 0.5, 1.5, 0.5, 1.1, 0.9]  # mean(r) != 1, so k3 differs from k1 = mean(-log r)
ADVS = [2.0, 2.0, -2.0, -2.0, 1.0, -1.0]
OBJECTIVE = [
    2.4,  # A > 0, r above the range: clipped, 2 * 1.2 (not 2 * 1.3 = 2.6)
    1.0,  # A > 0, r below the range: not clipped, 2 * 0.5 (not 2 * 0.8 = 1.6)
    -3.0,  # A < 0, r above the range: not clipped, -2 * 1.5 (not -2 * 1.2 = -2.4)
    -1.6,  # A < 0, r below the range: clipped, -2 * 0.8 (not -2 * 0.5 = -1)
    1.1,  # inside the range
    -0.9,  # inside the range
]
# Samples whose clip binds in the direction of the advantage: no gradient flows through them.
CLIPPED = [True, False, False, True, False, False]


def _logprobs(requires_grad=False):
    old = torch.tensor([-1.0, -0.5, -2.0, -0.3, -1.2, -0.7], dtype=F64)
    new = (old + torch.tensor(RATIOS, dtype=F64).log()).detach().requires_grad_(requires_grad)
    return new, old


def test_policy_loss_clipped_surrogate_and_stats_by_hand():
    logprobs, old = _logprobs()
    loss, stats = policy_loss(logprobs, old, torch.tensor(ADVS, dtype=F64), CLIP)

    assert loss.item() == pytest.approx(-sum(OBJECTIVE) / 6)  # = 1/6
    assert loss.item() == pytest.approx(1 / 6)
    # k3 estimator of KL(old || new): mean((r - 1) - log r).
    assert stats["approx_kl"].item() == pytest.approx(sum((r - 1) - math.log(r) for r in RATIOS) / 6)
    # |r - 1| > 0.2 for the first four samples (one of them, r = 1.3, by less than 2 * 0.2).
    assert stats["clip_fraction"].item() == pytest.approx(4 / 6)
    assert stats["approx_kl"].item() != pytest.approx(sum(-math.log(r) for r in RATIOS) / 6)
    assert set(stats) == {"approx_kl", "clip_fraction"}


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    old = torch.tensor([-1.0, -0.2, -3.0], dtype=F64)
    adv = torch.tensor([1.0, -4.0, 0.5], dtype=F64)
    loss, stats = policy_loss(old.clone(), old, adv, CLIP)
    assert loss.item() == pytest.approx(2.5 / 3)
    assert stats["approx_kl"].item() == pytest.approx(0.0, abs=1e-12)
    assert stats["clip_fraction"].item() == 0.0


def test_policy_loss_gradient_is_zero_where_clipped_in_the_advantages_direction():
    logprobs, old = _logprobs(requires_grad=True)
    loss, _ = policy_loss(logprobs, old, torch.tensor(ADVS, dtype=F64), CLIP)
    loss.backward()
    # d/dlogp of -(A * exp(logp - old)) / N is -A * r / N where unclipped, 0 where the clip binds.
    expected = [0.0 if c else -a * r / 6 for r, a, c in zip(RATIOS, ADVS, CLIPPED)]
    assert_close(logprobs.grad, torch.tensor(expected, dtype=F64))


def test_value_loss_unclipped_is_half_mse():
    values = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    returns = torch.tensor([0.0, 4.0, -1.5], dtype=F64)
    old_values = torch.tensor([100.0, -100.0, 7.0], dtype=F64)  # unused without clip_coef
    loss, stats = value_loss(values, old_values, returns, None)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 4.0 + 0.25) / 3)
    assert stats == {}


def test_value_loss_clipped_takes_the_larger_error_and_its_gradient():
    old_values = torch.zeros(3, dtype=F64)
    values = torch.tensor([1.0, 1.0, 0.1], dtype=F64, requires_grad=True)
    returns = torch.tensor([2.0, 0.0, 1.0], dtype=F64)
    loss, _ = value_loss(values, old_values, returns, 0.2)
    # Sample 0: V clipped to 0.2; (0.2 - 2)^2 = 3.24 beats (1 - 2)^2 = 1: the clipped error wins.
    # Sample 1: V clipped to 0.2; (1 - 0)^2 = 1 beats (0.2 - 0)^2 = 0.04: the plain error wins.
    # Sample 2: inside the clip range; both are (0.1 - 1)^2 = 0.81.
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.0 + 0.81) / 3)
    loss.backward()
    # The clipped branch is constant in V once clipped: no gradient on sample 0; 0.5 * 2 * (V - R) / 3 else.
    assert_close(values.grad, torch.tensor([0.0, 1.0 / 3, -0.9 / 3], dtype=F64))


def test_normalize_advantages_over_itself_has_mean_zero_std_one():
    adv = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    out = normalize_advantages(adv, adv)
    std = math.sqrt(5 / 3)  # unbiased std of 1..4 about 2.5
    assert_close(out, torch.tensor([-1.5, -0.5, 0.5, 1.5], dtype=F64) / std)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert out.std().item() == pytest.approx(1.0, rel=1e-6)


def test_normalize_advantages_of_two_samples_is_normalized():
    """Two samples are enough: (x - mean) / std, with the unbiased std (sqrt(2) for 1 and 3)."""
    adv = torch.tensor([1.0, 3.0], dtype=F64)
    assert_close(normalize_advantages(adv, adv), torch.tensor([-1.0, 1.0], dtype=F64) / math.sqrt(2))


def test_normalize_advantages_uses_the_stats_of_over_not_of_the_share():
    over = torch.tensor([0.0, 2.0, 4.0, 10.0], dtype=F64)  # mean 4, unbiased std sqrt(56/3)
    share = over[:2]
    out = normalize_advantages(share, over)
    assert_close(out, torch.tensor([-4.0, -2.0], dtype=F64) / math.sqrt(56 / 3))


@pytest.mark.parametrize("n_over", [0, 1])
def test_normalize_advantages_returns_input_when_over_has_fewer_than_two(n_over):
    over = torch.full((n_over,), 3.0, dtype=F64)
    adv = torch.tensor([3.0, -1.0], dtype=F64)[:max(n_over, 1)]
    out = normalize_advantages(adv, over)
    assert torch.equal(out, adv)


def _categorical_case():
    logits = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.5, 0.0], [0.3, 0.3, 0.3], [-1.0, 0.0, 3.0]],
                          dtype=F64, requires_grad=True)
    actions = torch.tensor([1, 0, 2, 2])
    old_logprobs = torch.tensor([-1.0, -0.1, -1.5, -0.2], dtype=F64)
    advantages = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    return logits, actions, old_logprobs, advantages


def test_actor_objective_categorical_terms_and_detached_stats():
    logits, actions, old_logprobs, advantages = _categorical_case()
    terms, stats = actor_objective(CategoricalDist(logits), actions, old_logprobs, advantages, CLIP)

    log_p = torch.log_softmax(logits.detach(), -1)
    expected_policy, expected_stats = policy_loss(log_p.gather(-1, actions[:, None])[:, 0], old_logprobs,
                                                  advantages, CLIP)
    expected_entropy = -(log_p.exp() * log_p).sum(-1).mean()
    assert set(terms) == {"policy", "entropy"}
    assert_close(terms["policy"].detach(), expected_policy)
    assert_close(terms["entropy"].detach(), expected_entropy)

    assert set(stats) == {"policy_loss", "entropy", "approx_kl", "clip_fraction"}
    assert not any(s.requires_grad for s in stats.values())
    assert_close(stats["policy_loss"], expected_policy)
    assert_close(stats["entropy"], expected_entropy)
    assert_close(stats["approx_kl"], expected_stats["approx_kl"])
    assert_close(stats["clip_fraction"], expected_stats["clip_fraction"])

    assert terms["policy"].requires_grad and terms["entropy"].requires_grad
    (terms["policy"] - 0.01 * terms["entropy"]).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_actor_objective_gaussian_with_value_term():
    mean = torch.tensor([[0.0, 1.0], [0.5, -0.5], [2.0, 0.0]], dtype=F64, requires_grad=True)
    log_std = torch.tensor([0.0, math.log(0.5)], dtype=F64, requires_grad=True)
    actions = torch.tensor([[0.1, 1.2], [0.0, 0.0], [1.0, 0.5]], dtype=F64)
    old_logprobs = torch.tensor([-1.5, -2.0, -3.5], dtype=F64)
    advantages = torch.tensor([1.0, -1.0, 2.0], dtype=F64)
    values = torch.tensor([1.0, 1.0, 0.1], dtype=F64, requires_grad=True)
    old_values = torch.zeros(3, dtype=F64)
    returns = torch.tensor([2.0, 0.0, 1.0], dtype=F64)

    terms, stats = actor_objective(DiagGaussianDist(mean, log_std), actions, old_logprobs, advantages, CLIP,
                                   values=values, old_values=old_values, returns=returns, value_clip=0.2)

    std = log_std.detach().exp()
    z = (actions - mean.detach()) / std
    log_prob = (-0.5 * z**2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    expected_policy, _ = policy_loss(log_prob, old_logprobs, advantages, CLIP)
    entropy = (0.5 * math.log(2 * math.pi * math.e) + std.log()).sum()  # same for every sample
    assert set(terms) == {"policy", "entropy", "value"}
    assert_close(terms["policy"].detach(), expected_policy)
    assert_close(terms["entropy"].detach(), entropy)
    # Same numbers as the clipped value-loss test above.
    assert terms["value"].item() == pytest.approx(0.5 * (3.24 + 1.0 + 0.81) / 3)
    assert set(stats) == {"policy_loss", "entropy", "approx_kl", "clip_fraction"}
    assert all(t.requires_grad for t in terms.values())
    assert not any(s.requires_grad for s in stats.values())
    sum(terms.values()).backward()
    assert values.grad is not None and mean.grad is not None and log_std.grad is not None


def test_aux_value_loss_is_half_mse_with_gradient():
    aux = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64, requires_grad=True)
    returns = torch.tensor([0.0, -1.0, 0.5, 1.0], dtype=F64)
    loss = aux_value_loss(aux, returns)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 1.0 + 0.0 + 4.0) / 4)
    loss.backward()
    assert_close(aux.grad, torch.tensor([1.0, -1.0, 0.0, 2.0], dtype=F64) / 4)


def test_clone_kl_categorical_by_hand_and_argument_order():
    p_old = torch.tensor([[0.98, 0.01, 0.01], [0.25, 0.25, 0.5]], dtype=F64)
    p_new = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.25, 0.25, 0.5]], dtype=F64)
    old, new = CategoricalDist(p_old.log()), CategoricalDist(p_new.log())

    assert clone_kl(old, CategoricalDist(p_old.log())).item() == pytest.approx(0.0, abs=1e-12)

    def kl(p, q):  # sum_i p_i log(p_i / q_i), averaged over the batch
        return sum(sum(pi * math.log(pi / qi) for pi, qi in zip(pr, qr)) for pr, qr in zip(p, q)) / len(p)

    forward = kl(p_old.tolist(), p_new.tolist())  # row 0 only; row 1 is identical
    backward = kl(p_new.tolist(), p_old.tolist())
    assert forward == pytest.approx(0.5 * (0.98 * math.log(2.94) + 0.02 * math.log(0.03)))  # ~0.49
    assert backward - forward > 0.4  # the example is asymmetric (backward ~0.99)
    assert clone_kl(old, new).item() == pytest.approx(forward)
    assert clone_kl(new, old).item() == pytest.approx(backward)


def test_clone_kl_diag_gaussian_closed_form():
    m0 = torch.tensor([[0.0, 1.0], [0.5, -1.0]], dtype=F64)
    m1 = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=F64)
    s0 = torch.tensor([0.5, 1.0], dtype=F64)
    s1 = torch.tensor([1.0, 2.0], dtype=F64)
    old, new = DiagGaussianDist(m0, s0.log()), DiagGaussianDist(m1, s1.log())

    def kl(ma, sa, mb, sb):  # KL(N(ma, sa) || N(mb, sb)), summed over action dims, averaged over the batch
        per_dim = (sb / sa).log() + (sa**2 + (ma - mb) ** 2) / (2 * sb**2) - 0.5
        return per_dim.sum(-1).mean()

    assert clone_kl(old, DiagGaussianDist(m0, s0.log())).item() == pytest.approx(0.0, abs=1e-12)
    assert_close(clone_kl(old, new), kl(m0, s0, m1, s1))
    assert_close(clone_kl(new, old), kl(m1, s1, m0, s0))
    assert abs(kl(m0, s0, m1, s1) - kl(m1, s1, m0, s0)).item() > 0.1
