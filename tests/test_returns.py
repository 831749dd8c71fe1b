import pytest
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


def torch_recursion(rewards, values, next_values, terminated, truncated, gamma, lam):
    """The recursion as torch ops on whole rows, in float32: what a rollout's advantages were before the CPU path
    ran it on numpy views (and what they are on a GPU, or with gradients)."""
    not_terminated = 1.0 - terminated.to(values.dtype)
    not_done = 1.0 - (terminated | truncated).to(values.dtype)
    deltas = rewards + gamma * next_values * not_terminated - values
    advantages, running = torch.zeros_like(values), torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages


@pytest.mark.filterwarnings("error::RuntimeWarning")  # what numpy warns of a non-finite reward (errstate silences it)
def test_gae_on_a_cpu_is_the_torch_recursion_bit_for_bit_in_float32():
    """The behaviour reference's numbers depend on it: every float32 advantage equal, not close, over rollout
    shapes, discounts, episode ends, an infinite reward, and with gradients (the torch path)."""
    gen = torch.Generator().manual_seed(1)
    for trial in range(60):
        T, N = int(torch.randint(1, 260, (1,), generator=gen)), int(torch.randint(1, 17, (1,), generator=gen))
        rewards = torch.randn(T, N, generator=gen) * 10
        values, next_values = torch.randn(T, N, generator=gen) * 50, torch.randn(T, N, generator=gen) * 50
        u = torch.rand(T, N, generator=gen)
        terminated, truncated = u < 0.05, (u >= 0.05) & (u < 0.1)
        if trial == 0:
            rewards[0, 0] = rewards[-1, 0] = float("inf")
        gamma, lam = [(0.99, 0.95), (0.999, 0.9), (0.9, 1.0), (0.95, 0.0)][trial % 4]
        expected = torch_recursion(rewards, values, next_values, terminated, truncated, gamma, lam)
        adv, ret = gae(rewards, values, next_values, terminated, truncated, gamma, lam)
        assert adv.dtype == torch.float32
        torch.testing.assert_close(adv, expected, rtol=0, atol=0, equal_nan=True)  # equal, NaN where it is NaN
        torch.testing.assert_close(ret, expected + values, rtol=0, atol=0, equal_nan=True)
    for dtype in (torch.float64, torch.bfloat16):  # numpy's float64, and a dtype numpy does not have
        args = [x.to(dtype) for x in (rewards, values, next_values)] + [terminated, truncated, 0.99, 0.95]
        adv, _ = gae(*args)
        assert adv.dtype == dtype and torch.equal(adv, torch_recursion(*args))
    values.requires_grad_(True)
    adv, _ = gae(rewards, values, next_values, terminated, truncated, 0.99, 0.95)
    assert adv.requires_grad
    assert torch.equal(adv, torch_recursion(rewards, values, next_values, terminated, truncated, 0.99, 0.95))
