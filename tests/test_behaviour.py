"""A refactor changes no numbers: every config, and the placement presets, trained for a few iterations with a
fixed seed end with the parameters (every rank's) and log the training metrics that the reference recorded
before the change (tests/reference/behaviour.pt; scripts/behaviour_reference.py), exactly, on CPU."""

import pytest
import torch

from scripts.behaviour_reference import CASES, REFERENCE, differences, run_case


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE, weights_only=False)["cases"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_training_matches_the_reference_exactly(tmp_path, reference, name):
    result = run_case(name, tmp_path)
    assert result["metrics"] and result["params"]
    assert differences(reference[name], result) == []
