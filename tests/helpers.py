"""Shared test helpers: a programmatic fit, and reading metrics.csv."""

import csv
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger

from lit_rl.algos.ppo import PPO
from lit_rl.callbacks import EnvStepCheckpoint
from lit_rl.data.datamodule import RolloutDataModule

REPO = Path(__file__).resolve().parent.parent

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
