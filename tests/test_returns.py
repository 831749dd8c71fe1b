import torch

from lit_rl.objectives import gae


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Plain loop over each env's steps, one episode at a time."""
    T, N = rewards.shape
    adv = torch.zeros(T, N, dtype=torch.float64)
    for n in range(N):
        future = 0.0
        for t in reversed(range(T)):
            if terminated[t, n]:
                delta = rewards[t, n] - values[t, n]
                future = delta
            elif truncated[t, n]:
                delta = rewards[t, n] + gamma * next_values[t, n] - values[t, n]
                future = delta
            else:
                delta = rewards[t, n] + gamma * next_values[t, n] - values[t, n]
                future = delta + gamma * lam * future
            adv[t, n] = future
    return adv


def test_gae_matches_loop_with_terminations_and_truncations():
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        T, N = 37, 5
        rewards = torch.randn(T, N, generator=gen, dtype=torch.float64)
        values = torch.randn(T, N, generator=gen, dtype=torch.float64)
        next_values = torch.randn(T, N, generator=gen, dtype=torch.float64)
        u = torch.rand(T, N, generator=gen)
        terminated = u < 0.08
        truncated = (u >= 0.08) & (u < 0.16)
        assert terminated.any() and truncated.any()
        gamma, lam = 0.9 + 0.01 * (trial % 10), 0.5 + 0.05 * (trial % 10)
        adv, ret = gae(rewards, values, next_values, terminated, truncated, gamma, lam)
        expected = reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam)
        torch.testing.assert_close(adv, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ret, expected + values, rtol=1e-12, atol=1e-12)


def test_truncation_bootstraps_and_termination_does_not():
    one = torch.ones(1, 1)
    zero = torch.zeros(1, 1, dtype=torch.bool)
    true = torch.ones(1, 1, dtype=torch.bool)
    # Reward 1, V(s) = 0, V(final obs) = 10.
    adv_trunc, _ = gae(one, 0 * one, 10 * one, zero, true, 0.5, 0.9)
    adv_term, _ = gae(one, 0 * one, 10 * one, true, zero, 0.5, 0.9)
    assert adv_trunc.item() == 1 + 0.5 * 10
    assert adv_term.item() == 1
