"""lit_rl: actor-critic reinforcement learning on PyTorch Lightning and gymnasium."""

import importlib.abc
import sys

import gymnasium
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from lit_rl.errors import ConfigError

__all__ = ["ConfigError"]
__version__ = "0.1.0"

# The gymnasium releases lit_rl runs on, as pyproject.toml requires them. 1.0 has no
# gymnasium.vector.AutoresetMode; in 1.1 to 1.3 the vector RecordEpisodeStatistics ignores same-step autoreset
# (Procgen), so every episode after an env's first is counted one step short, without its first reward (fixed
# in 1.4 by Gymnasium PR #1624).
GYMNASIUM = ">=1.4,<2"


def check_gymnasium(version: str) -> None:
    """An ImportError naming ``version`` and the fix unless :data:`GYMNASIUM` admits it, pre-releases included
    (as PEP 440 reads the range: 1.4.0rc1 comes before 1.4 and is refused, 1.5.0b2 is taken, 2.0.0a1 is not)."""
    try:
        admitted = SpecifierSet(GYMNASIUM).contains(Version(version), prereleases=True)
    except InvalidVersion:
        admitted = False
    if not admitted:
        raise ImportError(
            f"lit_rl needs gymnasium{GYMNASIUM}; gymnasium {version} is installed (1.0 has no AutoresetMode; 1.1 to "
            "1.3 count same-step autoreset episodes one step short). pip does not upgrade an installed gymnasium by "
            f"itself: pip install --upgrade 'gymnasium{GYMNASIUM}'")


check_gymnasium(gymnasium.__version__)


# Modules that moved when the package was regrouped (the algorithms' math into objectives, the run's machinery
# into run/, the wrappers beside the envs). Importing an old name, as an old config's class_path or a script
# does, fails with the new name in the message instead of a bare "No module named".
MOVED = {
    "lit_rl.losses": "lit_rl.objectives",
    "lit_rl.returns": "lit_rl.objectives",
    "lit_rl.gradients": "lit_rl.objectives",
    "lit_rl.wrappers": "lit_rl.envs.wrappers",
    **{f"lit_rl.{name}": f"lit_rl.run.{name}" for name in ("cli", "callbacks", "checkpoints", "loggers", "sweep")},
}


def moved_message(fullname: str) -> str:
    """Says where a moved module went and what to change."""
    return (f"{fullname} is now {MOVED[fullname]}: change the import, or the class_path in your config "
            f"({fullname}.<name> -> {MOVED[fullname]}.<name>).")


class _MovedModules(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if fullname in MOVED:
            raise ModuleNotFoundError(moved_message(fullname), name=fullname)
        return None


sys.meta_path.insert(0, _MovedModules())


def __getattr__(name: str) -> object:
    # jsonargparse resolves a class_path through attributes of the package: the same message there.
    if f"lit_rl.{name}" in MOVED:
        raise AttributeError(moved_message(f"lit_rl.{name}"))
    raise AttributeError(f"module 'lit_rl' has no attribute {name!r}")
