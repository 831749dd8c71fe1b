"""Defines the gymnasium wrappers lit_rl adds to an env from its config."""

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector.utils import batch_space
from gymnasium.wrappers import TransformObservation
from gymnasium.wrappers import vector as vw
from gymnasium.wrappers.utils import RunningMeanStd
from torch import Tensor

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


def keep_indices(space: gym.Space, hide: Sequence[int]) -> np.ndarray:
    """Returns the components of ``space`` that remain once ``hide`` is removed; a ConfigError names the key."""
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
    """Applies :class:`MaskObservation` to a vector env, on the whole batch at once (gymnasium's vector
    ``TransformObservation``), so it works on native vector envs too."""
    space = envs.single_observation_space
    keep = keep_indices(space, hide)
    assert isinstance(space, gym.spaces.Box)
    masked = gym.spaces.Box(space.low[keep], space.high[keep], dtype=space.dtype)
    return vw.TransformObservation(envs, lambda obs: obs[..., keep], batch_space(masked, envs.num_envs), masked)


class NormalizeObservation(vw.NormalizeObservation):
    """Applies gymnasium's observation normalization with the run's statistics ``obs_rms``, which it is handed
    and never owns: their ``update()`` records what passes through, and their owner folds it in
    (:class:`lit_rl.data.normalization.Normalization`)."""

    def __init__(self, env: gym.vector.VectorEnv, obs_rms: RunningMeanStd, epsilon: float = 1e-8) -> None:
        super().__init__(env, epsilon)
        given, own = obs_rms.mean, self.obs_rms.mean  # gymnasium's own statistics give the shape and dtype
        if given.shape != own.shape or given.dtype != own.dtype:
            raise ValueError(f"NormalizeObservation: statistics of {given.shape} {given.dtype} for observations "
                             f"that need {own.shape} {own.dtype}")
        self.obs_rms = obs_rms


class NormalizeReward(vw.NormalizeReward):
    """Applies gymnasium's reward normalization with the run's statistics ``return_rms`` (handed to it, as to
    :class:`NormalizeObservation`), and resets the discounted return it tracks at the end of every episode,
    truncated ones included (as SB3's VecNormalize does). gymnasium's resets it on termination only, so on
    time-limited tasks the return runs on across episodes and the reward scale drifts for the whole run."""

    def __init__(self, env: gym.vector.VectorEnv, return_rms: RunningMeanStd, gamma: float = 0.99,
                 epsilon: float = 1e-8) -> None:
        super().__init__(env, gamma, epsilon)
        self.return_rms = return_rms

    def step(self, actions: Any) -> Any:
        obs, reward, terminated, truncated, info = super().step(actions)
        self.accumulated_reward[np.logical_or(terminated, truncated)] = 0
        return obs, reward, terminated, truncated, info


def clip_vector_actions(envs: gym.vector.VectorEnv) -> gym.vector.VectorEnv:
    """Clips each batch of Box actions to the action space's bounds, as gymnasium's vector ``ClipAction`` does
    (the same values, and the same unbounded action space above it), in one ``np.clip`` of the batch: that
    wrapper clips env by env, with a copy of each, about 15 us a step for 4 envs against 2."""
    space = envs.single_action_space
    low, high = space.low, space.high
    unbounded = gym.spaces.Box(-np.inf, np.inf, space.shape, space.dtype)
    return vw.TransformAction(envs, lambda actions: np.clip(actions, low, high), single_action_space=unbounded)


class PackedDict(gym.spaces.Box):
    """Packs a Dict observation space as one ``uint8`` vector per observation: each key's bytes in turn, in the Dict's
    key order, each key starting at a multiple of its item size and the vector padded to a multiple of 8 bytes (so
    every row and every key of it can be viewed as its dtype in place). The rollouts, PPG's store, the gathers
    between processes and the collectors' shared buffers then carry a Dict observation as they carry any tensor,
    at its byte size (frames stay bytes, floats stay floats); :meth:`unpack` gives the keys back on the device
    (:class:`lit_rl.nets.DictEncoder`)."""

    def __init__(self, space: gym.spaces.Dict) -> None:
        self.dict_space = space
        self.fields: list[tuple[str, tuple[int, ...], np.dtype, int, int]] = []  # key, shape, dtype, start, end
        end = 0
        for key, sub in space.spaces.items():
            if not isinstance(sub, (gym.spaces.Box, gym.spaces.Discrete)):
                raise ConfigError(f"data.env_id: the Dict observation's key {key!r} is a {type(sub).__name__}; "
                                  "each key must be a Box or Discrete space (flatten it with a gymnasium wrapper).")
            dtype = np.dtype(sub.dtype)
            start = -(-end // dtype.itemsize) * dtype.itemsize
            end = start + int(np.prod(sub.shape or ())) * dtype.itemsize
            self.fields.append((key, tuple(sub.shape or ()), dtype, start, end))
        super().__init__(0, 255, (-(-end // 8) * 8,), np.uint8)

    def __repr__(self) -> str:
        return f"PackedDict({self.dict_space})"

    def pack(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Packs a batch of Dict observations (``{key: [n, ...]}``) as ``[n, bytes]``."""
        n = len(next(iter(obs.values())))
        packed = np.zeros((n, self.shape[0]), np.uint8)
        for key, _, dtype, start, end in self.fields:
            packed[:, start:end] = np.ascontiguousarray(obs[key], dtype=dtype).reshape(n, -1).view(np.uint8)
        return packed

    def unpack(self, packed: Tensor) -> dict[str, Tensor]:
        """Unpacks ``[B, bytes]`` back to ``{key: [B, ...]}`` in each key's dtype."""
        return {key: packed[:, start:end].view(torch.from_numpy(np.zeros(0, dtype)).dtype).reshape(len(packed), *shape)
                for key, shape, dtype, start, end in self.fields}


def pack_dict_observation(envs: gym.vector.VectorEnv) -> gym.vector.VectorEnv:
    """Turns a Dict-observation vector env into one of :class:`PackedDict` observations (any other env as it is)."""
    space = envs.single_observation_space
    if not isinstance(space, gym.spaces.Dict):
        return envs
    packed = PackedDict(space)
    return vw.TransformObservation(envs, packed.pack, batch_space(packed, envs.num_envs), packed)
