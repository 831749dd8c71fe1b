"""Fixtures shared by the test files."""

import functools

import pytest

from tests.helpers import lit_rl_in_process


@pytest.fixture
def cli(capfd):
    """``cli("fit", ..., cwd=path)``: ``lit-rl`` run in this process, its output captured (tests.helpers)."""
    return functools.partial(lit_rl_in_process, capfd=capfd)
