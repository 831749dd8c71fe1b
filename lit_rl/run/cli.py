"""Implements the ``lit-rl`` command: LightningCLI with omegaconf interpolation, env-step checkpoints and clear
errors."""

import glob
import json
import os
import re
import sys
import time
import warnings
from typing import Any, Optional

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_warn
from jsonargparse import lazy_instance, set_parsing_settings

from lit_rl import MOVED, moved_message
from lit_rl.algos.ppo import PPO
from lit_rl.run.callbacks import (EnvStepCheckpoint, EnvStepProgressBar, LogEvaluationVideos, SlurmRequeueAtIterationEnd,
                              note_requeue_signal_early)
from lit_rl.run.checkpoints import AtomicCheckpointIO, newest_readable, unreadable
from lit_rl.data.datamodule import RolloutDataModule
from lit_rl.errors import ConfigError, user_error
from lit_rl.run.loggers import run_dir
from lit_rl.run.sweep import SUMMARY_ENV

_SPECIAL_CKPT = {"best", "hpc", "registry"}


def _ignore_known_warnings() -> None:
    """Silences the warnings every run would print, once the CLI runs (never on import)."""
    # The module pulls each rollout itself (training_step(dataloader_iter)) so that it comes from the current
    # policy; Lightning warns about that signature on every run.
    warnings.filterwarnings("ignore", message=r".*`dataloader_iter`.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


class SaveConfig(SaveConfigCallback):
    """Writes config.yaml to the run's own folder (:func:`lit_rl.run.loggers.run_dir`: with wandb, beside the
    run's checkpoints rather than in the shared save_dir) and gives the whole resolved config to the
    loggers that take one (``log_config``: the wandb preset makes it the run config)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        folder = run_dir(trainer)
        if trainer.is_global_zero:
            os.makedirs(folder, exist_ok=True)
            self.config_path = os.path.join(folder, self.config_filename)
            self.parser.save(self.config, self.config_path, skip_none=False, overwrite=True, multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        loggers = [logger for logger in trainer.loggers if callable(getattr(logger, "log_config", None))]
        if loggers:
            # With the linked values (data.gamma), which config.yaml leaves out: they are not keys of their own.
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_check=True,
                                                     skip_link_targets=False))
            for logger in loggers:
                logger.log_config(config)


class LitRLCLI(LightningCLI):
    """Runs ``lit-rl fit|validate|test --config configs/....yaml [--key value ...]``.

    - ``model`` is any algorithm class (``class_path``), ``data`` the rollout DataModule.
    - ``data.seed`` seeds torch, numpy and python before the networks are built, and the envs.
    - ``--ckpt_path last`` resumes from the newest ``last.ckpt`` of earlier runs in the log folder.
    """

    def __init__(self, args: Any = None, run: bool = True) -> None:
        _ignore_known_warnings()
        set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
        super().__init__(
            model_class=PPO,
            datamodule_class=RolloutDataModule,
            subclass_mode_model=True,
            parser_kwargs={"parser_mode": "omegaconf+"},
            auto_configure_optimizers=False,
            seed_everything_default=False,
            save_config_callback=SaveConfig,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(EnvStepCheckpoint, "checkpoint")
        # One owner for the discount: reward normalization uses the gamma being learned.
        parser.link_arguments("model.init_args.gamma", "data.gamma")
        parser.add_argument("--torch_threads", type=int, default=1,
                            help="torch intra-op threads; 1 is fastest for small networks on few cores")
        parser.set_defaults({
            "trainer.logger": lazy_instance(CSVLogger, save_dir=".", name="lightning_logs",
                                            flush_logs_every_n_steps=1),
            "trainer.max_epochs": -1,  # the env-step budget ends training
            "trainer.num_sanity_val_steps": 0,
            "trainer.log_every_n_steps": 1,
        })

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """Adds the env-step progress bar unless the progress bar is off or another one is configured, the
        callbacks that make SLURM requeues checkpoint at an iteration's end and hand evaluation videos to the
        loggers, and the atomic checkpoint writer (:class:`lit_rl.run.checkpoints.AtomicCheckpointIO`) unless the
        plugins or the strategy bring their own CheckpointIO. Every strategy saves through it: the
        ModelCheckpoint files, ``last.ckpt`` and SLURM's ``hpc_ckpt_N.ckpt``."""
        config = self._get(self.config_init, "trainer", default={})
        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        own_io = getattr(config.get("strategy"), "_checkpoint_io", None)  # a Strategy instance's own writer
        if own_io is None and not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        callbacks = list(config.get("callbacks") or [])
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(EnvStepProgressBar())
        for kind in (SlurmRequeueAtIterationEnd, LogEvaluationVideos):
            if not any(isinstance(c, kind) for c in callbacks):
                callbacks.append(kind())
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> L.Trainer:
        # The checkpoint.* callback is always configured; with trainer.enable_checkpointing false the user asked
        # for no checkpoints, and Lightning refuses a ModelCheckpoint beside that setting.
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, EnvStepCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)

    # ------------------------------------------------------------------ config checks, before any env starts
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub and self.config[sub].get("ckpt_path"):
            self.config[sub]["ckpt_path"] = self._resolve_ckpt(self.config[sub])
        if sub:
            self._refuse_data_gamma(self.config[sub])

    def _refuse_data_gamma(self, cfg: Any) -> None:
        """Refuses a config file that sets ``data.gamma`` to anything but ``model.gamma``: the two are linked, so
        such a value would be ignored. ``${model.init_args.gamma}``, ``${model.gamma}`` and the model's own value
        are taken, since they already give the model's discount."""
        model = cfg.model.init_args if "init_args" in cfg.model else cfg.model
        follows = {"${model.init_args.gamma}", "${model.gamma}", model.get("gamma")}
        for path in cfg.get("config") or []:
            try:
                text = path.get_content() if hasattr(path, "get_content") else open(str(path)).read()
                data = (yaml.safe_load(text) or {}).get("data") or {}
            except (OSError, yaml.YAMLError, AttributeError):
                continue
            if isinstance(data, dict) and "gamma" in data and data["gamma"] not in follows:
                raise ConfigError(f"data.gamma: {path} sets it to {data['gamma']!r}, but it is not a key of its own: "
                                  "reward normalization uses the discount being learned. Remove it there and set "
                                  "model.gamma (model.init_args.gamma).")

    def _parse_ckpt_path(self) -> None:
        """Leaves the config as it is for ``fit``, which runs this run's config: the module checks it against the
        checkpoint, refuses what cannot apply and prints what differs (:class:`lit_rl.algos.resume.Resume`).
        ``validate``/``test`` take the model's settings from the checkpoint, as LightningCLI does."""
        if self.config.get("subcommand") != "fit":
            super()._parse_ckpt_path()

    def _resolve_ckpt(self, cfg: Any) -> str:
        path = str(cfg["ckpt_path"])
        if path in _SPECIAL_CKPT:
            return path
        if path == "last":
            # The newest checkpoint torch.load can read: a save cut short (a job killed while writing with a
            # writer that was not atomic) is skipped with a warning.
            roots = [d for d in (cfg.get("checkpoint", {}).get("dirpath"), _log_root(cfg)) if d]
            found = [p for root in roots for p in glob.glob(os.path.join(root, "**", "*.ckpt"), recursive=True)
                     if not os.path.isdir(p)]
            if not found:
                raise ConfigError(
                    f"ckpt_path=last: no checkpoint (.ckpt) under {' or '.join(roots)}. Train first without "
                    "--ckpt_path, or give the path of a checkpoint file."
                )
            newest, skipped = newest_readable(os.path.abspath(p) for p in found)
            if newest is None:
                raise ConfigError(
                    f"ckpt_path=last: none of the {len(skipped)} checkpoints under {' or '.join(roots)} can be read "
                    f"(the newest, {skipped[0][0]}: {skipped[0][1]}). Train without --ckpt_path to start afresh."
                )
            if skipped:
                rank_zero_warn("ckpt_path=last: skipped unreadable checkpoints, newest first: "
                               + "; ".join(f"{p} ({why})" for p, why in skipped) + f". Resuming from {newest}.")
            return newest
        if not os.path.isfile(path):
            raise ConfigError(f"ckpt_path: no checkpoint file at {path!r}; give an existing .ckpt or 'last'.")
        why = unreadable(path)
        if why is not None:
            raise ConfigError(
                f"ckpt_path: cannot read the checkpoint {path} ({why}); it may have been cut short while being "
                f"written. Give another checkpoint from {os.path.dirname(os.path.abspath(path))}, or --ckpt_path last "
                "to resume from the newest readable one."
            )
        return path

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        torch.set_num_threads(max(1, int(cfg.torch_threads)))
        # The batch is checked once, by the module's setup, on the datamodule the run uses (PPO.check_batch).
        L.seed_everything(cfg.data.seed, workers=True, verbose=False)

    def before_fit(self) -> None:
        """Runs the module's checks of the data (:meth:`lit_rl.algos.PPO.check_data`) before the trainer writes
        anything, so that a run that cannot train leaves no run folder, config copy or logger run."""
        if isinstance(self.model, PPO) and self.datamodule is not None:
            self.model.check_data(self.datamodule)
        if isinstance(self.datamodule, RolloutDataModule):
            self.datamodule.check_processes(self.trainer)
        self._fit_start = time.perf_counter()

    def after_fit(self) -> None:
        """Prints the run's summary (rank 0); under ``lit-rl sweep`` (``LIT_RL_SUMMARY_FILE`` set) also writes it
        for the sweep."""
        if not self.trainer.is_global_zero:
            return
        saver = next((c for c in self.trainer.callbacks if isinstance(c, SaveConfig)), None)
        config = os.path.abspath(saver.config_path) if getattr(saver, "config_path", None) else None
        requeued = any(getattr(c, "requeued", False) for c in self.trainer.callbacks)
        metrics = dict(self.model.metrics.last_logged) if isinstance(self.model, PPO) else {}
        env_steps = int(getattr(self.model, "env_steps", 0))
        resumed_at = self.model.metrics.start_env_steps if isinstance(self.model, PPO) else 0
        checkpoint = self.trainer.checkpoint_callback
        print(fit_summary(env_steps, resumed_at, time.perf_counter() - self._fit_start, metrics, config,
                          getattr(checkpoint, "dirpath", None), getattr(checkpoint, "last_model_path", "") or None,
                          requeued), flush=True)
        path = os.environ.get(SUMMARY_ENV)
        if path:
            with open(path, "w") as f:
                json.dump({"preempted": requeued, "metrics": metrics, "env_steps": env_steps, "config": config}, f,
                          indent=1)

    def after_test(self) -> None:
        self._print_evaluation("test")

    def after_validate(self) -> None:
        self._print_evaluation("val")

    def _print_evaluation(self, stage: str) -> None:
        metrics = self.trainer.callback_metrics
        key = f"{stage}/episodic_return_mean"
        if key in metrics and self.trainer.is_global_zero:
            print(f"{stage}: episodic return {float(metrics[key]):.2f} +- {float(metrics[f'{stage}/episodic_return_std']):.2f} "
                  f"over {int(metrics[f'{stage}/episodes'])} episodes (greedy actions)")


