"""Env families lit_rl adds to gymnasium's registry, named ``<family>:<game>`` in ``data.env_id``.

``procgen:starpilot`` (:mod:`lit_rl.envs.procgen`, extra ``lit-rl[procgen]``), ``atari:Breakout``
(:mod:`lit_rl.envs.atari`, extra ``lit-rl[atari]``) and ``minatar:breakout`` (:mod:`lit_rl.envs.minatar`, extra
``lit-rl[minatar]``). Each family's module registers its games as gymnasium ids
with a vector entry point when it is imported, and maps a game's name to its registered id (``gym_id``). Any other
``data.env_id`` is a gymnasium id as it stands (``module:Name-v0`` imports ``module`` first).
"""

import functools
import importlib
from typing import Any, Callable, NoReturn

from lit_rl.errors import ConfigError

FAMILIES = {"procgen": "lit_rl.envs.procgen", "atari": "lit_rl.envs.atari", "minatar": "lit_rl.envs.minatar"}
VECTOR_ONLY = {"procgen", "minatar"}  # families whose games run only as one native batch: no sync/async envs, no video


def check_vectorization(env_id: str, vectorization_mode: str, record_video: bool) -> None:
    """A ConfigError, before any env is built, when a vector-only family's game is asked for per-env envs."""
    family = env_id.partition(":")[0]
    if family not in VECTOR_ONLY:
        return
    if vectorization_mode in ("sync", "async"):
        raise ConfigError(
            f"data.vectorization_mode: {env_id!r} runs only as {family}'s own batch of envs, not as "
            f"{vectorization_mode!r} single envs; set data.vectorization_mode to auto or vector_entry_point (after a "
            f"placement preset, which asks for sync, add --data.vectorization_mode vector_entry_point).")
    if record_video:
        raise ConfigError(f"data.record_video: {env_id!r} runs only as {family}'s own batch of envs, and video "
                          "recording needs single envs; set data.record_video to false.")


def _refuse_single_env(name: str, batch: str, **kwargs: Any) -> NoReturn:
    raise ConfigError(f"data.vectorization_mode: {name} envs are vector-only ({batch}); use vectorization_mode "
                      f"'auto' or 'vector_entry_point'. Video recording needs a single env and is not supported for "
                      f"{name}.")


def vector_only(name: str, batch: str) -> Callable[..., NoReturn]:
    """The single-env entry point a vector-only family registers (gymnasium calls it for ``sync`` / ``async`` and
    video): it refuses, naming the family (``name``) and why its games run only as one batch (``batch``)."""
    return functools.partial(_refuse_single_env, name, batch)


def resolve_env_id(env_id: str) -> str:
    """The gymnasium id ``gym.make_vec`` takes for ``env_id``: a family's game (``procgen:starpilot``) becomes the
    id its module registered; any other id is returned unchanged. A ConfigError names a missing extra or an
    unknown game."""
    family, sep, game = env_id.partition(":")
    if not sep or family not in FAMILIES:
        return env_id
    try:
        module = importlib.import_module(FAMILIES[family])
    except ImportError as err:
        raise ConfigError(
            f"data.env_id: {env_id!r} needs the {family} extra, which is not installed ({err}). "
            f"Install it with: pip install 'lit-rl[{family}]'."
        ) from None
    return module.gym_id(game)
