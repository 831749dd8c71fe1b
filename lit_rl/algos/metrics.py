"""Logs an algorithm's metrics: what each iteration and each evaluation logs, always against the env-step count.

Every logger gets ``env_steps`` as the step of every value it is given, so runs with other rollout sizes, or
resumed and extended, line up. The metrics of one iteration (``train/<name>``):

- the loss statistics the roles returned (the algorithm's ``loss_metrics``), means over the iteration's
  minibatches, every role's on every rank;
- one mean per per-episode field of the rollout (as :meth:`lit_rl.data.Rollout.episode_metrics` names them:
  ``episodic_return``, ``episodic_length``), when an episode ended;
- the explained variance (:func:`explained_variance`) of the returns by the values GAE used: those recorded at
  collection, or, for a rollout collected updates behind (overlapped collection, ``perf/policy_lag`` >= 1), the
  current critic's (:meth:`~lit_rl.algos.ppo.PPO.revalue`); the number of actor steps and each role's LR;
- ``perf/sps`` since the fit started, the per-round fields the rollout declares a metric for
  (``perf/rollout_time``; with overlapped collection ``perf/policy_lag``, ``perf/collector_wait``,
  ``perf/learner_wait``), and what the update reported (``perf/update_time``).
"""

import time
from typing import Any, Optional, Protocol

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from lit_rl.algos.roles import ROLES, Stats
from lit_rl.data.rollout import Rollout

# Shown on the progress bar and to callbacks (each module.log costs about a millisecond), by metric.
SHOWN = {"train/episodic_return": "return", "perf/sps": "sps"}


class Logging(Protocol):
    """Describes what the metrics use of an algorithm: a LightningModule's logging and optimizers, and the run's
    env-step count."""

    @property
    def env_steps(self) -> int: ...

    @property
    def loggers(self) -> list[Any]: ...

    def optimizers(self) -> Any: ...

    def log(self, name: str, value: Any, **kwargs: Any) -> None: ...

    def log_dict(self, dictionary: Any, **kwargs: Any) -> None: ...


def explained_variance(values: Tensor, returns: Tensor) -> Tensor:
    """Computes ``1 - Var[returns - values] / Var[returns]``, at most 1; 1 where both variances are 0, 0 where only the
    returns' is (as torchmetrics). Each variance is of centred float64 values: torchmetrics' ``E[x^2] - E[x]^2``
    in float32 cancels when the returns are nearly constant (about 100 on a solved CartPole), and gave values
    far from the truth, above 1 among them."""
    returns = returns.double()
    errors = returns - values.double()
    var_returns = (returns - returns.mean()).square().mean()
    var_errors = (errors - errors.mean()).square().mean()
    return 1 - torch.where(var_returns == 0, (var_errors > 0).double(), var_errors / var_returns)  # NaN stays NaN


