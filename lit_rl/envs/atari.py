"""Provides Atari games with the usual PPO preprocessing: ``atari:Breakout`` in ``data.env_id`` (extra
``lit-rl[atari]``).

Importing this module registers ``lit_rl/atari-<Game>-v0`` for each single-player ROM that ale-py ships, named as
in ``ALE/<Game>-v5`` (:data:`GAMES`). A step plays ``frame_skip`` emulator frames and max-pools the last two;
frames are grayscale, area-resized to ``screen_size`` and stacked, so observations are uint8
``[stack, screen_size, screen_size]`` (``[4, 84, 84]``), a new episode's first frame repeated to fill the stack.
Resets play random no-ops (``gymnasium``: 1 to ``noop_max``, ``ale_vector``: 0 to ``noop_max - 1``) and never
press FIRE. Rewards are float64, not clipped (``data.clip_reward: 1`` clips them as CleanRL does). Actions are the
game's minimal set unless ``full_action_space``. Every backend has these spaces and gymnasium's next-step
autoreset, and ``reset(seed=s)`` seeds env ``i`` with ``s + i``:

- ``ale_vector`` (default, where ale-py was built with it): ale-py's ``AtariVectorEnv``, the envs stepped by C++
  threads. Without sticky actions and no-ops it plays the gymnasium backend's frames exactly, but for a few
  pixels of a truncated episode's last one.
- ``envpool``: envpool's batched envs (``terminal_on_life_loss`` is refused: envpool plays on after a lost life).
  Its grayscale differs by a few levels at some pixels, and its emulation drifts from ale-py's.
- ``gymnasium``: gymnasium's ``AtariPreprocessing`` and ``FrameStackObservation`` on one ``AtariEnv`` per env, in
  a ``SyncVectorEnv``. ``data.vectorization_mode`` ``sync`` / ``async`` always build this per-env pipeline.

Options (``data.env_kwargs``), besides ``backend``: see :data:`DEFAULTS`. ``repeat_action_probability`` is 0.25,
sticky actions as in ALE v5 and Machado et al. (2018); 0 matches CleanRL's ``ppo_atari.py`` (``NoFrameskip-v4``).
``max_num_frames_per_episode`` (ALE v5's 108000, 30 minutes of play) truncates an episode after
``ceil(frames / frame_skip)`` steps. ``terminal_on_life_loss`` ends the episode at a lost life and starts a new
game (as ALE and gymnasium do, unlike CleanRL's ``EpisodicLifeEnv``), so episode statistics then count one life.
"""

import contextlib
import difflib
import functools
import io
from typing import Any, Optional

import ale_py
import gymnasium as gym
import numpy as np
from ale_py import AtariEnv, AtariVectorEnv, roms
from ale_py.registration import rom_id_to_name
from gymnasium.vector.utils import batch_space
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TimeLimit

from lit_rl.errors import ConfigError

MULTIPLAYER_ONLY = {"combat", "joust", "maze_craze", "warlords"}  # left out of ALE v5 as well
GAMES = {rom_id_to_name(rom): rom for rom in sorted(roms.get_all_rom_ids()) if rom not in MULTIPLAYER_ONLY}
BACKENDS = ("ale_vector", "envpool", "gymnasium")
NATIVE = hasattr(ale_py, "ALEVectorInterface")  # ale-py's vector env is an optional part of its build
DEFAULTS: dict[str, Any] = {"frame_skip": 4, "noop_max": 30, "screen_size": 84, "stack": 4,
                            "repeat_action_probability": 0.25, "terminal_on_life_loss": False,
                            "full_action_space": False, "max_num_frames_per_episode": 108_000}
LIST_GAMES = "python -c \"import lit_rl.envs.atari as a; print(*a.GAMES)\""
_BY_KEY = {name.lower(): name for name in GAMES}


