"""Gathers experience: vector environments, the collector that steps them, and the DataModule that feeds rollouts."""

from lit_rl.data.collector import Collector, Policy
from lit_rl.data.datamodule import RolloutDataModule
from lit_rl.data.rollout import Rollout

__all__ = ["Collector", "Policy", "Rollout", "RolloutDataModule"]
