"""The run's normalization statistics and their one owner, which holds, updates and checkpoints them (as SB3's
VecNormalize does).

The normalization wrappers (:class:`lit_rl.envs.wrappers.NormalizeObservation`,
:class:`~lit_rl.envs.wrappers.NormalizeReward`) are handed the owner's statistics when they are built: they
normalize with them and record the moments of the raw observations and discounted returns that pass through,
but never fold those moments in. The owner folds them in once at a rollout's end, merged over every process
that collects, so all processes normalize alike and the statistics are the run's. Collector processes
(:mod:`lit_rl.data.overlap`) send their moments instead, which the owner merges, and act with the statistics
it publishes. Evaluation envs apply the same statistics and never record into them.
"""

from typing import Any, Callable, Iterable

import numpy as np
import torch
from gymnasium.wrappers.utils import RunningMeanStd
from torch import Tensor

SumOverProcesses = Callable[[Tensor], Tensor]
STATISTICS = ("obs_rms", "return_rms")  # the checkpoint's keys, named as gymnasium's wrappers name them


def _same(tensor: Tensor) -> Tensor:
    return tensor


class DeferredRunningMeanStd(RunningMeanStd):
    """Holds gymnasium's running mean/std fixed while a rollout is collected.

    The normalization wrappers call ``update()`` on every step; here it only gathers the moments of what it
    is given into ``pending``, which :meth:`Normalization.commit` folds in.
    """

    def __init__(self, shape: tuple[int, ...] = (), dtype: Any = np.float64) -> None:
        super().__init__(shape=shape, dtype=dtype)
        self.pending = RunningMeanStd(epsilon=0.0, shape=shape)

    def update(self, x: np.ndarray) -> None:
        """Gathers the moments of the batch ``x`` (one row per env) into ``pending``, as gymnasium's
        ``RunningMeanStd.update`` does, bit for bit: the batch's mean and variance are numpy's own ``np.mean`` and
        ``np.var`` arithmetic (a sum along the batch, divided by its size; the squared deviations from that mean,
        summed and divided), without their argument handling, which costs more than the arithmetic at a vector
        env's few rows: a Pendulum step's two updates (observations, returns) take 20 us here instead of 41."""
        x = np.asarray(x, dtype=np.float64)
        n = x.shape[0]
        mean = np.add.reduce(x, axis=0) / n
        centred = x - mean
        self.pending.update_from_moments(mean, np.add.reduce(np.multiply(centred, centred, out=centred), axis=0) / n, n)

    def take_pending(self) -> RunningMeanStd:
        """Hands over the moments gathered so far and starts gathering afresh."""
        pending, self.pending = self.pending, RunningMeanStd(epsilon=0.0, shape=self.pending.mean.shape)
        return pending


def moments(rms: RunningMeanStd) -> dict[str, Tensor]:
    """Reads ``rms``'s mean, variance and count as float64 tensors (what the weight ring and messages carry)."""
    return {"mean": torch.as_tensor(np.asarray(rms.mean, dtype=np.float64)),
            "var": torch.as_tensor(np.asarray(rms.var, dtype=np.float64)),
            "count": torch.tensor(float(rms.count), dtype=torch.float64)}


def set_moments(rms: RunningMeanStd, values: dict[str, Any]) -> None:
    """Sets ``rms`` to ``values`` (tensors or numpy arrays), in its own dtype and shape."""
    rms.mean = np.asarray(values["mean"]).astype(np.asarray(rms.mean).dtype).reshape(np.shape(rms.mean))
    rms.var = np.asarray(values["var"]).astype(np.asarray(rms.var).dtype).reshape(np.shape(rms.var))
    rms.count = float(values["count"])


def merge_moments(parts: list[dict[str, Any]]) -> RunningMeanStd:
    """Merges several collectors' moments (Chan et al.) into one pending update; one collector's stay as they are."""
    merged = RunningMeanStd(epsilon=0.0, shape=tuple(np.shape(parts[0]["mean"])))
    if len(parts) == 1:
        set_moments(merged, parts[0])
        return merged
    for part in parts:
        if float(part["count"]) > 0:
            merged.update_from_moments(np.asarray(part["mean"]), np.asarray(part["var"]), float(part["count"]))
    return merged