def fit_summary(env_steps: int, resumed_at: int, seconds: float, metrics: dict[str, float], config: Optional[str],
                checkpoints: Optional[str], last: Optional[str], requeued: bool) -> str:
    """Formats the block ``lit-rl fit`` prints at its end: env steps and wall time (the rate counts this fit's
    steps, after ``resumed_at``), the last training return, the greedy evaluation, and where the run's files
    are."""
    def show(path: Optional[str]) -> str:
        return os.path.relpath(path) if path and not os.path.relpath(path).startswith("..") else str(path)

    done = env_steps - resumed_at
    resumed = f", resumed at {resumed_at:,}" if resumed_at else ""
    lines = [f"lit-rl fit: {'stopped for a SLURM requeue' if requeued else 'done'} after {env_steps:,} env steps"
             f"{resumed}; {done:,} in {seconds:.1f} s ({done / max(seconds, 1e-9):,.0f} env steps/s)"]
    if "train/episodic_return" in metrics:
        lines.append(f"  training return  {metrics['train/episodic_return']:.2f} (mean of the episodes that ended in "
                     "the last iteration with any)")
    if "val/episodic_return_mean" in metrics:
        lines.append(f"  greedy eval      {metrics['val/episodic_return_mean']:.2f} +- "
                     f"{metrics['val/episodic_return_std']:.2f} over {int(metrics['val/episodes'])} episodes")
    else:
        lines.append("  greedy eval      not run")
    if config:
        lines.append(f"  logs             {show(os.path.dirname(config))}")
        lines.append(f"  config           {show(config)}")
    if checkpoints:
        lines.append(f"  checkpoints      {show(checkpoints)}" + (f" (last: {os.path.basename(last)})" if last else ""))
    return "\n".join(lines)


