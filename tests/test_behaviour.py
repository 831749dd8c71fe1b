"""A refactor changes no numbers: every config, and the placement presets, trained for a few iterations with a
fixed seed end with the parameters (every rank's) and log the training metrics that the reference recorded
before the change (tests/reference/behaviour.pt; scripts/behaviour_reference.py), on CPU, to within a tolerance
that another CPU's rounding stays far below and the smallest real changes tried go far past (measured in
results/behaviour_tolerance.md); counts, logged keys, ranks and shapes exactly. The Pendulum cases are held on
their first logged row (scripts/behaviour_reference.py's DIVERGENT says why)."""

import pytest
import torch

from scripts.behaviour_reference import CASES, DIVERGENT, REFERENCE, differences, run_case


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE, weights_only=False)["cases"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_training_matches_the_reference(tmp_path, reference, name):
    result = run_case(name, tmp_path)
    assert result["metrics"] and result["params"]
    assert differences(reference[name], result, name in DIVERGENT) == []


# Overlapped collection at policy lag 0 is the synchronous run: every single-process case gives the reference's
# numbers (the multi-process overlapped layouts are checked against one-process runs in tests/test_placement.py).
ONE_PROCESS = [name for name in CASES if not name.startswith("placement/") or name.endswith("single_device")]
OVERLAPPED_LAG_0 = ("--data.collection", "overlapped", "--data.policy_lag", "0")


@pytest.mark.slow
@pytest.mark.parametrize("name", ONE_PROCESS)
def test_overlapped_collection_at_lag_0_matches_the_reference(tmp_path, reference, name):
    result = run_case(name, tmp_path, OVERLAPPED_LAG_0)
    assert result["metrics"] and result["params"]
    assert differences(reference[name], result, name in DIVERGENT) == []