def fold_in(rms: DeferredRunningMeanStd, sum_over_processes: SumOverProcesses = _same) -> None:
    """Folds ``rms.pending``, summed over every process, into ``rms``. The processes' moments are merged as in
    Chan et al.'s parallel algorithm: counts and mean first, then the squared deviations around the merged mean."""

    def total(x: Any) -> np.ndarray:
        return sum_over_processes(torch.as_tensor(x, dtype=torch.float64)).numpy()

    p = rms.take_pending()
    count = float(total(p.count))
    if count > 0:
        mean = total(p.count * p.mean) / count
        var = total(p.count * (p.var + np.square(p.mean - mean))) / count
        rms.update_from_moments(mean.astype(rms.mean.dtype), var.astype(rms.var.dtype), count)


class Normalization:
    """Owns the run's observation and return statistics (``obs_rms``, ``return_rms``).

    ``names``: the statistics the run normalizes with (:attr:`lit_rl.envs.make.EnvSpec.normalized`); only those
    are kept from a checkpoint. A statistic is made when the first env asks for it (:meth:`statistics`), with the
    loaded checkpoint's values where there are any; every later env gets the same object.
    """

    def __init__(self, names: Iterable[str] = STATISTICS) -> None:
        self.names = tuple(names)
        self.stats: dict[str, DeferredRunningMeanStd] = {}
        self._loaded: dict[str, dict[str, Any]] = {}  # checkpointed statistics that no env has asked for yet

    def statistics(self, name: str, shape: tuple[int, ...] = (), dtype: Any = np.float64) -> DeferredRunningMeanStd:
        """Gives the statistics ``name`` that a normalization wrapper applies and records into."""
        if name not in self.names:
            raise ValueError(f"{name!r} is not one of the run's normalization statistics {self.names}")
        if name not in self.stats:
            self.stats[name] = DeferredRunningMeanStd(shape, dtype)
            if name in self._loaded:
                set_moments(self.stats[name], self._loaded.pop(name))
        return self.stats[name]

    def commit(self, sum_over_processes: SumOverProcesses = _same) -> None:
        """Folds in the moments every process recorded since the last commit (``sum_over_processes`` sums a
        tensor over the processes: an all-reduce; the identity for one)."""
        for rms in self.stats.values():
            fold_in(rms, sum_over_processes)

    def commit_moments(self, parts: dict[str, list[dict[str, Any]]],
                       sum_over_processes: SumOverProcesses = _same) -> None:
        """Folds in the moments collector processes sent (a list per statistic, one entry per collector) as one
        pending update, merged over every process as :meth:`commit` does."""
        for name, rms in self.stats.items():
            rms.pending = merge_moments(parts[name])
            fold_in(rms, sum_over_processes)

    def take_pending(self) -> dict[str, dict[str, np.ndarray]]:
        """Hands over the moments recorded since the last call, by statistic, as numpy arrays (a collector's
        message to the owner); recording starts afresh."""
        return {name: {k: v.numpy() for k, v in moments(rms.take_pending()).items()}
                for name, rms in self.stats.items()}

    def drop_pending(self) -> None:
        """Forgets moments recorded but not committed (envs closed mid-rollout); later envs start recording afresh."""
        for rms in self.stats.values():
            rms.take_pending()

    def moments(self) -> dict[str, dict[str, Tensor]]:
        """Reads every statistic's moments, to publish them to collector processes."""
        return {name: moments(rms) for name, rms in self.stats.items()}

    def set_moments(self, published: dict[str, dict[str, Any]]) -> None:
        """Takes the statistics ``published`` by the owner of the run (a collector process's side)."""
        for name, rms in self.stats.items():
            set_moments(rms, published[name])

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Gives the statistics in the checkpoint's format: ``{name: {mean, var, count}}``."""
        state = {name: saved for name, saved in self._loaded.items()}
        for name, rms in self.stats.items():
            state[name] = {"mean": torch.tensor(rms.mean), "var": torch.tensor(rms.var), "count": float(rms.count)}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Sets the statistics a checkpoint holds (other keys are ignored); one no env has asked for yet is set
        when it is made."""
        self._loaded = {k: v for k, v in state_dict.items() if k in self.names}
        for name in [name for name in self._loaded if name in self.stats]:
            set_moments(self.stats[name], self._loaded.pop(name))
