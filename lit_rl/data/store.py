"""Implements PPG's rollout store, which keeps what the auxiliary phase needs from the last ``N_pi`` rollouts, and
no more.

Per rollout it keeps the fields :class:`~lit_rl.data.rollout.Rollout` (or a subclass) declares ``stored``, and the
auxiliary phase's sequences carry every stored time-major one: the observations, rewards, termination/truncation
flags, the valid mask, the episode-start flags, the observation after the last step and (recurrent policies) the
state at the rollout's start: enough to recompute value targets with the current critic and the policy's
distribution at the phase start. Actions, log-probs, advantages and the old values are not kept.

Memory (bytes), with ``B = num_envs * num_steps`` samples per rollout and ``o`` bytes per observation:

- the store itself: ``N_pi * (B * (o + 4 + 4) + num_envs * (o + 1 + 4 * S))``, ``S`` the floats of a
  recurrent state (0 without one);
- during the auxiliary phase, for a moment, a stacked copy of it plus ``N_pi * B * (4 + 4 * P)`` bytes
  of value targets and frozen policy parameters (``P`` floats per sample: the logits, or a Gaussian's
  mean and log std);
- and the largest batch the networks see at once, with its float32 copy of the observations (``e``
  elements each) and what the encoders make of it (``a`` float elements of activations per sample, summed over
  the encoders' layers and over the encoders that run; ``m``, the largest layer's): a minibatch of
  ``M = N_pi * B / aux_minibatches`` samples, kept for the backward pass, ``M * (o + 4 * e + 4 * a)`` bytes, or
  a forward chunk of :data:`FORWARD_CHUNK` observations without gradients, ``FORWARD_CHUNK * 4 * (e + 2 * m)``
  bytes. The observations are counted at their stored size: a ``uint8`` frame is ``o = e`` bytes. The trunks'
  and heads' activations are not counted (a CNN's dwarf them).

:meth:`RolloutStore.estimate_bytes` gives the peak; PPG refuses a setting whose peak does not fit.
The estimate counts the fields above; the extra stored fields of a :class:`Rollout` subclass are not in it.
"""

import os
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from lit_rl.data.rollout import TIME, Rollout
from lit_rl.envs.wrappers import PackedDict

# Observations per forward pass without gradients over a whole rollout or store (PPG's auxiliary phase recomputing
# values and pi_old, PPO revaluing a stale rollout in overlapped collection), so that such a pass holds one chunk's
# activations, not the whole batch's.
FORWARD_CHUNK = 16384


def chunk_rows(samples_per_row: int = 1) -> int:
    """Returns the rows per forward chunk: as many rows of ``samples_per_row`` samples each (a recurrent pass: one
    step of every env) as :data:`FORWARD_CHUNK` holds, and at least one."""
    return max(1, FORWARD_CHUNK // samples_per_row)


def in_chunks(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Applies ``fn`` to ``x``'s rows, at most :data:`FORWARD_CHUNK` at a time, and concatenates the results: a
    forward pass without gradients whose activations are one chunk's, not the whole batch's."""
    return torch.cat([fn(part) for part in x.split(chunk_rows())])


class RolloutStore:
    """Holds the rollouts of the current policy phase, in the order they were collected."""

    def __init__(self) -> None:
        self.rollouts: list[dict[str, Tensor]] = []
        self.layout = Rollout.layout()  # of the rollouts added last (a subclass may declare more fields)

    def __len__(self) -> int:
        return len(self.rollouts)

    def add(self, rollout: Rollout) -> None:
        self.rollouts.append(rollout.stored())
        self.layout = type(rollout).layout()

    def time_fields(self) -> tuple[str, ...]:
        """Names the stored time-major fields (``[T, N, ...]``), which the auxiliary phase's sequences carry."""
        names = self.rollouts[0] if self.rollouts else ()
        return tuple(name for name in names if self.layout.get(name) == TIME)

    def clear(self) -> None:
        self.rollouts = []

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for r in self.rollouts for t in r.values())

    def state_dict(self) -> list[dict[str, Tensor]]:
        return [{key: t.cpu() for key, t in r.items()} for r in self.rollouts]

    def load_state_dict(self, state: list[dict[str, Tensor]]) -> None:
        self.rollouts = [dict(r) for r in state]

    @staticmethod
    def store_bytes(n_pi: int, num_envs: int, num_steps: int, observation_space: gym.Space, state_size: int = 0) -> int:
        """Computes the bytes of ``n_pi`` stored rollouts (see the module docstring)."""
        obs = _obs_bytes(observation_space)
        return n_pi * (num_envs * num_steps * (obs + 4 + 4) + num_envs * (obs + 1 + 4 * state_size))

    @classmethod
    def estimate_bytes(cls, n_pi: int, num_envs: int, num_steps: int, observation_space: gym.Space,
                       dist_params: int, aux_minibatches: int, state_size: int = 0,
                       activations: tuple[int, int] = (0, 0)) -> int:
        """Estimates the peak bytes of the store and its auxiliary phase (see the module docstring); ``activations``
        is ``(a, m)``: the encoders' activation elements per sample, in all and in the largest layer."""
        samples = n_pi * num_envs * num_steps
        elements = _obs_elements(observation_space)
        a, m = activations
        minibatch = -(-samples // aux_minibatches) * (_obs_bytes(observation_space) + 4 * elements + 4 * a)
        chunk = min(FORWARD_CHUNK, num_envs * num_steps) * 4 * (elements + 2 * m)
        return (2 * cls.store_bytes(n_pi, num_envs, num_steps, observation_space, state_size) + samples * (4 + 4 * dist_params)
                + max(minibatch, chunk))


def _obs_elements(space: gym.Space) -> int:
    """Counts the elements of one observation as the networks see it (a packed Dict: its keys')."""
    space = getattr(space, "dict_space", space)
    if isinstance(space, gym.spaces.Dict):
        return sum(_obs_elements(sub) for sub in space.spaces.values())
    return int(np.prod(space.shape or (1,)))


def _obs_bytes(space: gym.Space) -> int:
    """Returns the bytes of one stored observation; a Dict is stored packed (:class:`~lit_rl.envs.wrappers.PackedDict`,
    its keys aligned), so its bytes are the packed vector's."""
    if isinstance(space, gym.spaces.Dict):
        space = PackedDict(space)
    return int(np.prod(space.shape or (1,))) * np.dtype(space.dtype or np.int64).itemsize


def available_memory(device: torch.device) -> int:
    """Returns the free bytes on ``device``: free GPU memory, or the host's available RAM."""

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"

