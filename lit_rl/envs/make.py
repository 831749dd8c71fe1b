"""Builds a run's vector envs from an :class:`EnvSpec`, alike in the datamodule and in every collector process."""

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import vector as vw
from gymnasium.wrappers.utils import RunningMeanStd

from lit_rl.envs import check_vectorization, resolve_env_id
from lit_rl.envs.wrappers import (NormalizeObservation, NormalizeReward, clip_vector_actions, mask_vector_observation,
                                  pack_dict_observation)
from lit_rl.errors import ConfigError

VectorizationMode = Literal["auto", "sync", "async", "vector_entry_point"]
# The run's normalization statistics of a name, shape and dtype (lit_rl.data.normalization.Normalization.statistics).
Statistics = Callable[[str, tuple[int, ...], Any], RunningMeanStd]


def check_env_id(env_id: str) -> gym.envs.registration.EnvSpec:
    """Looks up the registered spec of ``env_id`` (``module:Name-v0`` imports ``module`` first; a family's game such
    as ``procgen:starpilot`` is looked up in :mod:`lit_rl.envs`); a ConfigError where there is none."""
    module, _, name = resolve_env_id(env_id).rpartition(":")
    try:
        if module:
            importlib.import_module(module)
        return gym.spec(name)
    except (gym.error.Error, ImportError) as err:
        raise ConfigError(
            f"data.env_id: {env_id!r} is not a registered gymnasium environment ({err}). "
            "Use a registered id such as 'CartPole-v1', or 'my_package.my_module:MyEnv-v0' to import the "
            "module that registers it."
        ) from None


@dataclass
class EnvSpec:
    """Describes a run's envs by the ``data.*`` keys of the same names (:class:`lit_rl.data.RolloutDataModule`
    documents them) and checks them when made; collector processes build their envs from a pickled copy."""

    env_id: str = "CartPole-v1"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    vectorization_mode: VectorizationMode = "auto"
    hide_observation: Optional[list[int]] = None
    normalize_observation: bool = False
    normalize_reward: bool = False
    clip_observation: Optional[float] = None
    clip_reward: Optional[float] = None
    gamma: float = 0.99
    record_video: bool = False

    def __post_init__(self) -> None:
        self.env_kwargs = dict(self.env_kwargs or {})
        check_env_id(self.env_id)
        check_vectorization(self.env_id, self.vectorization_mode, self.record_video)
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"data.gamma: must lie in (0, 1], got {self.gamma}.")
        for key, value in (("clip_observation", self.clip_observation), ("clip_reward", self.clip_reward)):
            if value is not None and value <= 0:
                raise ConfigError(f"data.{key}: must be positive or null, got {value}.")
        if self.record_video:
            try:
                import moviepy  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "data.record_video: needs moviepy; install it with `pip install 'lit-rl[video]'`, "
                    "or set data.record_video=false."
                ) from None

    @property
    def normalized(self) -> tuple[str, ...]:
        """Names the normalization statistics these envs use (gymnasium's wrappers' names for them)."""
        return ("obs_rms",) * self.normalize_observation + ("return_rms",) * self.normalize_reward


def make_envs(spec: EnvSpec, num_envs: int, training: bool, statistics: Optional[Statistics] = None,
              video_folder: Optional[str] = None) -> gym.vector.VectorEnv:
    """Builds ``num_envs`` of ``spec``'s envs, wrapped as it asks; nothing is reset or stepped here.

    The normalization wrappers apply ``statistics(name, shape, dtype)``, the run's statistics, and never own them.
    ``training`` envs record their observations' and returns' moments into them and have their rewards normalized;
    evaluation envs only apply the observation statistics. ``video_folder``: record every episode of the first
    env there (the envs are then sync).
    """
    if spec.normalized and statistics is None:
        raise ValueError(f"make_envs: {spec.env_id!r} normalizes {spec.normalized} and needs their statistics")
    mode = None if spec.vectorization_mode == "auto" else spec.vectorization_mode
    kwargs = dict(spec.env_kwargs)
    if video_folder is not None:
        kwargs["render_mode"] = "rgb_array"
        mode = "sync"
    try:
        envs = gym.make_vec(resolve_env_id(spec.env_id), num_envs=num_envs, vectorization_mode=mode, **kwargs)
    except (gym.error.Error, TypeError, ValueError) as err:
        raise ConfigError(
            f"data.env_id / data.env_kwargs / data.vectorization_mode: could not build {num_envs} "
            f"{spec.env_id!r} envs with mode {spec.vectorization_mode!r} and kwargs {kwargs}: {err}"
        ) from None
    space = envs.single_observation_space
    if (spec.normalize_observation or spec.clip_observation is not None) and not (
            isinstance(space, gym.spaces.Box) and np.issubdtype(space.dtype, np.floating)):
        key = "normalize_observation" if spec.normalize_observation else "clip_observation"
        envs.close()
        raise ConfigError(
            f"data.{key}: normalizes float Box observations; {spec.env_id!r} gives {space}. Images stay uint8 and "
            f"are scaled to [0, 1] by the CNN encoder; set data.{key} to {'false' if key.startswith('norm') else 'null'}.")
    if spec.hide_observation is not None:
        envs = mask_vector_observation(envs, spec.hide_observation)
    envs = pack_dict_observation(envs)
    if video_folder is not None:
        envs = vw.RecordVideo(envs, video_folder, episode_trigger=lambda _: True, name_prefix="eval")
    envs = vw.RecordEpisodeStatistics(envs)
    if isinstance(envs.single_action_space, gym.spaces.Box):
        envs = clip_vector_actions(envs)
    if spec.normalize_observation:
        assert statistics is not None
        # gymnasium's wrapper gives float32 observations and keeps its statistics in that dtype.
        envs = NormalizeObservation(envs, statistics("obs_rms", envs.single_observation_space.shape, np.float32))
        envs.update_running_mean = training
    if spec.clip_observation is not None:
        c = float(spec.clip_observation)
        envs = vw.TransformObservation(envs, lambda obs: np.clip(obs, -c, c))
    if training and spec.normalize_reward:
        assert statistics is not None
        envs = NormalizeReward(envs, statistics("return_rms", (), np.float64), gamma=spec.gamma)
    if training and spec.clip_reward is not None:
        c = float(spec.clip_reward)
        envs = vw.ClipReward(envs, -c, c)
    return envs
