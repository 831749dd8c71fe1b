"""Exports the algorithms: LightningModules under manual optimization."""

from lit_rl.algos.ppg import PPG
from lit_rl.algos.ppo import PPO

__all__ = ["PPG", "PPO"]
