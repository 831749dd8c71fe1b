"""Algorithms: LightningModules under manual optimization."""

from lit_rl.algos.ppo import PPO

__all__ = ["PPO"]