def gym_id(game: str) -> str:
    """Returns the gymnasium id registered for ``game`` (``Breakout``; ``breakout`` and ``ms_pacman`` work too)."""
    name = _BY_KEY.get(game.replace("_", "").lower())
    if name is None:
        close = difflib.get_close_matches(game, GAMES, n=3, cutoff=0.6)
        raise ConfigError(f"data.env_id: 'atari:{game}' names no Atari game of ale-py"
                          f"{'; did you mean ' + ' or '.join(close) + '?' if close else '.'} "
                          f"The games: {LIST_GAMES}")
    return f"lit_rl/atari-{name}-v0"


def _options(backend: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Returns ``DEFAULTS`` updated with ``kwargs``, or raises a ConfigError naming an unknown backend or option."""
    if backend not in BACKENDS:
        raise ConfigError(f"data.env_kwargs.backend: {backend!r} is not one of {', '.join(BACKENDS)}.")
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"data.env_kwargs: unknown Atari option(s) {unknown}; the options are backend, "
                          f"{', '.join(DEFAULTS)} (episode length: max_num_frames_per_episode, in emulator frames).")
    return {**DEFAULTS, **kwargs}


def _max_steps(options: dict[str, Any]) -> int:
    return -(-options["max_num_frames_per_episode"] // options["frame_skip"])


def make_env(game: str, backend: str = "gymnasium", render_mode: Optional[str] = None, **kwargs: Any) -> gym.Env:
    """Builds one env of the per-env pipeline (the ``gymnasium`` backend; ``sync`` / ``async`` use it for any
    backend)."""
    o = _options(backend, kwargs)
    env = AtariEnv(game, frameskip=1, repeat_action_probability=o["repeat_action_probability"],
                   full_action_space=o["full_action_space"], render_mode=render_mode)
    env = AtariPreprocessing(env, noop_max=o["noop_max"], frame_skip=o["frame_skip"], screen_size=o["screen_size"],
                             terminal_on_life_loss=o["terminal_on_life_loss"])
    return TimeLimit(FrameStackObservation(env, o["stack"]), _max_steps(o))


def make_vector(num_envs: int, game: str, backend: Optional[str] = None, **kwargs: Any) -> gym.vector.VectorEnv:
    """Builds ``num_envs`` envs of ``game`` on ``backend`` (the vector entry point; default ``ale_vector`` where
    this ale-py build has it, else ``gymnasium``)."""
    backend = backend or ("ale_vector" if NATIVE else "gymnasium")
    o = _options(backend, kwargs)
    if backend == "gymnasium":
        return gym.vector.SyncVectorEnv([functools.partial(make_env, game, **kwargs)] * num_envs)
    if backend == "envpool":
        return EnvPoolVectorEnv(num_envs, game, o)
    if not NATIVE:
        raise ConfigError(f"data.env_kwargs.backend: this build of ale-py {ale_py.__version__} has no vector "
                          "interface; use backend 'gymnasium'.")
    envs = AtariVectorEnv(game, num_envs, frameskip=o["frame_skip"], noop_max=o["noop_max"], stack_num=o["stack"],
                          img_height=o["screen_size"], img_width=o["screen_size"],
                          repeat_action_probability=o["repeat_action_probability"],
                          full_action_space=o["full_action_space"], episodic_life=o["terminal_on_life_loss"],
                          max_num_frames_per_episode=o["max_num_frames_per_episode"], reward_clipping=False,
                          use_fire_reset=False, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    return RepeatFirstFrame(envs)


class RepeatFirstFrame(gym.vector.VectorWrapper):
    """Makes ale-py's vector env step as the other backends do: the stack of a new episode repeats its first
    frame (ale-py pads it with zeros), and rewards are float64."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        self.age = np.zeros(self.num_envs, np.int64)  # steps since each env's episode began
        self.ended = np.zeros(self.num_envs, bool)

    def _fill(self, obs: np.ndarray) -> np.ndarray:
        stack = obs.shape[1]
        for i in np.flatnonzero(self.age < stack - 1):
            pad = stack - 1 - self.age[i]
            obs[i, :pad] = obs[i, pad]
        return obs

    def reset(self, *, seed: Any = None, options: Optional[dict[str, Any]] = None) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        mask = (options or {}).get("reset_mask", np.ones(self.num_envs, bool))
        self.age[mask], self.ended[mask] = 0, False
        return self._fill(obs), info

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(actions, np.int64))
        self.age = np.where(self.ended, 0, self.age + 1)
        self.ended = terminated | truncated
        return self._fill(obs), reward.astype(np.float64), terminated, truncated, info


