"""Callbacks that count time in env steps, not in optimizer steps, and one that makes SLURM preemption
land on an iteration boundary."""

import glob
import os
import signal
import threading
from types import FrameType
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info


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


_early_requeue_signal = [False]


def note_requeue_signal_early() -> None:
    """Under SLURM, notes SIGUSR1 from the start of the process (before the trainer exists, while envs and
    process groups start): the default action would kill the process. :class:`SlurmRequeueAtIterationEnd`
    picks the note up. Env worker processes forked later inherit the note instead of dying."""
    if "SLURM_JOB_ID" not in os.environ or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGUSR1) in (None, signal.SIG_DFL):
        signal.signal(signal.SIGUSR1, lambda signum, frame: _early_requeue_signal.__setitem__(0, True))


class SlurmRequeueAtIterationEnd(Callback):
    """Lightning's SLURM auto-requeue, moved to the end of an iteration.

    With ``SLURMEnvironment(auto_requeue=True)`` (Lightning's default under SLURM), the requeue signal
    (``#SBATCH --signal=USR1@90``) makes Lightning save ``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir``
    and ``scontrol requeue`` the job; the requeued job finds that checkpoint and resumes from it. Lightning
    saves inside the signal handler, wherever training happens to be: in the middle of a rollout (whose
    env steps the checkpoint would then miss or count twice) or of an update (half-stepped weights), and,
    with several ranks, at a different point on each. This callback only notes the signal; after each
    iteration (rollout, update and weight exchange done) the ranks agree whether any of them got it, and
    then all call Lightning's own handler together (checkpoint, requeue) and stop, without the end-of-fit
    evaluation. The checkpoint so holds exactly the iterations done, with their env-step count. A signal
    in the iteration that reaches the budget is ignored: the run is finishing anyway.
    """

    def __init__(self) -> None:
        self.requested = False
        self.requeued = False  # this run checkpointed and requeued its job
        self._environment: Optional[SLURMEnvironment] = None
        self._previous: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Installed before Lightning registers its signal handlers (after on_fit_start), which then leaves an
        # existing USR1 handler in place: from here on the signal is only noted, never acted on mid-step.
        environment = getattr(trainer._accelerator_connector, "cluster_environment", None)
        if stage != "fit" or not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue
                                  and environment.requeue_signal) or threading.current_thread() is not threading.main_thread():
            return
        self._environment = environment
        self.requested = _early_requeue_signal[0] and environment.requeue_signal == signal.SIGUSR1
        self._previous = signal.signal(environment.requeue_signal, self._note)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._environment is not None:
            signal.signal(self._environment.requeue_signal, self._previous or signal.SIG_DFL)
            self._environment = None

    def _note(self, signum: int, frame: Optional[FrameType]) -> None:
        self.requested = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._environment is None:
            return
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        self.requested = False
        datamodule = trainer.datamodule
        if datamodule is not None and datamodule.env_steps >= getattr(datamodule, "total_timesteps", float("inf")):
            rank_zero_info("SLURM requeue signal in the last iteration: finishing the run instead of requeueing")
            return
        signum = self._environment.requeue_signal
        rank_zero_info(f"SLURM requeue signal at {getattr(pl_module, 'env_steps', '?')} env steps: checkpointing "
                       "at the end of this iteration and requeueing")
        trainer._signal_connector._slurm_sigusr_handler_fn(signum, None)  # Lightning's save + scontrol requeue
        self.requeued = True
        trainer.should_stop = True
        # Stopping would run the end-of-fit evaluation, which SLURM's SIGTERM (the requeue) would cut short.
        trainer.fit_loop.epoch_loop._skip_next_val = True


class LogEvaluationVideos(Callback):
    """After each evaluation that recorded videos (``data.record_video``), hands the new files to every
    logger that takes videos (``log_video``, e.g. the wandb preset), at the current env step."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        loggers = [logger for logger in trainer.loggers if callable(getattr(logger, "log_video", None))]
        datamodule = trainer.datamodule
        folder = datamodule._video_folder() if datamodule is not None and hasattr(datamodule, "_video_folder") else None
        if not loggers or folder is None or not trainer.is_global_zero:
            return
        videos = sorted(set(glob.glob(os.path.join(folder, "*.mp4"))) - self._seen, key=os.path.getmtime)
        if not videos:
            return
        self._seen.update(videos)
        for logger in loggers:
            logger.log_video(f"{stage}/video", videos, step=int(getattr(pl_module, "env_steps", 0)))
