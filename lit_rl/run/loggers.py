"""Provides the logger presets: wandb that stays offline unless the user is logged in, with env steps as its
x-axis."""

import netrc
import os
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

import lightning as L
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from lit_rl.errors import ConfigError

STEP_METRIC = "env_steps"


def add_prefix(metrics: Mapping[str, Any], prefix: str, join_char: str) -> Mapping[str, Any]:
    """Renames every key to ``{prefix}{join_char}{key}``, as Lightning's loggers name metrics; leaves the metrics
    unchanged without a prefix."""
    if not prefix:
        return metrics
    return {f"{prefix}{join_char}{k}": v for k, v in metrics.items()}


def wandb_logged_in() -> bool:
    """Returns True when wandb has credentials: WANDB_API_KEY, or a netrc entry written by `wandb login`."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger(_LightningWandbLogger):
    """Extends Lightning's WandbLogger to run offline by default: online only when logged in (or
    ``offline: false``).

    - ``WANDB_MODE`` set in the environment still wins, as wandb documents.
    - Metrics are plotted against ``env_steps`` (the module logs it with every metric), not Lightning's
      ``trainer/global_step``, which counts optimizer steps of both optimizers.
    - The ``lit-rl`` CLI sends the whole resolved config (model, data, trainer, ...) to :meth:`log_config`.
    - ``log_model: true`` (or ``all``) uploads the checkpoints as artifacts (Lightning's option); evaluation
      videos go up through :meth:`log_video` when ``data.record_video`` is on.
    """

    def __init__(self, *, offline: Optional[bool] = None, **kwargs: Any) -> None:
        chosen = offline
        if offline is None:
            offline = os.environ.get("WANDB_MODE", "") != "online" and not wandb_logged_in()
        if offline and kwargs.get("log_model"):
            if chosen:
                raise ConfigError(
                    "trainer.logger.init_args.log_model: an offline wandb run cannot upload checkpoints as artifacts; "
                    "set log_model: false, or log in (`wandb login`) and drop offline: true.")
            rank_zero_warn("wandb is offline (not logged in), so log_model is off: the checkpoints stay in the run's "
                           "checkpoints folder. `wandb login` to upload them as artifacts.")
            kwargs["log_model"] = False
        super().__init__(offline=offline, **kwargs)
        self._metric_prefix = kwargs.get("prefix", "")
        self._axis_defined = False

    @property
    def experiment(self) -> Any:
        run = super().experiment
        if not self._axis_defined and callable(getattr(run, "define_metric", None)):
            run.define_metric(STEP_METRIC)
            run.define_metric("*", step_metric=STEP_METRIC, step_sync=True)
            self._axis_defined = True
        return run

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        """Logs with ``env_steps`` as the x-axis: the module passes the env-step count as ``step``."""
        if step is None or STEP_METRIC not in metrics:
            return super().log_metrics(metrics, step)
        self.experiment.log(add_prefix(dict(metrics), self._metric_prefix, self.LOGGER_JOIN_CHAR))

    @rank_zero_only
    def log_video(self, key: str, videos: list[Any], step: Optional[int] = None, **kwargs: Any) -> None:
        """Logs video files (or arrays) under ``key``, at env step ``step``."""
        import wandb

        items = [wandb.Video(video, **{k: v[i] for k, v in kwargs.items()}) for i, video in enumerate(videos)]
        self.log_metrics({key: items, **({STEP_METRIC: step} if step is not None else {})}, step)

    @rank_zero_only
    def log_config(self, config: Mapping[str, Any]) -> None:
        """Sets the run config to the resolved ``lit-rl`` config (nested: ``model``, ``data``, ``trainer``, ...)."""
        self.experiment.config.update(dict(config), allow_val_change=True)


def run_dir(trainer: L.Trainer) -> str:
    """Returns the run's own folder: the CSV/TensorBoard version folder, or, for other loggers (wandb), the one
    Lightning's checkpoints go to (``save_dir/name/version``), not the logger's shared ``save_dir``.

    Call it on every rank (rank 0 decides)."""
    shared = trainer.log_dir  # broadcast from rank 0
    logger = trainer.loggers[0] if trainer.loggers else None
    path = shared
    if trainer.is_global_zero and logger is not None and shared == logger.save_dir and logger.version is not None:
        path = os.path.join(shared or trainer.default_root_dir, str(logger.name), str(logger.version))
    return trainer.strategy.broadcast(path)
