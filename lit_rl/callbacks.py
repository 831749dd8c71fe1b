"""Callbacks that count time in env steps, not in optimizer steps."""

from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar


class EnvStepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also saves every ``every_n_env_steps`` env steps (and ``last.ckpt``).

    ``trainer.global_step`` counts the steps of both optimizers and so says little about progress;
    this callback triggers on the env-step count that the module keeps.
    """

    def __init__(self, every_n_env_steps: int = 0, filename: Optional[str] = "{env_steps:.0f}",
                 save_last: Optional[bool] = True, save_top_k: int = 1, **kwargs: Any) -> None:
        super().__init__(filename=filename, save_last=save_last, save_top_k=save_top_k, **kwargs)
        self.every_n_env_steps = every_n_env_steps
        self._saved_bucket = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.every_n_env_steps > 0:
            self._saved_bucket = pl_module.env_steps // self.every_n_env_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every_n_env_steps <= 0 or self._should_skip_saving_checkpoint(trainer):
            return
        bucket = pl_module.env_steps // self.every_n_env_steps
        if bucket > self._saved_bucket:
            self._saved_bucket = bucket
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


class EnvStepProgressBar(TQDMProgressBar):
    """Progress in env steps of the budget, with SPS and the mean episodic return."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "total_timesteps"):
            self.train_progress_bar.reset(total=datamodule.total_timesteps)
            self.train_progress_bar.initial = 0
            self.train_progress_bar.n = datamodule.env_steps
            self.train_progress_bar.unit = " env steps"
            self.train_progress_bar.set_description("Training")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.n = getattr(pl_module, "env_steps", batch_idx + 1)
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
            self.train_progress_bar.refresh()
