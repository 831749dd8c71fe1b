"""lit_rl: actor-critic reinforcement learning on PyTorch Lightning and gymnasium."""

from lit_rl.errors import ConfigError

__all__ = ["ConfigError"]
__version__ = "0.1.0"
