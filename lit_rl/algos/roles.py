"""Names the roles an algorithm trains, declares each one's update, and says where the roles run as the algorithm
sees it.

``ROLES`` are the roles that learn, in the order of their optimizers. The algorithm declares each role's update
once, as a :class:`RoleSpec`; a :class:`~lit_rl.algos.updater.RoleUpdater` runs it. A spec's loss takes a
:class:`Share` and returns ``(loss, stats)``: the loss already weighted by the share's ``weight`` (or a tuple of
weighted terms that share a trunk, combined by gradient surgery), and the unweighted stats of the share, which
the updater scales so the group's mean is the minibatch's.

:class:`Placement` is the interface the algorithm runs its roles through. This module defines it, beside the
roles, so the algorithms never import the distributed strategy that implements it
(:class:`~lit_rl.distributed.ActorCriticPlacement`); the strategy imports the roles from here.
"""

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from lit_rl.data.rollout import Rollout
from lit_rl.nets import History

ROLES = ("actor", "critic")  # the roles that learn; "rollout" (collecting) is the placement's own third role
Stats = dict[str, list[Tensor]]  # per-step values by name


@dataclass
class Share:
    """Holds this process's share of one minibatch: its valid samples as flat tensors (``obs`` stays
    ``[L, B, ...]`` for a recurrent pass), the :class:`History` that pass needs, the share's ``weight`` (its fraction
    of the minibatch's valid samples), and the whole minibatch's valid samples of a field, by ``whole(key)``."""

    data: dict[str, Tensor]
    history: Optional[History]
    weight: float
    whole: Callable[[str], Tensor]


LossFn = Callable[[Share], tuple[Any, dict[str, Tensor]]]


@dataclass(frozen=True)
class RoleSpec:
    """Declares one role's update: ``epochs`` epochs over the batch, each split into ``minibatches`` minibatches
    drawn from the shuffle stream ``stream``, with one optimizer step on ``loss`` per minibatch. With ``target_kl``,
    the epochs end once an epoch's mean approx KL (the loss's ``approx_kl`` stat, averaged over the role's group)
    exceeds it."""

    loss: LossFn
    epochs: int
    stream: str
    minibatches: int
    target_kl: Optional[float] = None


class Placement:
    """Says where the roles run, as the algorithm sees it. This base class is one process holding every role:
    gathering, merging, reducing and the weight exchange pass straight through. The algorithm runs the same
    code under it and under :class:`~lit_rl.distributed.ActorCriticPlacement`; it has no branches on placement.

    The algorithm tells the placement which optimizer belongs to which role (:meth:`assign_optimizers`, from
    ``configure_optimizers``); the placement never probes the module.
    """

    def __init__(self) -> None:
        self.optimizer_roles: dict[int, str] = {}  # id of an optimizer -> its role

    def assign_optimizers(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Records which role each optimizer belongs to."""
        self.optimizer_roles = {id(optimizer): role for role, optimizer in optimizers.items()}

    @property
    def roles(self) -> list[str]:
        """Lists the roles this process trains."""
        return list(ROLES)

    def group_size(self, role: str) -> int:
        """Counts the processes that train ``role``."""
        return 1

    def member(self, role: str) -> tuple[int, int]:
        """Returns ``(index of this process in role's group, group size)``."""
        return 0, 1

    def collector_slot(self) -> tuple[Optional[int], int]:
        """Returns ``(index of this process among those that collect, or None where it collects nothing; how many
        processes collect)``."""
        return 0, 1

    def gather_rollout(self, rollout: Rollout) -> Rollout:
        """Joins the rollouts of all processes into one."""
        return rollout

    def reduce_gradients(self, params: list[Tensor], role: str) -> bool:
        """Sums the gradients of ``params`` over ``role``'s group; returns whether the sums are finite (a lone
        process has checked its own loss: True)."""
        return True

    def reduce_mean(self, value: Tensor, role: str) -> Tensor:
        """Averages ``value`` over ``role``'s group."""
        return value

    def sync_weights(self, params_by_role: dict[str, list[Tensor]]) -> None:
        """Gives every process each role's parameters as that role's first process has them."""

    def merge_stats(self, stats: Stats, steps: dict[str, int]) -> tuple[Stats, int]:
        """Merges every process's per-step stats by name; counts the iteration's optimizer steps as one process
        holding every role counts them, given this process's ``steps`` by role (each role's steps as its first
        process took them)."""
        return stats, sum(steps.values())

    def from_role(self, obj: Any, role: str) -> Any:
        """Returns ``obj`` as the first process of ``role`` has it."""
        return obj

    def wait_for_role(self) -> None:
        """Waits, between the first and the second role of an update, where the second must wait for the first."""
