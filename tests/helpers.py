"""Shared test helpers: running the `lit-rl` command, a programmatic fit, random PPO batches, reading metrics.csv."""

import csv
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lit_rl.algos.ppo import PPO
from lit_rl.run.callbacks import EnvStepCheckpoint
from lit_rl.run.cli import main
from lit_rl.data.datamodule import RolloutDataModule

REPO = Path(__file__).resolve().parent.parent

# Every `lit-rl` command of the tests ends with this: the one quiet test config (no progress bar or model summary;
# the CPU).
QUIET = ["--config", str(REPO / "tests/configs/quiet.yaml")]
OBS = gym.spaces.Box(-1, 1, (4,), np.float32)
TINY_DATA = dict(env_id="CartPole-v1", num_envs=4, num_steps=32, total_timesteps=256, seed=3, eval_episodes=2)


def make(model: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
         cls: type[PPO] = PPO) -> tuple[PPO, RolloutDataModule]:
    L.seed_everything((data or {}).get("seed", TINY_DATA["seed"]), verbose=False)
    return cls(**(model or {})), RolloutDataModule(**{**TINY_DATA, **(data or {})})


def fit(module: PPO, datamodule: RolloutDataModule, root: Path, ckpt_path: str | None = None,
        every_n_env_steps: int = 0, callbacks: list | None = None) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=-1, logger=CSVLogger(root, name="logs", flush_logs_every_n_steps=1), default_root_dir=root,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[EnvStepCheckpoint(every_n_env_steps=every_n_env_steps, dirpath=root / "ckpt"), *(callbacks or [])],
    )
    trainer.fit(module, datamodule, ckpt_path=ckpt_path)
    return trainer


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics.csv, empty cells dropped."""
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def lit_rl(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Runs the installed console script."""
    exe = Path(sys.executable).parent / "lit-rl"
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"lit-rl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def lit_rl_in_process(*args: str, cwd: Path, capfd=None, check: bool = True) -> subprocess.CompletedProcess:
    """Runs ``lit-rl`` in this process (``lit_rl.run.cli.main``), as :func:`lit_rl` runs the console script: the
    same arguments, working folder and result (exit code, stdout, stderr), without a new interpreter's
    start-up and imports. For runs of one process; a run that starts processes of its own (a placement
    preset's ranks) needs :func:`lit_rl`. The environment variables a run sets (Lightning's seed) and its torch
    threads are undone.
    ``capfd`` (pytest's fixture) captures the output; without it, stdout and stderr come back empty."""
    env, here, argv, threads = dict(os.environ), os.getcwd(), sys.argv, torch.get_num_threads()
    grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
    sys.argv = ["lit-rl"]  # LightningCLI warns when it gets both args and pytest's command line
    if capfd is not None:
        capfd.readouterr()
    # Lightning's loggers write to the stderr of when they were imported (pytest's collection): this run's.
    handlers = [h for name in ("lightning.pytorch", "lightning.fabric") for h in logging.getLogger(name).handlers
                if type(h) is logging.StreamHandler]
    streams = [h.stream for h in handlers]
    for handler in handlers:
        handler.setStream(sys.stderr)
    os.chdir(cwd)
    code = 0
    try:
        with warnings.catch_warnings():  # warnings go to stderr, as the console script prints them, not to pytest
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            main(list(args))
    except SystemExit as exit_info:
        code = 0 if exit_info.code is None else exit_info.code if isinstance(exit_info.code, int) else 1
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and not grouped:
            torch.distributed.destroy_process_group()  # a placement strategy's group of one process
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream)
        sys.argv = argv
        torch.set_num_threads(threads)  # a config's torch_threads (the CNN configs set 2) stays with its run
        os.chdir(here)
        os.environ.clear()
        os.environ.update(env)
    out, err = capfd.readouterr() if capfd is not None else ("", "")
    if check and code != 0:
        raise AssertionError(f"lit-rl {' '.join(args)} failed ({code}):\n{out[-3000:]}\n{err[-5000:]}")
    return subprocess.CompletedProcess(["lit-rl", *args], code, out, err)


def run_main(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code), capsys.readouterr().err


def random_batch(n: int = 64, action_space: gym.Space = gym.spaces.Discrete(2)) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    actions = torch.as_tensor(np.stack([action_space.sample() for _ in range(n)]))
    return {"obs": torch.randn(n, 4, generator=gen), "actions": actions, "logprobs": -torch.rand(n, generator=gen),
            "values": torch.randn(n, generator=gen), "advantages": torch.randn(n, generator=gen) * 3 + 1,
            "returns": torch.randn(n, generator=gen)}


def grads_of(params) -> list[bool]:
    return [p.grad is not None and p.grad.abs().sum().item() > 0 for p in params]
