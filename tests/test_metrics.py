"""The iteration's explained variance is right where the returns are nearly constant (a solved CartPole's are
about 100): float32 ``E[x^2] - E[x]^2`` cancels there, and logged values above 1."""

import numpy as np
import pytest
import torch

from lit_rl.algos.metrics import RunMetrics, explained_variance
from lit_rl.algos.ppo import PPO
from lit_rl.data.rollout import Rollout


def reference(values: torch.Tensor, returns: torch.Tensor) -> float:
    """``1 - Var[returns - values] / Var[returns]`` in float64 numpy."""
    r, v = returns.double().numpy(), values.double().numpy()
    return float(1 - np.var(r - v) / np.var(r))


def near_100(seed: int, spread: float, n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 returns of about 100 with a small ``spread``, and values that miss them by half as much."""
    g = torch.Generator().manual_seed(seed)
    returns = 100 + spread * torch.randn(n, generator=g)
    return returns + 0.5 * spread * torch.randn(n, generator=g), returns


def a_rollout() -> Rollout:
    zeros = torch.zeros(1, 1)
    return Rollout(obs=zeros, actions=zeros, logprobs=zeros, values=zeros, rewards=zeros, terminated=zeros.bool(),
                   truncated=zeros.bool(), valid=zeros.bool(), starts=zeros.bool(), last_value=torch.zeros(1),
                   last_obs=torch.zeros(1), last_start=torch.zeros(1, dtype=torch.bool), episode_returns=torch.zeros(0),
                   episode_lengths=torch.zeros(0), env_steps=512, iteration=0, rollout_time=0.0)


@pytest.mark.parametrize("seed, spread", [(4, 0.02), (5, 0.005), (0, 0.01), (1, 0.05)])
def test_the_logged_explained_variance_of_nearly_constant_returns_is_the_float64_one(seed, spread):
    """torchmetrics in float32 gave 0.892, 0.0, 1.028 and 0.287 here; float64 gives 0.744, 0.775, 0.738, 0.734."""
    values, returns = near_100(seed, spread)
    metrics = RunMetrics(PPO.loss_metrics).iteration_metrics(a_rollout(), {"values": values, "returns": returns}, {}, {})
    logged = float(metrics["train/explained_variance"])
    assert logged <= 1.0
    assert logged == pytest.approx(reference(values, returns), abs=1e-9)


def test_explained_variance_of_ordinary_values_and_its_degenerate_cases():
    g = torch.Generator().manual_seed(0)
    returns = torch.randn(256, generator=g)
    values = returns + 0.3 * torch.randn(256, generator=g)
    assert float(explained_variance(values, returns)) == pytest.approx(reference(values, returns), abs=1e-12)
    assert float(explained_variance(returns, returns)) == 1.0
    constant = torch.full((8,), 100.0)
    assert float(explained_variance(constant, constant)) == 1.0  # nothing to explain, nothing missed
    assert float(explained_variance(constant + torch.arange(8.0), constant)) == 0.0  # nothing to explain, but missed


def test_explained_variance_of_non_finite_or_no_returns_is_nan_not_1():
    values = torch.zeros(4)
    assert torch.isnan(explained_variance(values, torch.tensor([1.0, float("nan"), 2.0, 3.0])))
    assert torch.isnan(explained_variance(values, torch.tensor([1.0, float("inf"), 2.0, 3.0])))
    assert torch.isnan(explained_variance(torch.zeros(0), torch.zeros(0)))


def test_the_iteration_means_are_not_synced_again():
    """Every process holds every process's stats already (the placement's merge_stats, the gathered rollout):
    the means must not sync over the processes a second time."""
    metrics = RunMetrics(PPO.loss_metrics)
    metrics._mean("a_new_episode_field", torch.ones(3))  # a metric made on first use
    assert metrics.means and not any(mean.sync_on_compute for mean in metrics.means.values())
