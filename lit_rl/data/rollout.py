"""The rollout: ``[T, N]`` tensors of one collection round over ``N`` vector envs."""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class Rollout:
    """One round of experience, time-major.

    The vector envs use gymnasium's default next-step autoreset: the step after an episode ends only
    resets that env, its action is ignored and it is no transition. Such steps have ``valid=False`` and
    are left out of every loss. The observation at a step that ended an episode is that episode's final
    observation, so ``next_values`` bootstraps truncated episodes from the right state.
    """

    obs: Tensor  # [T, N, *obs_shape]
    actions: Tensor  # [T, N, *action_shape]
    logprobs: Tensor  # [T, N]   log pi_old(a|s) at collection
    values: Tensor  # [T, N]   V_old(s) at collection (the pre-update critic)
    rewards: Tensor  # [T, N]   after reward normalization, when it is on
    terminated: Tensor  # [T, N] bool
    truncated: Tensor  # [T, N] bool
    valid: Tensor  # [T, N] bool: False on an autoreset step
    starts: Tensor  # [T, N] bool: the first step of an episode (a recurrent state is zeroed before it)
    last_value: Tensor  # [N]      V_old of the observation after the last step
    last_obs: Tensor  # [N, *obs_shape] the observation after the last step (PPG recomputes its value)
    last_start: Tensor  # [N] bool: whether last_obs starts an episode
    episode_returns: Tensor  # [E]  raw returns of the episodes that ended in this rollout
    episode_lengths: Tensor  # [E]
    env_steps: int  # env steps taken by the run so far, this rollout included
    iteration: int  # 0-based index of this rollout in the run
    rollout_time: float  # seconds spent collecting
    initial_state: Optional[Tensor] = None  # [N, S] a recurrent policy's state before the first step

    @property
    def num_steps(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_envs(self) -> int:
        return int(self.values.shape[1])

    @property
    def next_values(self) -> Tensor:
        """``V(s_{t+1})`` for every step: the next row's value, and ``last_value`` after the last row."""
        return torch.cat([self.values[1:], self.last_value.unsqueeze(0)])

    def to(self, device: torch.device) -> "Rollout":
        """The same rollout with every tensor on ``device``."""
        fields = {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in vars(self).items()}
        return Rollout(**fields)
