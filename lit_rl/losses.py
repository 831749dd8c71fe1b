"""PPO losses: pure functions returning ``(loss, stats)``; stats are detached diagnostics."""

from typing import Optional

import torch
from torch import Tensor


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_coef: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017, eq. 7), as a loss to minimize.

    ``advantages`` are used as given: normalize them before the call if you want them normalized.
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    surrogate = advantages * ratio
    clipped = advantages * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)
    loss = -torch.min(surrogate, clipped).mean()
    with torch.no_grad():
        # Low-variance KL(old || new) estimator, k3 in Schulman's "Approximating KL divergence".
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return loss, {"approx_kl": approx_kl, "clip_fraction": clip_fraction}


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, clip_coef: Optional[float]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Squared error of the value prediction, ``0.5 * (V - R)^2``.

    With ``clip_coef`` set, the PPO2 clipped form: the larger of the plain error and the error of the
    prediction clipped to ``old_values +- clip_coef``.
    """
    error = (values - returns).pow(2)
    if clip_coef is not None:
        clipped = old_values + (values - old_values).clamp(-clip_coef, clip_coef)
        error = torch.max(error, (clipped - returns).pow(2))
    loss = 0.5 * error.mean()
    return loss, {}
