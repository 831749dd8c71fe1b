"""A Lightning strategy that places the actor and the critic on their own ranks.

Every rank collects a shard of the run's envs. The shards are gathered, so all ranks hold one rollout
batch and compute the same advantages with the pre-update critic. The ranks in ``actor_ranks`` train the
actor, those in ``critic_ranks`` the critic; a rank in both groups does both (one process: the serial
case). Gradients are all-reduced within a role's group only; there is no DDP wrapper around the module,
since each rank updates only its roles. After the update, the actor's weights are broadcast from the
first actor rank and the critic's from the first critic rank, so every rank ends the iteration with the
same parameters and collects the next rollout with them.

``update_mode: parallel`` lets the two groups update at the same time; ``serial`` makes the second role
(in the module's ``update_order``) wait for the first. The numbers are the same either way: both roles
read the advantages computed before any update.

Collectives time out after ``timeout_s`` seconds, so a dead rank ends the others with an error instead of
a hang.
"""

from datetime import timedelta
from typing import Any, Literal, Optional

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from lit_rl.data.rollout import Rollout
from lit_rl.errors import ConfigError

ROLES = ("actor", "critic")
UpdateMode = Literal["serial", "parallel"]
# Rollout fields with the env dimension at index 1 ([T, N, ...]) and at index 0 ([N, ...]).
_TIME_MAJOR = ("obs", "actions", "logprobs", "values", "rewards", "terminated", "truncated", "valid")
_ENV_MAJOR = ("last_value", "last_obs")


