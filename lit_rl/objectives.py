"""Implements the algorithms' math as pure tensor functions: advantages and value targets (GAE), PPO's and PPG's
losses, and gradient surgery for losses that share a trunk. Losses return ``(loss, stats)``; stats are detached
diagnostics."""

from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Computes advantages by generalized advantage estimation (Schulman et al. 2016, eq. 16).

    All inputs are ``[T, N]``. ``next_values[t]`` is the value of the true next observation of step ``t``:
    on a step that ended an episode it is the value of that episode's final observation, not of the
    observation the environment was reset to.

    - ``terminated[t]``: the episode ended in a terminal state, so nothing is bootstrapped.
    - ``truncated[t]``: the episode was cut (time limit), so the step bootstraps from ``next_values[t]``.

    Either flag cuts the advantage trace, since the next step belongs to another episode.
    Returns ``(advantages, returns)`` with ``returns = advantages + values`` (the value targets).
    """
    not_terminated = 1.0 - terminated.to(values.dtype)
    not_done = 1.0 - (terminated | truncated).to(values.dtype)
    # TD residual: delta_t = r_t + gamma * V(s_{t+1}) - V(s_t), no bootstrap past a terminal state.
    deltas = rewards + gamma * next_values * not_terminated - values
    decay = gamma * lam * not_done
    advantages = torch.zeros_like(values)
    # On a CPU, in float32 or float64 and without gradients, the recursion runs on numpy views of the same
    # tensors: the same operations, one by one, at a microsecond a step instead of torch's ten (a rollout has
    # hundreds of steps). Elsewhere (a GPU, bfloat16, gradients) on the tensors.
    numpy_rows = (deltas.device.type == "cpu" and deltas.dtype in (torch.float32, torch.float64)
                  and not deltas.requires_grad)
    delta_rows, decay_rows, advantage_rows = ((deltas.numpy(), decay.numpy(), advantages.numpy()) if numpy_rows
                                              else (deltas, decay, advantages))
    running = advantage_rows[0] + 0.0  # zeros, of the rows' kind (an array or a tensor)
    with np.errstate(all="ignore"):  # a non-finite reward gives NaN silently, as torch does
        for t in range(values.shape[0] - 1, -1, -1):
            # A_t = delta_t + gamma * lambda * A_{t+1}, cut at episode ends.
            running = delta_rows[t] + decay_rows[t] * running
            advantage_rows[t] = running
    return advantages, advantages + values


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_coef: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Computes the clipped surrogate objective (Schulman et al. 2017, eq. 7) as a loss to minimize.

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
    """Computes the squared error of the value prediction, ``0.5 * (V - R)^2``.

    With ``clip_coef`` set, it takes the PPO2 clipped form: the larger of the plain error and the error of the
    prediction clipped to ``old_values +- clip_coef``.
    """
    error = (values - returns).pow(2)
    if clip_coef is not None:
        clipped = old_values + (values - old_values).clamp(-clip_coef, clip_coef)
        error = torch.max(error, (clipped - returns).pow(2))
    loss = 0.5 * error.mean()
    return loss, {}


def normalize_advantages(advantages: Tensor, over: Tensor) -> Tensor:
    """Standardizes ``advantages`` with the mean and std of ``over`` (the whole minibatch's advantages, when
    ``advantages`` is one rank's share of it); returns them as given where ``over`` has fewer than two samples."""
    if over.numel() < 2:
        return advantages
    return (advantages - over.mean()) / (over.std() + 1e-8)


def actor_objective(dist: Any, actions: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_coef: float,
                    values: Optional[Tensor] = None, old_values: Optional[Tensor] = None,
                    returns: Optional[Tensor] = None, value_clip: Optional[float] = None
                    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Returns the actor's terms, by name, for the caller to weight: ``policy`` (the clipped-surrogate loss),
    ``entropy`` (the policy's mean entropy, a bonus) and, where the actor's trunk also feeds a value head
    (``values`` given), ``value`` (:func:`value_loss` of it). Also returns the stats: each term, detached, with
    the approx KL and clip fraction."""
    loss_policy, stats = policy_loss(dist.log_prob(actions), old_logprobs, advantages, clip_coef)
    entropy = dist.entropy().mean()
    terms = {"policy": loss_policy, "entropy": entropy}
    if values is not None:
        assert old_values is not None and returns is not None
        terms["value"], _ = value_loss(values, old_values, returns, value_clip)
    return terms, {"policy_loss": loss_policy.detach(), "entropy": entropy.detach(), **stats}


def aux_value_loss(aux_values: Tensor, returns: Tensor) -> Tensor:
    """Computes PPG's auxiliary value loss (and its phase's value loss): ``0.5 * MSE``, unclipped, as the
    reference's ``vf_aux`` and ``vf_true``."""
    return 0.5 * (aux_values - returns).pow(2).mean()


def clone_kl(pi_old: Any, pi: Any) -> Tensor:
    """Computes PPG's behaviour-cloning term ``KL(pi_old || pi)``, averaged over the samples."""
    return pi_old.kl(pi).mean()


def pcgrad(grads: Sequence[Tensor], eps: float = 1e-12) -> tuple[Tensor, dict[str, Tensor]]:
    """Combines gradients by Projecting Conflicting Gradients (Yu et al. 2020, "Gradient Surgery for Multi-Task
    Learning", Alg. 1).


    ``grads`` are the flat gradients of each loss over the same parameters. Where two of them conflict
    (negative dot product), each is projected onto the normal plane of the other,
    ``g_i <- g_i - (g_i . g_j) / |g_j|^2 * g_j``, which removes exactly the component that opposes
    ``g_j``. The projected gradients are summed. Without a conflict the result is the plain sum.

    Returns the combined gradient and ``{"grad_conflict": 1.0 if any pair conflicted else 0.0,
    "grad_cosine": cosine of the first two gradients before surgery}``.
    """
    originals = [g.detach() for g in grads]
    projected = []
    conflict = originals[0].new_zeros(())
    for i, g in enumerate(originals):
        g = g.clone()
        for j, other in enumerate(originals):
            if i == j:
                continue
            dot = torch.dot(g, other)
            if dot < 0:
                g = g - dot / other.pow(2).sum().clamp_min(eps) * other
                conflict = originals[0].new_ones(())
        projected.append(g)
    cosine = originals[0].new_zeros(())
    if len(originals) > 1:
        cosine = torch.nn.functional.cosine_similarity(originals[0], originals[1], dim=0, eps=eps)
    return torch.stack(projected).sum(0), {"grad_conflict": conflict, "grad_cosine": cosine}
