"""Provides Procgen games as native gymnasium vector envs: ``procgen:starpilot`` in ``data.env_id`` (extra
``lit-rl[procgen]``).

Importing this module registers ``lit_rl/procgen-<game>-v0`` for each of the 16 games, with a vector entry point
only: procgen steps its envs as one batch in C++ (:class:`ProcgenVectorEnv`), so ``vectorization_mode`` must be
``auto`` or ``vector_entry_point``. ``data.env_kwargs`` go to ``procgen.ProcgenGym3Env``: ``distribution_mode``
(default ``easy``), ``num_levels`` (0: unlimited), ``start_level`` and its rendering options.
"""

import contextlib
import io
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space

from lit_rl.envs import vector_only
from lit_rl.errors import ConfigError

GAMES = ("bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot", "heist",
         "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot")
OPTIONS = ("distribution_mode", "num_levels", "start_level", "use_sequential_levels", "center_agent",
           "use_backgrounds", "use_monochrome_assets", "restrict_themes", "use_generated_assets", "paint_vel_info",
           "num_threads", "debug_mode")
MODES = ("easy", "hard", "extreme", "memory", "exploration")


def gym_id(game: str) -> str:
    """Returns the gymnasium id registered for ``game``, or raises a ConfigError listing the games."""
    if game not in GAMES:
        raise ConfigError(f"data.env_id: 'procgen:{game}' names no Procgen game; the games are {', '.join(GAMES)}.")
    return f"lit_rl/procgen-{game}-v0"


class ProcgenVectorEnv(gym.vector.VectorEnv):
    """Runs ``num_envs`` envs of one Procgen game, stepped as one ``procgen.ProcgenGym3Env`` batch.

    Procgen resets an env in the step its episode ends and never shows the episode's last frame, so the env
    uses same-step autoreset: for such an env ``step`` returns the last step's reward, ``terminated=True`` and
    the first observation of the next episode. Every episode end is a termination, time-limit ends included
    (procgen does not tell them apart; the PPG paper and CleanRL treat them alike), so ``truncated`` is never set.

    Procgen seeds only when it is built: ``reset(seed=s)`` rebuilds the batch with ``rand_seed=s`` (envs of the
    batch get different levels drawn from it), an unseeded reset after steps rebuilds it with a seed drawn
    from ``np_random``. ``render`` is not supported. ``infos`` are always empty.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int, game: str, distribution_mode: str = "easy", **options: Any) -> None:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"data.env_kwargs: unknown Procgen option(s) {unknown}; the options are "
                              f"{', '.join(OPTIONS)} (seeds come from reset, i.e. data.seed).")
        if distribution_mode not in MODES:
            raise ConfigError(f"data.env_kwargs: distribution_mode {distribution_mode!r} is not one of "
                              f"{', '.join(MODES)}.")
        self.num_envs = num_envs
        self.game = game
        self.options = {"distribution_mode": distribution_mode, **options}
        self.single_observation_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        self.single_action_space = gym.spaces.Discrete(15)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        with contextlib.redirect_stderr(io.StringIO()):  # procgen imports the old gym, which prints a notice
            from procgen import ProcgenGym3Env
        self._make = ProcgenGym3Env
        self.env: Any = None
        self._build(self._draw_seed())

    def _draw_seed(self) -> int:
        return int(self.np_random.integers(2**31))

    def _build(self, seed: int) -> None:
        """(Re)builds the procgen batch with ``rand_seed=seed``; its envs start new episodes."""
        if self.env is not None:
            self.env.close()
        try:
            self.env = self._make(num=self.num_envs, env_name=self.game, rand_seed=seed % 2**31, **self.options)
        except AssertionError as err:
            raise ConfigError(f"data.env_kwargs: Procgen refused {self.options} for {self.game!r}: {err}") from None
        # cffi binds a function on first use, under a lock that building another env holds; gym3 closes an env
        # in __del__, so one the garbage collector frees during a build would deadlock on binding libenv_close.
        _ = self.env._c_lib.libenv_close
        self._stepped = False

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None) -> tuple[np.ndarray, dict]:
        """Starts new episodes in every env: rebuilt with ``rand_seed=seed``, or with a seed from ``np_random``.
        Procgen cannot reset single envs, so ``options`` (e.g. a ``reset_mask``) are refused."""
        if options:
            raise ValueError(f"ProcgenVectorEnv.reset takes no options (procgen resets all envs at once): {options}")
        super().reset(seed=seed)
        if seed is not None or self._stepped:
            self._build(int(seed) if seed is not None else self._draw_seed())
        _, obs, _ = self.env.observe()
        return obs["rgb"], {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Steps every env once; an env whose episode ended returns its next episode's first observation."""

        actions = np.asarray(actions)
        if (actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer)
                or actions.min() < 0 or actions.max() >= 15):
            raise ValueError(f"actions must be integers in [0, 15) of shape ({self.num_envs},), got {actions}")
        self.env.act(actions)
        self._stepped = True
        reward, obs, first = self.env.observe()
        return obs["rgb"], reward, first.astype(bool), np.zeros(self.num_envs, bool), {}

    def close_extras(self, **kwargs: Any) -> None:
        """Frees procgen's envs."""
        if self.env is not None:
            self.env.close()
            self.env = None


for _game in GAMES:
    gym.register(gym_id(_game), entry_point=vector_only("Procgen", "procgen steps its envs as one batch"),
                 vector_entry_point=ProcgenVectorEnv, kwargs={"game": _game})
