"""What lit_rl requires of gymnasium: pyproject.toml admits no release that breaks a run or its episode statistics,
and importing lit_rl beside one (pip keeps an installed gymnasium that an old pin let in) fails with one message
naming the installed version and the fix."""

import importlib
from pathlib import Path

import gymnasium
import pytest
from packaging.requirements import Requirement

import lit_rl

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

# 1.0 has no AutoresetMode (every run crashes); 1.1 to 1.3 miscount same-step autoreset episodes (Gymnasium PR #1624).
BROKEN = ["1.0.0", "1.0.1", "1.1.0", "1.1.1", "1.2.0", "1.2.1", "1.2.2", "1.3.0", "1.3.1"]
WORKING = ["1.4.0", "1.4.1", "1.5.0", "1.9.3"]


def gymnasium_requirement() -> Requirement:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    (requirement,) = [r for r in map(Requirement, pyproject["project"]["dependencies"]) if r.name == "gymnasium"]
    return requirement


def test_pyproject_admits_no_gymnasium_that_breaks_runs_or_episode_statistics():
    specifier = gymnasium_requirement().specifier
    assert not [v for v in BROKEN if specifier.contains(v)]
    assert all(specifier.contains(v) for v in WORKING)
    assert not specifier.contains("2.0.0")


@pytest.mark.parametrize("version", [*BROKEN, *WORKING, "2.0.0", "2.1.0a1", "1.4.0rc1", "1.4.0.dev0", "1.5.0b2"])
def test_lit_rl_refuses_the_gymnasium_releases_pyproject_excludes(version):
    """The check at import agrees with pyproject.toml on every release, pre-releases too (1.4.0rc1 comes before
    1.4), and a refusal names the version and the command that installs a good one."""
    if gymnasium_requirement().specifier.contains(version, prereleases=True):
        lit_rl.check_gymnasium(version)
    else:
        with pytest.raises(ImportError, match=rf"gymnasium {version} is installed.*pip install --upgrade "
                                              r"'gymnasium>=1\.4,<2'"):
            lit_rl.check_gymnasium(version)


def test_importing_lit_rl_beside_gymnasium_1_3_fails_naming_it(monkeypatch):
    monkeypatch.setattr(gymnasium, "__version__", "1.3.0")
    try:
        with pytest.raises(ImportError, match=r"gymnasium 1\.3\.0 is installed"):
            importlib.reload(lit_rl)
    finally:
        monkeypatch.undo()
        importlib.reload(lit_rl)
