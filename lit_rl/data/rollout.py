"""Declares the rollout, one collection round over ``N`` vector envs, and the layout of each of its fields.

Every field declares its layout, and whether PPG's store keeps it:

- ``time``: ``[T, N, ...]``, one row per step (observations, actions, rewards, flags);
- ``env``: ``[N, ...]``, one row per env (the observation after the last step, the initial recurrent state);
- ``episodes``: ``[E]``, one entry per episode that ended in the round (a varying count), logged as a metric;
- ``round``: one value for the round (its env-step count, its index, its wall time).

Gathering across ranks (:func:`join`), PPG's store (:meth:`Rollout.stored`), batch preparation
(:meth:`Rollout.time_fields`, :func:`flatten_valid`, :func:`to_sequences`), minibatching and the episode metrics
(:meth:`Rollout.episode_metrics`) read these declarations; adding a tensor field is one line in :class:`Rollout`
(or a subclass: the fields are keyword-only, so their order does not matter).
"""

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

TIME, ENV, EPISODES, ROUND = "time", "env", "episodes", "round"
ENV_DIM = {TIME: 1, ENV: 0}  # where the env dimension is, in the layouts that have one


def time_major(stored: bool = False) -> Any:
    """Declares a ``[T, N, ...]`` field; ``stored``: PPG's store keeps it for the auxiliary phase."""
    return field(metadata={"layout": TIME, "stored": stored}, kw_only=True)


def env_major(stored: bool = False, optional: bool = False) -> Any:
    """Declares an ``[N, ...]`` field (``optional``: may be None, its default, e.g. a feed-forward policy's state)."""
    metadata = {"layout": ENV, "stored": stored}
    return field(default=None, metadata=metadata, kw_only=True) if optional else field(metadata=metadata, kw_only=True)


def per_episode(metric: str) -> Any:
    """Declares an ``[E]`` field: one entry per episode that ended in the round; gathered by concatenation, and
    logged each iteration as the mean ``train/<metric>``."""
    return field(metadata={"layout": EPISODES, "stored": False, "metric": metric}, kw_only=True)


_REQUIRED: Any = object()


def per_round(merge: Callable[[list[Any]], Any], metric: Optional[str] = None, default: Any = _REQUIRED) -> Any:
    """Declares one value for the round; ``merge`` makes one value of every rank's. With ``metric`` it is logged
    each iteration under that name."""
    metadata = {"layout": ROUND, "stored": False, "merge": merge, "metric": metric}
    if default is _REQUIRED:
        return field(metadata=metadata, kw_only=True)
    return field(default=default, metadata=metadata, kw_only=True)


def _first(values: list[Any]) -> Any:
    return values[0]