class RunMetrics(torch.nn.Module):
    """Logs an algorithm's iterations and evaluations; keeps the last value of every metric (``last_logged``:
    the run's summary)."""

    def __init__(self, loss_metrics: tuple[str, ...]) -> None:
        super().__init__()
        self.loss_metrics = loss_metrics
        self.means = torch.nn.ModuleDict({name: mean_metric() for name in loss_metrics})
        self.last_logged: dict[str, float] = {}
        self._fit_start: Optional[tuple[float, int]] = None

    def start(self, env_steps: int) -> None:
        """Marks where the fit starts (or resumes), at ``env_steps``: the origin of ``perf/sps``."""
        self._fit_start = (time.perf_counter(), env_steps)

    @property
    def start_env_steps(self) -> int:
        """Gives the env-step count this fit started (or resumed) at; 0 before it starts."""
        return self._fit_start[1] if self._fit_start is not None else 0

    def log_iteration(self, module: Logging, rollout: Rollout, batch: dict[str, Tensor], stats: Stats,
                      info: dict[str, float]) -> None:
        """Logs the iteration's metrics against env steps, and exposes a few to callbacks and the progress bar."""
        lrs = {role: opt.param_groups[0]["lr"] for role, opt in zip(ROLES, module.optimizers())}
        metrics = self.log_against_env_steps(module, {**self.iteration_metrics(rollout, batch, stats, lrs), **info})
        module.log("env_steps", metrics["env_steps"], logger=False, on_step=True, on_epoch=False, batch_size=1)
        module.log_dict({SHOWN[k]: metrics[k] for k in SHOWN if k in metrics}, logger=False, prog_bar=True,
                        on_step=True, on_epoch=False, batch_size=1)

    def iteration_metrics(self, rollout: Rollout, batch: dict[str, Tensor], stats: Stats,
                          lrs: dict[str, float]) -> dict[str, Any]:
        """Computes one iteration's metrics by name (see the module docstring), given each role's LR."""
        metrics: dict[str, Any] = {"env_steps": float(rollout.env_steps), "train/iteration": float(rollout.iteration)}
        for name in self.loss_metrics:
            if stats.get(name):
                metrics[f"train/{name}"] = self._mean(name, torch.stack(stats[name]))
        for field, name in type(rollout).episode_metrics().items():
            values = getattr(rollout, field)
            if values.numel():
                metrics[f"train/{name}"] = self._mean(name, values)
        values, returns = batch["values"], batch["returns"]
        if "valid" in batch:  # sequences: their valid samples
            values, returns = values[batch["valid"]], returns[batch["valid"]]
        metrics["train/explained_variance"] = explained_variance(values, returns)
        metrics["train/actor_updates"] = float(len(stats.get("policy_loss", [])))
        metrics.update({f"train/lr_{role}": lr for role, lr in lrs.items()})
        now = time.perf_counter()
        start_time, start_steps = self._fit_start or (now - 1e-9, 0)
        metrics["perf/sps"] = (rollout.env_steps - start_steps) / max(now - start_time, 1e-9)
        metrics.update({name: getattr(rollout, field) for field, name in type(rollout).round_metrics().items()})
        return metrics

    def log_evaluation(self, module: Logging, stage: str, batch: dict[str, Tensor]) -> None:
        """Logs an evaluation's episodes (``val/`` or ``test/``): the mean and spread of their returns."""
        returns, lengths = batch["episode_returns"].float(), batch["episode_lengths"].float()
        std = returns.std(unbiased=False) if returns.numel() > 1 else torch.zeros(())
        metrics = {f"{stage}/episodic_return_mean": returns.mean(), f"{stage}/episodic_return_std": std,
                   f"{stage}/episodic_length_mean": lengths.mean(), f"{stage}/episodes": float(returns.numel())}
        module.log_dict(metrics, logger=False, batch_size=1)
        self.log_against_env_steps(module, {"env_steps": float(module.env_steps), **metrics})

    def log_against_env_steps(self, module: Logging, metrics: dict[str, Any]) -> dict[str, float]:
        """Writes ``metrics`` to every logger with the env-step count as the step; returns them as floats."""
        values = {k: float(v) for k, v in metrics.items()}
        self.last_logged.update(values)
        for logger in module.loggers:
            logger.log_metrics(values, step=int(values["env_steps"]))
        return values

    def _mean(self, name: str, values: Tensor) -> Tensor:
        """Averages ``values`` by ``name``'s metric."""
        if name not in self.means:  # a per-episode field of a Rollout subclass
            self.means[name] = mean_metric().to(values.device)
        metric = self.means[name]
        metric.update(values)
        mean = metric.compute()
        metric.reset()
        return mean


def mean_metric() -> MeanMetric:
    """Makes the metric that averages one statistic over an iteration, on this process alone: every process
    already holds the values of all (the stats merged by the placement's ``merge_stats``, the episodes of the
    gathered rollout), so a second sync over the processes would only cost a collective. It stays a MeanMetric for
    how it averages: in float32, leaving NaN values out with a warning."""
    return MeanMetric(sync_on_compute=False)
