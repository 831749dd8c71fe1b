"""Gymnasium wrappers lit_rl adds to an env from its config."""

from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from lit_rl.errors import ConfigError


class MaskObservation(gym.ObservationWrapper):
    """Makes a task partially observable: the components ``hide`` of a 1-D Box observation are removed.

    CartPole without velocities (``hide=[1, 3]``) is the usual example: position and angle remain, so a
    policy must infer the velocities from the history it has seen. On a vector env the datamodule applies
    it through ``gymnasium.wrappers.vector.VectorizeTransformObservation`` (``data.hide_observation``).
    """

    def __init__(self, env: gym.Env, hide: Sequence[int]) -> None:
        super().__init__(env)
        space = env.observation_space
        self.keep = keep_indices(space, hide)
        assert isinstance(space, gym.spaces.Box)
        self.observation_space = gym.spaces.Box(space.low[self.keep], space.high[self.keep], dtype=space.dtype)

    def observation(self, observation: Any) -> Any:
        return observation[..., self.keep]


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
