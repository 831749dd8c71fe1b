"""lit_rl: actor-critic reinforcement learning on PyTorch Lightning and gymnasium."""

import re

import gymnasium

from lit_rl.errors import ConfigError

__all__ = ["ConfigError"]
__version__ = "0.1.0"

# The gymnasium releases lit_rl runs on, as pyproject.toml requires them: [1.4, 2). 1.0 has no
# gymnasium.vector.AutoresetMode; in 1.1 to 1.3 the vector RecordEpisodeStatistics ignores same-step autoreset
# (Procgen), so every episode after an env's first is counted one step short, without its first reward (fixed
# in 1.4 by Gymnasium PR #1624).
GYMNASIUM = ((1, 4), (2, 0))


def check_gymnasium(version: str) -> None:
    """An ImportError naming ``version`` and the fix unless it is one of :data:`GYMNASIUM`'s releases."""
    low, high = GYMNASIUM
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None or not low <= (int(match[1]), int(match[2])) < high:
        raise ImportError(
            f"lit_rl needs gymnasium>={low[0]}.{low[1]},<{high[0]}; gymnasium {version} is installed (1.0 has no "
            "AutoresetMode; 1.1 to 1.3 count same-step autoreset episodes one step short). pip does not upgrade an "
            f"installed gymnasium by itself: pip install --upgrade 'gymnasium>={low[0]}.{low[1]},<{high[0]}'")


check_gymnasium(gymnasium.__version__)
