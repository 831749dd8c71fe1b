"""Acting: noise-driven sampling draws from the policy's distribution, and rollouts do not depend on how
the run's envs are split among collectors (processes)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from lit_rl.algos.ppo import PPO
from lit_rl.data.collector import Collector
from lit_rl.nets import CategoricalDist, DiagGaussianDist, MultiCategoricalDist


def test_sampling_with_uniform_noise_follows_the_distribution():
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    probs = torch.tensor([0.1, 0.6, 0.3])
    actions = CategoricalDist(probs.log().expand(n, 3)).sample_from(torch.rand(n, 1, generator=gen))
    assert torch.allclose(torch.bincount(actions, minlength=3).float() / n, probs, atol=5e-3)

    multi = MultiCategoricalDist(torch.cat([probs.log(), torch.tensor([0.5, 0.5]).log()]).expand(n, 5), [3, 2])
    actions = multi.sample_from(torch.rand(n, 2, generator=gen))
    assert torch.allclose(torch.bincount(actions[:, 0], minlength=3).float() / n, probs, atol=5e-3)
    assert abs(actions[:, 1].float().mean().item() - 0.5) < 5e-3

    gauss = DiagGaussianDist(torch.tensor([1.0, -2.0]).expand(n, 2), torch.tensor([0.0, float(np.log(0.5))]))
    actions = gauss.sample_from(torch.rand(n, 2, generator=gen))
    assert torch.allclose(actions.mean(0), torch.tensor([1.0, -2.0]), atol=1e-2)
    assert torch.allclose(actions.std(0), torch.tensor([1.0, 0.5]), atol=1e-2)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_rollouts_do_not_depend_on_how_envs_are_split(env_id):
    probe = gym.make(env_id)
    torch.manual_seed(0)
    policy = PPO()
    policy.build(probe.observation_space, probe.action_space)

    def collect(num_envs: int, offset: int):
        collector = Collector(gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync"), env_offset=offset,
                              noise_seed=7)
        collector.reset(seed=100 + offset)
        rollouts = [collector.collect(policy, 40, env_steps=0, iteration=i) for i in range(2)]
        collector.envs.close()
        return rollouts

    whole = collect(4, 0)
    halves = [collect(2, 0), collect(2, 2)]
    for i, rollout in enumerate(whole):
        for field in ("obs", "actions", "logprobs", "values", "rewards", "terminated", "truncated", "valid"):
            joined = torch.cat([getattr(h[i], field) for h in halves], 1)
            # Network outputs differ by the float rounding of another batch size (the matrix kernels a CPU's BLAS
            # picks for 2 rows and for 4), relative to their size: here up to 4.8e-7, one float32 step at a
            # log-prob of -5, over 16 seeds; another CPU's kernels or Pendulum's path under another numpy (its
            # cos and sin round differently) can give a few steps. A wrong split (an env's noise, seed or
            # observation taken from another env) moves them by 0.1 or more. Continuous actions carry that
            # rounding into the env, discrete ones do not.
            atol, rtol = ((1e-5, 1e-5) if field in ("logprobs", "values") else (1e-4, 0.0) if env_id == "Pendulum-v1"
                          else (0.0, 0.0))
            if atol and joined.is_floating_point():
                assert torch.allclose(getattr(rollout, field), joined, rtol=rtol, atol=atol), field
            else:
                assert torch.equal(getattr(rollout, field), joined), field
    # Different iterations and envs draw different noise.
    assert not torch.equal(whole[0].actions, whole[1].actions)
