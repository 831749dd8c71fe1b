"""Provides callbacks that count time in env steps, not in optimizer steps, and one that makes SLURM preemption
land on an iteration boundary."""

import glob
import os
import re
import signal
import subprocess
import threading
from types import FrameType
from typing import Any, Optional

import lightning as L
from fsspec.core import url_to_fs
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class EnvStepCheckpoint(ModelCheckpoint):
    """Extends ModelCheckpoint to save also every ``every_n_env_steps`` env steps (and ``last.ckpt``).

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
        if self.every_n_env_steps <= 0:
            return
        bucket = pl_module.env_steps // self.every_n_env_steps
        if bucket > self._saved_bucket and self._save_now(trainer):
            self._saved_bucket = bucket

    def _save_now(self, trainer: L.Trainer) -> bool:
        """Saves the top-k checkpoint and ``last.ckpt`` now, as ModelCheckpoint's own hooks do; False when
        ModelCheckpoint's rules skip this step (not fitting, sanity check, fast_dev_run, already saved at
        this global step).

        ModelCheckpoint has no public "save now": its triggers are epochs, optimizer steps and time, never
        env steps. So this calls the private methods its hooks call (Lightning 2.6), and is the one place
        here that does.
        """
        if self._should_skip_saving_checkpoint(trainer):
            return False
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        return True


class EnvStepProgressBar(TQDMProgressBar):
    """Shows progress in env steps of the budget, with SPS and the mean episodic return."""

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
            # One refresh per iteration: set_postfix refreshes by default, and where the output is not a terminal
            # (a log file, a SLURM job) every refresh is written out.
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
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
    """Moves Lightning's SLURM auto-requeue to the end of an iteration.

    With ``SLURMEnvironment(auto_requeue=True)`` (Lightning's default under SLURM), the requeue signal
    (``#SBATCH --signal=USR1@90``) makes Lightning save ``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir``
    and ``scontrol requeue`` the job; the requeued job finds that checkpoint and resumes from it. Lightning
    saves inside the signal handler, wherever training happens to be: in the middle of a rollout (whose
    env steps the checkpoint would then miss or count twice) or of an update (half-stepped weights), and,
    with several ranks, at a different point on each. This callback only notes the signal; after each
    iteration (rollout, update and weight exchange done) the ranks agree whether any of them got it, and
    then all do together what Lightning's handler does (:func:`checkpoint_and_requeue`) and stop, without
    the end-of-fit evaluation. The checkpoint so holds exactly the iterations done, with their env-step
    count. A signal in the iteration that reaches the budget is ignored: the run is finishing anyway.
    """

    def __init__(self) -> None:
        self.requested = False
        self.requeued = False  # this run checkpointed and requeued its job
        self._environment: Optional[SLURMEnvironment] = None
        self._previous: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Installed before Lightning registers its signal handlers (after on_fit_start), which then leaves an
        # existing USR1 handler in place: from here on the signal is only noted, never acted on mid-step.
        environment = _cluster_environment(trainer)
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
        checkpoint_and_requeue(trainer, signum)
        self.requeued = True
        trainer.should_stop = True
        # Stopping would run the end-of-fit evaluation, which SLURM's SIGTERM (the requeue) would cut short.
        _skip_end_of_fit_validation(trainer)


def _cluster_environment(trainer: L.Trainer) -> Any:
    """Returns the trainer's cluster environment (SLURMEnvironment under SLURM), with whatever strategy.

    Private: only parallel strategies expose ``strategy.cluster_environment``; Lightning's own signal
    handling reads this same attribute.
    """
    return getattr(trainer._accelerator_connector, "cluster_environment", None)


def _skip_end_of_fit_validation(trainer: L.Trainer) -> None:
    """Stops ``trainer.should_stop`` from running the validation that Lightning runs when it stops a fit.

    Private: Lightning has no public switch for it; this is the flag its fit loop reads (Lightning 2.6).
    """
    trainer.fit_loop.epoch_loop._skip_next_val = True


def hpc_save_path(folder: str) -> str:
    """Returns ``folder/hpc_ckpt_{N+1}.ckpt``, N the highest number among the ``hpc_ckpt_*`` files there (0 if
    none): the next name Lightning's SLURM resume picks up (it resumes from the highest N in
    ``trainer.default_root_dir``). Lightning's own helper sits on a private class; this reads the number
    the way it does."""
    fs, uri = url_to_fs(str(folder))
    numbers = [0]
    if fs.exists(folder):
        for entry in fs.listdir(uri):
            name = os.path.basename(entry["name"])
            if "hpc_ckpt_" in name:
                numbers.append(int(re.sub("[^0-9]", "", name.split("hpc_ckpt_")[-1])))
    return os.path.join(folder, f"hpc_ckpt_{max(numbers) + 1}.ckpt")


def checkpoint_and_requeue(trainer: L.Trainer, signum: int) -> None:
    """Does what Lightning does on SLURM's requeue signal (``SLURMEnvironment(auto_requeue=True)``), with public
    calls: finalizes the loggers, saves ``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir`` (all ranks), and on
    rank 0 runs ``scontrol requeue`` on the job (``ARRAYJOB_TASK`` for an array task)."""

    rank_zero_info(f"Handling auto-requeue signal: {signum}")
    for logger in trainer.loggers:
        logger.finalize("finished")  # all metrics written before the checkpoint
    trainer.save_checkpoint(hpc_save_path(trainer.default_root_dir))
    if not trainer.is_global_zero:
        return
    array_job_id = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job_id is not None:
        job_id = f"{array_job_id}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    else:
        job_id = os.environ["SLURM_JOB_ID"]
    assert re.match("[0-9_-]+", job_id)
    cmd = ["scontrol", "requeue", job_id]
    rank_zero_info(f"requeing job {job_id}...")
    try:
        result = subprocess.call(cmd)
    except FileNotFoundError:
        # scontrol not found outside a shell: try again through one, as Lightning does.
        result = subprocess.call(" ".join(cmd), shell=True)
    if result == 0:
        rank_zero_info(f"Requeued SLURM job: {job_id}")
    else:
        rank_zero_warn(f"Requeuing SLURM job {job_id} failed with error code {result}")


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
