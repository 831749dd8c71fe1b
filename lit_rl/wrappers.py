"""Gymnasium wrappers lit_rl adds to an env from its config."""

from typing import Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space
from gymnasium.wrappers import TransformObservation
from gymnasium.wrappers import vector as vw

from lit_rl.errors import ConfigError


class MaskObservation(TransformObservation):
    """Makes a task partially observable: the components ``hide`` of a 1-D Box observation are removed.

    CartPole without velocities (``hide=[1, 3]``) is the usual example: position and angle remain, so a
    policy must infer the velocities from the history it has seen. For vector envs see
    :func:`mask_vector_observation` (what ``data.hide_observation`` applies).
    """

    def __init__(self, env: gym.Env, hide: Sequence[int]) -> None:
        space = env.observation_space
        keep = keep_indices(space, hide)
        assert isinstance(space, gym.spaces.Box)
        masked = gym.spaces.Box(space.low[keep], space.high[keep], dtype=space.dtype)
        super().__init__(env, lambda obs: obs[..., keep], masked)
        self.keep = keep


def keep_indices(space: gym.Space, hide: Sequence[int]) -> np.ndarray:
    """The components of ``space`` that remain once ``hide`` is removed; a ConfigError naming the key."""
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ConfigError(f"data.hide_observation: needs a 1-D Box observation space, the env has {space}. "
                          "Remove data.hide_observation, or pick an env with flat vector observations.")
    size = space.shape[0]
    bad = [i for i in hide if not -size <= i < size]
    hidden = {i % size for i in hide if -size <= i < size}
    if bad or not hide or len(hidden) == size:
        raise ConfigError(f"data.hide_observation: {list(hide)} must name some, not all, of the observation's "
                          f"components 0..{size - 1}.")
    return np.array([i for i in range(size) if i not in hidden])


def mask_vector_observation(envs: gym.vector.VectorEnv, hide: Sequence[int]) -> gym.vector.VectorEnv:
    """:class:`MaskObservation` for a vector env, on the whole batch at once (gymnasium's vector
    ``TransformObservation``), so it works on native vector envs too."""
    space = envs.single_observation_space
    keep = keep_indices(space, hide)
    assert isinstance(space, gym.spaces.Box)
    masked = gym.spaces.Box(space.low[keep], space.high[keep], dtype=space.dtype)
    return vw.TransformObservation(envs, lambda obs: obs[..., keep], batch_space(masked, envs.num_envs), masked)
