"""Defines the initialised linear layer that the policy head (:mod:`.distributions`) and the trunks
(:mod:`.networks`) are built from; it imports nothing else from the package."""

import numpy as np
from torch import nn


def layer(in_dim: int, out_dim: int, gain: float = float(np.sqrt(2))) -> nn.Linear:
    """Builds a linear layer with orthogonal weights and zero bias (the PPO implementation-detail init)."""

    linear = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.zeros_(linear.bias)
    return linear
