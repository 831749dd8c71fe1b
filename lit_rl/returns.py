"""Advantage and return estimation: pure tensor functions over [T, N] rollouts."""

import torch
from torch import Tensor


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16).

    All inputs are ``[T, N]``. ``next_values[t]`` is the value of the true next observation of step ``t``:
    on a step that ended an episode it is the value of that episode's final observation, not of the
    observation the environment was reset to.

    - ``terminated[t]``: the episode ended in a terminal state, so nothing is bootstrapped.
    - ``truncated[t]``: the episode was cut (time limit), so the step bootstraps from ``next_values[t]``.

    Either flag cuts the advantage trace, since the next step belongs to another episode.
    Returns ``(advantages, returns)`` with ``returns = advantages + values`` (the value targets).
    """
    not_terminated = 1.0 - terminated.to(values.dtype)
    not_done = 1.0 - (terminated | truncated).to(values.dtype)
    # TD residual: delta_t = r_t + gamma * V(s_{t+1}) - V(s_t), no bootstrap past a terminal state.
    deltas = rewards + gamma * next_values * not_terminated - values
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        # A_t = delta_t + gamma * lambda * A_{t+1}, cut at episode ends.
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values