def _log_root(cfg: Any) -> Optional[str]:
    """Returns where the configured logger keeps its version folders (and so the checkpoints)."""
    logger = cfg.get("trainer", {}).get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    default_root = cfg.get("trainer", {}).get("default_root_dir") or "."
    if logger in (None, True):
        return os.path.join(default_root, "lightning_logs")
    if logger is False:
        return default_root
    init = getattr(logger, "init_args", None) or {}
    save_dir = init.get("save_dir") or init.get("dir") or default_root
    name = init.get("name")
    return os.path.join(save_dir, name) if name and "Wandb" not in str(getattr(logger, "class_path", "")) else save_dir


def refuse_moved_paths(argv: list[str]) -> None:
    """Raises a ConfigError naming the new path when a config file or argument names a class by a module path that
    moved (:data:`lit_rl.MOVED`), before jsonargparse buries its message among every type it tried."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(old) for old in MOVED) + r")\.\w+")
    texts = [("the command line", " ".join(argv))]
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else arg[9:] if arg.startswith("--config=") else None
        if path and os.path.isfile(path):
            with open(path) as f:
                texts.append((path, f.read()))
    for where, text in texts:
        found = pattern.search(text)
        if found:
            raise ConfigError(f"{where}: {found.group(0)}: {moved_message(found.group(1))}")


def main(args: Any = None) -> None:
    """Runs the ``lit-rl`` command (the console script's entry point)."""

    ConfigError.last = None
    note_requeue_signal_early()
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] == "sweep":
            from lit_rl.run.sweep import main as sweep_main

            sweep_main(argv[1:])
            return
        refuse_moved_paths(argv)
        LitRLCLI(args=args)
    except Exception as err:
        known = user_error(err)
        if known is None:
            raise
        print(f"lit-rl: error: {known}", file=sys.stderr)
        sys.exit(2 if isinstance(known, ConfigError) else 1)


if __name__ == "__main__":
    main()