class EnvPoolVectorEnv(gym.vector.VectorEnv):
    """Wraps envpool's batched Atari envs, with this module's preprocessing, as a gymnasium VectorEnv (next-step
    autoreset, as envpool's own). envpool seeds only when it builds its envs, so ``reset(seed=s)`` rebuilds
    them; an unseeded first reset draws ``s`` from ``np_random``. ``infos`` hold ``lives``."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, game: str, options: dict[str, Any]) -> None:
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # envpool imports the old gym, which prints a notice
                import envpool
        except Exception as err:
            raise ConfigError(f"data.env_kwargs.backend: envpool does not import here ({type(err).__name__}: "
                              f"{err}); use backend 'ale_vector' or 'gymnasium'.") from None
        if options["terminal_on_life_loss"]:
            raise ConfigError("data.env_kwargs.terminal_on_life_loss: envpool plays on after a lost life where the "
                              "other backends start a new game; use backend 'ale_vector' or 'gymnasium'.")
        if options["noop_max"] < 1:
            raise ConfigError("data.env_kwargs.noop_max: envpool crashes with noop_max 0; use at least 1 (it then "
                              "plays no no-ops), or backend 'ale_vector' or 'gymnasium'.")
        task = f"{rom_id_to_name(game)}-v5"
        if task not in envpool.list_all_envs():
            raise ConfigError(f"data.env_id: envpool {envpool.__version__} has no {task}; use backend 'ale_vector'.")
        size = options["screen_size"]
        self.config = dict(task_id=task, num_envs=num_envs, batch_size=num_envs, max_episode_steps=_max_steps(options),
                           stack_num=options["stack"], frame_skip=options["frame_skip"], noop_max=options["noop_max"],
                           img_height=size, img_width=size, gray_scale=True, use_inter_area_resize=True,
                           repeat_action_probability=options["repeat_action_probability"],
                           full_action_space=options["full_action_space"], episodic_life=False, reward_clip=False,
                           use_fire_reset=False)
        self._make = envpool.make
        spec = envpool.make_spec(**self.config)
        self.num_envs = num_envs
        self.single_observation_space = spec.gymnasium_observation_space
        self.single_action_space = spec.gymnasium_action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.pool: Any = None

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None) -> tuple[np.ndarray, dict]:
        """Starts new episodes in every env; ``seed`` rebuilds the envs with env ``i`` seeded ``seed + i``."""
        super().reset(seed=seed)
        if seed is not None or self.pool is None:
            first = int(seed) if seed is not None else int(self.np_random.integers(2**31 - self.num_envs))
            self.close_extras()
            self.pool = self._make(env_type="gymnasium", seed=first,
                                   env_seed=list(range(first, first + self.num_envs)), **self.config)
        obs, info = self.pool.reset()
        return obs, {"lives": info["lives"]}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Steps every env once; one whose episode ended last step starts its next episode instead."""

        obs, reward, terminated, truncated, info = self.pool.step(np.asarray(actions, np.int32))
        return obs, reward.astype(np.float64), terminated, truncated, {"lives": info["lives"]}

    def close_extras(self, **kwargs: Any) -> None:
        """Frees envpool's envs."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None


for _name, _rom in GAMES.items():
    if gym_id(_name) not in gym.registry:
        gym.register(gym_id(_name), entry_point=make_env, vector_entry_point=make_vector, kwargs={"game": _rom})
