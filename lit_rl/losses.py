"""The losses, as pure functions: PPO's clipped surrogate, value loss, advantage normalization and actor terms, and
PPG's auxiliary value loss and clone KL. Stats are detached diagnostics."""

from typing import Any, Optional

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


def normalize_advantages(advantages: Tensor, over: Tensor) -> Tensor:
    """``advantages`` standardized with the mean and std of ``over`` (the whole minibatch's advantages, when
    ``advantages`` is one rank's share of it); as given where ``over`` has fewer than two samples."""
    if over.numel() < 2:
        return advantages
    return (advantages - over.mean()) / (over.std() + 1e-8)


def actor_objective(dist: Any, actions: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_coef: float,
                    values: Optional[Tensor] = None, old_values: Optional[Tensor] = None,
                    returns: Optional[Tensor] = None, value_clip: Optional[float] = None
                    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The actor's terms, by name, for the caller to weight: ``policy`` (the clipped-surrogate loss),
    ``entropy`` (the policy's mean entropy, a bonus) and, where the actor's trunk also feeds a value head
    (``values`` given), ``value`` (:func:`value_loss` of it). Also the stats: each term, detached, with the
    approx KL and clip fraction."""
    loss_policy, stats = policy_loss(dist.log_prob(actions), old_logprobs, advantages, clip_coef)
    entropy = dist.entropy().mean()
    terms = {"policy": loss_policy, "entropy": entropy}
    if values is not None:
        assert old_values is not None and returns is not None
        terms["value"], _ = value_loss(values, old_values, returns, value_clip)
    return terms, {"policy_loss": loss_policy.detach(), "entropy": entropy.detach(), **stats}


def aux_value_loss(aux_values: Tensor, returns: Tensor) -> Tensor:
    """PPG's auxiliary value loss (and its phase's value loss): ``0.5 * MSE``, unclipped, as the reference's
    ``vf_aux`` and ``vf_true``."""
    return 0.5 * (aux_values - returns).pow(2).mean()


def clone_kl(pi_old: Any, pi: Any) -> Tensor:
    """PPG's behaviour-cloning term ``KL(pi_old || pi)``, averaged over the samples."""
    return pi_old.kl(pi).mean()
