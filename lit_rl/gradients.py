"""Combining the gradients of several losses that share parameters: pure functions on flat vectors."""

from typing import Sequence

import torch
from torch import Tensor


def pcgrad(grads: Sequence[Tensor], eps: float = 1e-12) -> tuple[Tensor, dict[str, Tensor]]:
    """Projecting Conflicting Gradients (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Alg. 1).

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