@dataclass
class Rollout:
    """Holds one round of experience.

    Under gymnasium's default next-step autoreset the step after an episode ends only resets that env, its
    action is ignored and it is no transition. Such steps have ``valid=False`` and are left out of every loss.
    The observation at a step that ended an episode is that episode's final observation, so ``next_values``
    bootstraps truncated episodes from the right state. Under same-step autoreset (Procgen) every step is valid
    and episodes only terminate (:class:`~lit_rl.data.collector.Collector`).

    Observations keep the env's dtype (``uint8`` frames stay bytes); the encoder scales them on its device.
    """

    obs: Tensor = time_major(stored=True)  # [T, N, *obs_shape]
    actions: Tensor = time_major()  # [T, N, *action_shape]
    logprobs: Tensor = time_major()  # [T, N]   log pi_old(a|s) at collection
    values: Tensor = time_major()  # [T, N]   V_old(s) at collection (the pre-update critic)
    rewards: Tensor = time_major(stored=True)  # [T, N]   after reward normalization, when it is on
    terminated: Tensor = time_major(stored=True)  # [T, N] bool
    truncated: Tensor = time_major(stored=True)  # [T, N] bool
    valid: Tensor = time_major(stored=True)  # [T, N] bool: False on an autoreset step
    starts: Tensor = time_major(stored=True)  # [T, N] bool: the first step of an episode (a recurrent state is zeroed before it)
    last_value: Tensor = env_major()  # [N]      V_old of the observation after the last step
    last_obs: Tensor = env_major(stored=True)  # [N, *obs_shape] the observation after the last step (PPG recomputes its value)
    last_start: Tensor = env_major(stored=True)  # [N] bool: whether last_obs starts an episode
    episode_returns: Tensor = per_episode("episodic_return")  # [E]  raw returns of the episodes that ended in this rollout
    episode_lengths: Tensor = per_episode("episodic_length")  # [E]
    env_steps: int = per_round(_first)  # env steps taken by the run so far, this rollout included (the same on every rank)
    iteration: int = per_round(_first)  # 0-based index of this rollout in the run (the same on every rank)
    rollout_time: float = per_round(max, "perf/rollout_time")  # seconds spent collecting (the slowest rank's)
    # Overlapped collection (lit_rl.data.overlap); 0 when collection and update take turns.
    policy_lag: int = per_round(max, "perf/policy_lag", default=0)  # updates the acting policy is behind the learner's
    collector_wait: float = per_round(max, "perf/collector_wait", default=0.0)  # seconds collectors waited for weights or a free buffer
    learner_wait: float = per_round(max, "perf/learner_wait", default=0.0)  # seconds the learner waited for this rollout
    initial_state: Optional[Tensor] = env_major(stored=True, optional=True)  # [N, S] a recurrent policy's state before the first step

    @classmethod
    def layout(cls) -> dict[str, str]:
        """Returns every field's layout, by name."""
        return {f.name: f.metadata["layout"] for f in fields(cls)}

    @classmethod
    def time_fields(cls) -> tuple[str, ...]:
        return tuple(name for name, layout in cls.layout().items() if layout == TIME)

    @classmethod
    def episode_metrics(cls) -> dict[str, str]:
        """Returns the per-episode fields, by name, with the metric each is logged as."""
        return {f.name: f.metadata["metric"] for f in fields(cls) if f.metadata["layout"] == EPISODES}

    @classmethod
    def round_metrics(cls) -> dict[str, str]:
        """Returns the per-round fields logged as metrics, by name, with the metric's name."""
        return {f.name: f.metadata["metric"] for f in fields(cls) if f.metadata.get("metric") and f.metadata["layout"] == ROUND}

    @classmethod
    def stored_fields(cls) -> tuple[str, ...]:
        """Returns the fields PPG's store keeps."""
        return tuple(f.name for f in fields(cls) if f.metadata["stored"])

    @property
    def num_steps(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_envs(self) -> int:
        return int(self.values.shape[1])

    @property
    def next_values(self) -> Tensor:
        """Returns ``V(s_{t+1})`` for every step: the next row's value, and ``last_value`` after the last row."""
        return torch.cat([self.values[1:], self.last_value.unsqueeze(0)])

    def stored(self) -> dict[str, Tensor]:
        """Returns what PPG's store keeps of this rollout (the stored fields that are set)."""
        return {name: getattr(self, name) for name in self.stored_fields() if getattr(self, name) is not None}

    def to(self, device: torch.device) -> "Rollout":
        """Returns the same rollout with every tensor on ``device``."""
        values = {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in vars(self).items()}
        return type(self)(**values)


@dataclass
class NoRollout:
    """Stands for the rollout of a process that collects nothing (a learner beside the placement's rollout ranks):
    each iteration it hands the module the iteration's index and env count, no envs. Gathering
    (:func:`lit_rl.distributed.placement.gather_rollout`) replaces it with the collecting processes' rollouts."""

    iteration: int
    env_steps: int

    def to(self, device: torch.device) -> "NoRollout":
        return self


@dataclass
class Schedule:
    """Lists the run's rollouts from ``iteration`` on: ``num_steps`` steps each over the run's ``num_envs`` envs
    until ``total_timesteps`` env steps (the last one shorter), in either collection mode."""

    iteration: int
    env_steps: int
    num_envs: int
    num_steps: int
    total_timesteps: int

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        """Yields ``(iteration, steps, env_steps after it)`` of each rollout left."""
        iteration, env_steps = self.iteration, self.env_steps
        while env_steps < self.total_timesteps:
            steps = min(self.num_steps, (self.total_timesteps - env_steps) // self.num_envs)
            env_steps += steps * self.num_envs
            yield iteration, steps, env_steps
            iteration += 1


def join(cls: type[Rollout], parts: dict[str, list[Any]]) -> Rollout:
    """Joins every rank's values of each field (``parts[name]``, in rank order) into one rollout, as each field's
    layout says: env-wise fields are concatenated over the env dimension (rank 0's envs first), episodes
    concatenated, per-round values merged."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        layout, given = f.metadata["layout"], parts[f.name]
        if layout in ENV_DIM:
            values[f.name] = None if given[0] is None else torch.cat(given, ENV_DIM[layout])
        elif layout == EPISODES:
            values[f.name] = torch.cat(given)
        else:
            values[f.name] = f.metadata["merge"](given)
    return cls(**values)


def pad_time(x: Tensor, length: int) -> Tensor:
    """Pads ``x`` (``[T, ...]``) to ``length`` steps with False (bool) or 0: padding is invalid."""
    if x.shape[0] == length:
        return x
    pad = x.new_full((length - x.shape[0], *x.shape[1:]), False if x.dtype == torch.bool else 0)
    return torch.cat([x, pad])


def flatten_valid(fields: dict[str, Tensor], valid: Tensor) -> dict[str, Tensor]:
    """Flattens ``[T, N, ...]`` fields (or ``[sequences, L, ...]``) into samples, the ``valid`` ones only, in the
    order of the first two dimensions flattened."""
    mask = valid.flatten()
    return {key: value.flatten(0, 1)[mask] for key, value in fields.items()}


def to_sequences(time_fields: dict[str, Tensor], length: int) -> dict[str, Tensor]:
    """Cuts ``[T, N, ...]`` fields into ``[N * ceil(T / length), length, ...]`` sequences: env-major within
    each chunk of time, chunks in time order, a short last chunk padded (as invalid, with ``valid``)."""
    T, N = next(iter(time_fields.values())).shape[:2]
    chunks = -(-T // length)
    return {key: pad_time(value, chunks * length).view(chunks, length, N, *value.shape[2:]).transpose(1, 2).flatten(0, 1)
            for key, value in time_fields.items()}