class ActorCriticPlacement(DDPStrategy):
    """DDP processes with the actor on ``actor_ranks`` and the critic on ``critic_ranks``.

    Args:
        actor_ranks: Global ranks that train the actor; default: all.
        critic_ranks: Global ranks that train the critic; default: all. The groups may overlap.
        update_mode: ``parallel`` or ``serial`` (see the module docstring).
        timeout_s: Seconds a collective waits for the other ranks before it fails.
        **kwargs: DDPStrategy's arguments (``process_group_backend``: ``gloo`` on CPU, ``nccl`` on GPUs).
    """

    strategy_name = "actor_critic_placement"

    def __init__(self, actor_ranks: Optional[list[int]] = None, critic_ranks: Optional[list[int]] = None,
                 update_mode: UpdateMode = "parallel", timeout_s: float = 300.0, **kwargs: Any) -> None:
        if update_mode not in ("serial", "parallel"):
            raise ConfigError(f"trainer.strategy.update_mode: {update_mode!r} is not one of ['serial', 'parallel'].")
        super().__init__(timeout=timedelta(seconds=timeout_s), **kwargs)
        self.requested = {"actor": actor_ranks, "critic": critic_ranks}
        self.update_mode = update_mode
        self.ranks: dict[str, list[int]] = {}
        self.groups: dict[str, Any] = {}

    # ------------------------------------------------------------------ groups
    def setup_distributed(self) -> None:
        super().setup_distributed()
        self.ranks = self.check_ranks(self.requested, self.world_size)
        # Every rank creates every group, in the same order (torch.distributed requires it).
        self.groups = {role: dist.new_group(self.ranks[role]) for role in ROLES}

    @staticmethod
    def check_ranks(requested: dict[str, Optional[list[int]]], world_size: int) -> dict[str, list[int]]:
        """The ranks of each role; a ConfigError where the processes cannot host the groups."""
        ranks = {}
        for role in ROLES:
            chosen = sorted(set(range(world_size) if requested[role] is None else requested[role]))
            bad = [r for r in chosen if not 0 <= r < world_size]
            if not chosen or bad:
                raise ConfigError(
                    f"trainer.strategy.init_args.{role}_ranks: {requested[role]} cannot be hosted by {world_size} "
                    f"process(es) (ranks 0..{world_size - 1}; trainer.num_nodes x trainer.devices). Give ranks in "
                    "that range, or start more processes."
                )
            ranks[role] = chosen
        return ranks

    @property
    def roles(self) -> list[str]:
        """The roles this rank trains."""
        return [role for role in ROLES if self.global_rank in self.ranks.get(role, range(self.world_size))]

    def group_size(self, role: str) -> int:
        return len(self.ranks[role])

    # ------------------------------------------------------------------ no DDP wrapper
    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def configure_ddp(self) -> None:
        self.model = self._setup_model(self.model)

    # ------------------------------------------------------------------ data and weights
    def gather_rollout(self, rollout: Rollout) -> Rollout:
        """The rollouts of all ranks as one, envs in rank order (rank 0's envs first)."""
        if self.world_size == 1:
            return rollout
        fields = dict(vars(rollout))
        for key in (*_TIME_MAJOR, *_ENV_MAJOR):
            tensor = fields[key]
            as_int = tensor.dtype == torch.bool
            local = tensor.to(torch.uint8) if as_int else tensor
            parts = [torch.empty_like(local) for _ in range(self.world_size)]
            dist.all_gather(parts, local.contiguous())
            joined = torch.cat(parts, 1 if key in _TIME_MAJOR else 0)
            fields[key] = joined.bool() if as_int else joined
        episodes = self.all_gather_object((fields["episode_returns"].cpu(), fields["episode_lengths"].cpu()))
        fields["episode_returns"] = torch.cat([e[0] for e in episodes]).to(rollout.episode_returns.device)
        fields["episode_lengths"] = torch.cat([e[1] for e in episodes]).to(rollout.episode_lengths.device)
        fields["rollout_time"] = max(self.all_gather_object(rollout.rollout_time))
        return Rollout(**fields)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` from every rank, in rank order."""
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def reduce_gradients(self, params: list[Tensor], role: str) -> None:
        """Sums the gradients of ``params`` over ``role``'s group (the losses are pre-weighted)."""
        if self.world_size == 1 or self.group_size(role) == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat, group=self.groups[role])
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def reduce_mean(self, value: Tensor, role: str) -> Tensor:
        """The mean of ``value`` over ``role``'s group."""
        if self.world_size == 1 or self.group_size(role) == 1:
            return value
        value = value.clone()
        dist.all_reduce(value, group=self.groups[role])
        return value / self.group_size(role)

    def member(self, role: str) -> tuple[int, int]:
        """``(index of this rank in role's group, group size)``."""
        return self.ranks[role].index(self.global_rank), self.group_size(role)

    def sync_weights(self, params_by_role: dict[str, list[Tensor]]) -> None:
        """Broadcasts each role's parameters from its first rank to every rank."""
        if self.world_size == 1:
            return
        for role in ROLES:
            params = params_by_role[role]
            flat = parameters_to_vector([p.detach() for p in params])
            dist.broadcast(flat, src=self.ranks[role][0])
            with torch.no_grad():
                vector_to_parameters(flat, params)

    def merge_stats(self, stats: dict[str, list[Tensor]]) -> dict[str, list[Tensor]]:
        """Every rank's per-step stats, merged by name (rank 0 logs them all)."""
        if self.world_size == 1:
            return stats
        mine = {key: [float(v) for v in values] for key, values in stats.items()}
        merged: dict[str, list[Tensor]] = {}
        for theirs in self.all_gather_object(mine):
            for key, values in theirs.items():
                merged.setdefault(key, []).extend(torch.tensor(v) for v in values)
        return merged

    def from_role(self, obj: Any, role: str) -> Any:
        """``obj`` as the first rank of ``role`` has it."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=self.ranks[role][0])
        return box[0]

    def wait_for_role(self) -> None:
        """In ``serial`` mode, the second role's ranks wait here until the first role has updated."""
        if self.update_mode == "serial" and self.world_size > 1:
            self.barrier("lit_rl.serial_update")

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
        """The state of ``optimizer`` as its role's first rank holds it, for the checkpoint rank 0 writes."""
        state = optimizer.state_dict()
        module = self.lightning_module
        role = module.optimizer_role(optimizer) if module is not None and hasattr(module, "optimizer_role") else None
        return state if role is None else self.from_role(state, role)

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="actor and critic on their own ranks")


ActorCriticPlacement.register_strategies(StrategyRegistry)
