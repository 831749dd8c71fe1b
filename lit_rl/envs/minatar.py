"""Provides MinAtar games as one native gymnasium vector env: ``minatar:breakout`` in ``data.env_id`` (extra
``lit-rl[minatar]``).

MinAtar (Young & Tian 2019) plays five miniature Atari games on a 10x10 grid: ``asterix``, ``breakout``,
``freeway``, ``seaquest`` and ``space_invaders``. Importing this module registers ``lit_rl/minatar-<game>-v0`` for
each, with a vector entry point only: :class:`MinAtarVectorEnv` steps the whole batch of ``minatar.Environment``
games in this process, with no per-env wrapper or vector-env machinery between them.

Observations are uint8 ``[10, 10, C]`` frames, channels last, 0 or 1 (MinAtar's own are bool): breakout 4,
asterix 4, freeway 7, space_invaders 6, seaquest 10 channels. ``model.image_layout`` auto reads 10x10xC frames as
channels last, but Seaquest's 10x10x10 cube, which it refuses: set ``model.image_layout: channels_last``.
Actions: MinAtar's six (``minimal_action_set: true`` gives each game's own subset, as gymnax does).

Options (``data.env_kwargs``): ``sticky_action_prob`` (default 0.1, the MinAtar paper's: with that probability an
env repeats its previous action), ``difficulty_ramping`` (default true, the paper's), ``minimal_action_set``
(default false) and ``max_episode_steps`` (default 10,000: an episode that reaches it is truncated, not
terminated; MinAtar itself ends only Freeway, at 2,500 steps, which counts as a termination, as in the paper).
"""

from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space

from lit_rl.envs import vector_only
from lit_rl.errors import ConfigError

GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
DEFAULTS: dict[str, Any] = {"sticky_action_prob": 0.1, "difficulty_ramping": True, "minimal_action_set": False,
                            "max_episode_steps": 10_000}


def gym_id(game: str) -> str:
    """Returns the gymnasium id registered for ``game`` (``space_invaders``; ``SpaceInvaders`` works too)."""
    by_key = {g.replace("_", ""): g for g in GAMES}
    name = by_key.get(game.replace("_", "").replace("-", "").lower())
    if name is None:
        raise ConfigError(f"data.env_id: 'minatar:{game}' names no MinAtar game; the games are {', '.join(GAMES)}.")
    return f"lit_rl/minatar-{name}-v0"


class MinAtarVectorEnv(gym.vector.VectorEnv):
    """Runs ``num_envs`` games of one MinAtar game, stepped one after another in this process.

    gymnasium's next-step autoreset: the step after an env's episode ends resets that env (its action is not
    played, its reward is 0 and neither flag is set). ``reset(seed=s)`` seeds env ``i`` with ``s + i`` (the game
    and its sticky actions draw from that one stream, as ``minatar.Environment.seed`` sets them); an unseeded
    first reset seeds them from ``np_random``. Terminations are the game's; ``max_episode_steps`` truncates.
    A new episode starts with no sticky action to repeat (``minatar.Environment`` would repeat the previous
    episode's last one). ``infos`` are always empty. ``render`` is not supported.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, game: str, **options: Any) -> None:
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"data.env_kwargs: unknown MinAtar option(s) {unknown}; the options are "
                              f"{', '.join(DEFAULTS)} (seeds come from reset, i.e. data.seed).")
        options = {**DEFAULTS, **options}
        if not 0.0 <= options["sticky_action_prob"] <= 1.0:
            raise ConfigError(f"data.env_kwargs.sticky_action_prob: must lie in [0, 1], got "
                              f"{options['sticky_action_prob']}.")
        limit = options["max_episode_steps"]
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"data.env_kwargs.max_episode_steps: a positive integer or null (no limit), got {limit!r}.")
        from minatar import Environment

        self.num_envs = num_envs
        self.game = game
        self.options = options
        self.games = [Environment(game, sticky_action_prob=float(options["sticky_action_prob"]),
                                  difficulty_ramping=bool(options["difficulty_ramping"])) for _ in range(num_envs)]
        self.actions = np.asarray(self.games[0].minimal_action_set() if options["minimal_action_set"] else range(6))
        self.max_episode_steps = limit
        self.single_observation_space = gym.spaces.Box(0, 1, tuple(self.games[0].state_shape()), np.uint8)
        self.single_action_space = gym.spaces.Discrete(len(self.actions))
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._obs = np.zeros(self.observation_space.shape, np.uint8)
        self._lengths = np.zeros(num_envs, np.int64)
        self._ended = np.zeros(num_envs, bool)
        self._seeded = False

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None) -> tuple[np.ndarray, dict]:
        """Starts new episodes in every env; ``seed`` seeds env ``i`` with ``seed + i``. Takes no ``options``."""
        if options:
            raise ValueError(f"MinAtarVectorEnv.reset takes no options (every env starts a new episode): {options}")
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            first = int(seed) if seed is not None else int(self.np_random.integers(2**31))
            for i, g in enumerate(self.games):
                g.seed((first + i) % 2**32)
            self._seeded = True
        for i, g in enumerate(self.games):
            g.reset()
            g.last_action = 0
            self._obs[i] = g.state()
        self._lengths[:] = 0
        self._ended[:] = False
        return self._obs.copy(), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Steps every env once; an env whose episode ended on the previous step resets instead."""

        actions = np.asarray(actions)
        n = len(self.actions)
        if (actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer)
                or actions.min() < 0 or actions.max() >= n):
            raise ValueError(f"actions must be integers in [0, {n}) of shape ({self.num_envs},), got {actions}")
        rewards = np.zeros(self.num_envs, np.float64)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        for i, g in enumerate(self.games):
            if self._ended[i]:
                g.reset()
                g.last_action = 0
                self._lengths[i] = 0
            else:
                rewards[i], terminated[i] = g.act(int(self.actions[actions[i]]))
                self._lengths[i] += 1
            self._obs[i] = g.state()
        if self.max_episode_steps is not None:
            truncated = ~terminated & (self._lengths >= self.max_episode_steps)
        self._ended = terminated | truncated
        return self._obs.copy(), rewards, terminated, truncated, {}


for _game in GAMES:
    gym.register(gym_id(_game), entry_point=vector_only("lit_rl's MinAtar", "one process steps the whole batch"),
                 vector_entry_point=MinAtarVectorEnv, kwargs={"game": _game})
