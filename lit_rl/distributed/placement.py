"""Places the actor, the critic and the collection of rollouts on their own ranks: a Lightning strategy.

The ranks in ``rollout_ranks`` (default: all) each collect a shard of the run's envs. The shards are
gathered, so all ranks hold one rollout batch and compute the same advantages with the pre-update critic. The ranks in ``actor_ranks`` train the
actor, those in ``critic_ranks`` the critic; a rank in both groups does both (one process: the serial
case). Gradients are all-reduced within a role's group only; there is no DDP wrapper around the module,
since each rank updates only its roles. After the update, the actor's weights are broadcast from the
first actor rank and the critic's from the first critic rank, so every rank ends the iteration with the
same parameters and collects the next rollout with them.

Rollout ranks that are not learners (``rollout_ranks`` or ``rollout_nodes`` given: the actor and critic
then default to the other ranks) only collect. With ``data.collection: overlapped`` each runs its own
collector processes, so rollout ``j + 1`` is collected on the rollout ranks while the learners update on
rollout ``j``; the broadcast of the new weights is what reaches the rollout ranks, which publish it to
their collectors (:mod:`lit_rl.data.overlap`). A learner that collects nothing hands the gather a
:class:`~lit_rl.data.rollout.NoRollout`.

``update_mode: parallel`` lets the two groups update at the same time; ``serial`` makes the second role
(in the module's ``update_order``) wait for the first. The numbers are the same either way: both roles
read the advantages computed before any update.

The roles and the interface the algorithm runs them through (:class:`~lit_rl.algos.roles.Placement`, one process
holding every role) are the algorithm's; this strategy implements that interface on several processes.

Every collective, the strategy's own and Lightning's, is bounded: a rank that dies or stops answering
ends the others with a :class:`~lit_rl.errors.PeerLostError` within ``timeout_s`` seconds (at once when its
connection closes), instead of a hang.
"""

import os
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator, Literal, Optional

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from lit_rl.algos.roles import ROLES, Placement, Stats
from lit_rl.data.rollout import ENV_DIM, NoRollout, Rollout, join
from lit_rl.errors import ConfigError, PeerLostError

UpdateMode = Literal["serial", "parallel"]


def gather_rollout(rollout: Rollout | NoRollout, world_size: int,
                   all_gather: Callable[[list[Tensor], Tensor, str], None],
                   all_gather_object: Callable[[Any], list[Any]], device: torch.device) -> Rollout:
    """Joins the rollouts of every rank that collected into one, as the layout each field declares
    (:mod:`lit_rl.data.rollout`) says; joined in rank order.

    One ``all_gather_object`` carries each rank's class, per-episode and per-round values, and the shape of
    each env-wise field; the env-wise tensors then go by ``all_gather(parts, tensor, name)``. A rank that
    collects nothing hands a :class:`NoRollout`: it adds no envs, no episodes and no per-round values, and
    receives the others'. Shares may differ in their env count: each is padded to the largest for the
    all-gather and cut back after it."""
    layout = type(rollout).layout() if isinstance(rollout, Rollout) else {}
    mine = None
    if isinstance(rollout, Rollout):
        values = {name: getattr(rollout, name) for name in layout}
        mine = (type(rollout),
                {name: v.cpu() if isinstance(v, Tensor) else v for name, v in values.items() if layout[name] not in ENV_DIM},
                {name: None if v is None else (tuple(v.shape), v.dtype) for name, v in values.items() if layout[name] in ENV_DIM})
    reports = all_gather_object(mine)
    senders = [r for r, report in enumerate(reports) if report is not None]
    if not senders:
        raise RuntimeError("gather_rollout: no rank collected a rollout (every rank handed a NoRollout)")
    cls = reports[senders[0]][0]
    parts: dict[str, list[Any]] = {}
    for name, kind in cls.layout().items():
        if kind not in ENV_DIM:
            parts[name] = [_to(reports[r][1][name], device) for r in senders]
            continue
        shapes = [reports[r][2][name] for r in senders]
        if shapes[0] is None:  # e.g. initial_state of a feed-forward policy
            parts[name] = [None] * len(senders)
            continue
        dim, (shape, dtype) = ENV_DIM[kind], shapes[0]
        widths = [s[dim] for s, _ in shapes]
        wire = torch.uint8 if dtype == torch.bool else dtype  # not every backend gathers bools
        value = getattr(rollout, name) if isinstance(rollout, Rollout) else None
        if value is not None and value.shape[dim] == max(widths):
            local = value.to(wire).contiguous()
        else:  # a smaller share, or none: padded to the largest
            local = torch.zeros((*shape[:dim], max(widths), *shape[dim + 1:]), dtype=wire, device=device)
            if value is not None:
                local.narrow(dim, 0, value.shape[dim]).copy_(value)
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        all_gather(gathered, local, name)
        parts[name] = [gathered[r].narrow(dim, 0, width).to(dtype) for r, width in zip(senders, widths)]
    return join(cls, parts)


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, Tensor) else value


class ActorCriticPlacement(DDPStrategy, Placement):
    """Runs DDP processes with the actor on ``actor_ranks`` and the critic on ``critic_ranks``.

    Args:
        actor_ranks: Global ranks that train the actor; default: all.
        critic_ranks: Global ranks that train the critic; default: all. The groups may overlap.
        rollout_ranks: Global ranks that collect rollouts; default: all. When given (or ``rollout_nodes``), the
            actor and critic default to the ranks not listed here, and every rank must have a role.
        actor_nodes: Instead of ``actor_ranks``: the nodes (``NODE_RANK``) whose processes train the actor.
        critic_nodes: Instead of ``critic_ranks``: the nodes whose processes train the critic.
        rollout_nodes: Instead of ``rollout_ranks``: the nodes whose processes collect.
        update_mode: ``parallel`` or ``serial`` (see the module docstring).
        timeout_s: Seconds a collective waits for the other ranks before it fails. In parallel mode a rank
            waits for the other group's update at the weight exchange, so keep it above the longest update
            (a PPG auxiliary phase included); with rollout ranks learners wait at the gather for the
            collection, so keep it above the longest rollout too (the first one includes starting collectors).
        **kwargs: DDPStrategy's arguments (``process_group_backend``: ``gloo`` on CPU, ``nccl`` on GPUs).
    """

    strategy_name = "actor_critic_placement"

    def __init__(self, actor_ranks: Optional[list[int]] = None, critic_ranks: Optional[list[int]] = None,
                 actor_nodes: Optional[list[int]] = None, critic_nodes: Optional[list[int]] = None,
                 rollout_ranks: Optional[list[int]] = None, rollout_nodes: Optional[list[int]] = None,
                 update_mode: UpdateMode = "parallel", timeout_s: float = 300.0, **kwargs: Any) -> None:
        if update_mode not in ("serial", "parallel"):
            raise ConfigError(f"trainer.strategy.init_args.update_mode: {update_mode!r} is not one of "
                              "['serial', 'parallel'].")
        if not timeout_s > 0:
            raise ConfigError(f"trainer.strategy.init_args.timeout_s: {timeout_s} must be a positive number of seconds.")
        for role, ranks, nodes in (("actor", actor_ranks, actor_nodes), ("critic", critic_ranks, critic_nodes),
                                   ("rollout", rollout_ranks, rollout_nodes)):
            if ranks is not None and nodes is not None:
                raise ConfigError(f"trainer.strategy.init_args: {role}_ranks and {role}_nodes are both set; "
                                  "give one of them.")
        super().__init__(timeout=timedelta(seconds=timeout_s), **kwargs)
        Placement.__init__(self)
        self.requested = {"actor": actor_ranks, "critic": critic_ranks, "rollout": rollout_ranks}
        self.requested_nodes = {"actor": actor_nodes, "critic": critic_nodes, "rollout": rollout_nodes}
        self.update_mode = update_mode
        self.timeout_s = timeout_s
        self.ranks: dict[str, list[int]] = {}
        self.groups: dict[str, Any] = {}

    # ------------------------------------------------------------------ groups
    def setup_distributed(self) -> None:
        if self.process_group_backend == "nccl" or (self.process_group_backend is None and self.root_device.type == "cuda"):
            # NCCL collectives are asynchronous; blocking wait makes a timeout raise in the caller (so it
            # becomes a PeerLostError) instead of the watchdog aborting the process.
            os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
        env = self.cluster_environment
        hint = (f"All {self.num_nodes * self.num_processes} processes (trainer.num_nodes={self.num_nodes} x "
                f"trainer.devices={self.num_processes}) must join at {env.main_address}:{env.main_port}. On "
                "several nodes, start the same command on every node with its NODE_RANK and the same MASTER_ADDR "
                "and MASTER_PORT (a cluster launcher such as SLURM's srun sets them)")
        with self.bounded("joining the process group", list(range(self.num_nodes * self.num_processes)), hint):
            super().setup_distributed()
        self.ranks = self.role_ranks()
        # Every rank creates every group, in the same order (torch.distributed requires it).
        with self.bounded("creating the actor and critic groups", list(range(self.world_size))):
            self.groups = {role: dist.new_group(self.ranks[role], timeout=self._timeout) for role in ROLES}

    def role_ranks(self) -> dict[str, list[int]]:
        """Returns the ranks of each role, ``rollout`` included, from the requested ranks or nodes and the processes
        the trainer starts (known before they join: the datamodule asks at the CLI's checks)."""
        if self.ranks:
            return self.ranks
        requested = self.nodes_to_ranks(self.requested, self.requested_nodes, self.num_nodes, self.num_processes)
        return self.check_ranks(requested, self.num_nodes * self.num_processes)

    def collector_slot(self) -> tuple[Optional[int], int]:
        collecting = self.role_ranks()["rollout"]
        rank = self.global_rank
        return (collecting.index(rank) if rank in collecting else None), len(collecting)

    @staticmethod
    def nodes_to_ranks(ranks: dict[str, Optional[list[int]]], nodes: dict[str, Optional[list[int]]],
                       num_nodes: int, per_node: int) -> dict[str, Optional[list[int]]]:
        """Replaces, in ``ranks``, each role given by nodes with the global ranks of those nodes' processes."""
        out = dict(ranks)
        for role, chosen in nodes.items():
            if chosen is None:
                continue
            _require_within(f"{role}_nodes", chosen, chosen, num_nodes, "node(s) (nodes",
                            "trainer.num_nodes). Give nodes in that range, or raise trainer.num_nodes.")
            out[role] = [node * per_node + local for node in chosen for local in range(per_node)]
        return out

    @staticmethod
    def check_ranks(requested: dict[str, Optional[list[int]]], world_size: int) -> dict[str, list[int]]:
        """Returns the ranks of each role (``actor``, ``critic``, ``rollout``); raises a ConfigError where the
        processes cannot host the groups. Rollout ranks default to all; given, the learners default to the other ranks."""
        everyone = list(range(world_size))
        rollout = requested.get("rollout")
        learners = everyone if rollout is None else ([r for r in everyone if r not in rollout] or everyone)
        ranks = {}
        for role in ("rollout", *ROLES):
            given = requested.get(role)
            chosen = sorted(set((everyone if role == "rollout" else learners) if given is None else given))
            _require_within(f"{role}_ranks", given, chosen, world_size, "process(es) (ranks",
                            "trainer.num_nodes x trainer.devices). Give ranks in that range, or start more processes.")
            ranks[role] = chosen
        idle = [r for r in everyone if not any(r in ranks[role] for role in ranks)]
        if rollout is not None and idle:
            raise ConfigError(f"trainer.strategy.init_args: rank(s) {idle} have no role (in none of actor_ranks "
                              f"{ranks['actor']}, critic_ranks {ranks['critic']}, rollout_ranks {ranks['rollout']}); "
                              "give each process a role, or start fewer processes.")
        return ranks

    # ------------------------------------------------------------------ bounded collectives
    @contextmanager
    def bounded(self, what: str, ranks: Optional[list[int]] = None, hint: Optional[str] = None) -> Iterator[None]:
        """Turns a collective that fails (a rank died, or did not answer within ``timeout_s``) into one
        clear :class:`PeerLostError`; ``hint`` replaces the usual advice."""
        start = time.monotonic()
        try:
            yield
        except RuntimeError as err:  # torch.distributed.DistError and gloo/nccl errors are RuntimeErrors
            if isinstance(err, PeerLostError):
                raise
            ranks = list(range(self.world_size)) if ranks is None else ranks
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            hint = hint or ("Its own log says why; if it is only slower (a long update or PPG auxiliary phase, or "
                            "a long rollout on the rollout ranks), raise timeout_s")
            raise PeerLostError(
                f"rank {self.global_rank}: {what} with ranks {ranks} failed after {time.monotonic() - start:.1f} s: "
                "another rank died or did not answer within trainer.strategy.init_args.timeout_s="
                f"{self.timeout_s:g} s. {hint}. ({type(err).__name__}: {first_line})"
            ) from err

    def barrier(self, *args: Any, **kwargs: Any) -> None:
        with self.bounded(f"barrier {args[0] if args else ''}".strip()):
            super().barrier(*args, **kwargs)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        with self.bounded(f"broadcast from rank {src}"):
            return super().broadcast(obj, src)

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        with self.bounded("all-reduce"):
            return super().reduce(*args, **kwargs)

    def all_gather(self, *args: Any, **kwargs: Any) -> Tensor:
        with self.bounded("all-gather"):
            return super().all_gather(*args, **kwargs)

    @property
    def roles(self) -> list[str]:
        """Lists the roles this rank trains."""
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
        """Joins the rollouts of all ranks into one, envs in rank order (rank 0's envs first)."""
        if self.world_size == 1:
            return rollout

        def all_gather(parts: list[Tensor], tensor: Tensor, name: str) -> None:
            with self.bounded(f"gathering the rollout ({name})"):
                dist.all_gather(parts, tensor)

        return gather_rollout(rollout, self.world_size, all_gather, self.all_gather_object, self.root_device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Gathers ``obj`` from every rank, in rank order."""
        gathered: list[Any] = [None] * self.world_size
        with self.bounded("all-gather of an object"):
            dist.all_gather_object(gathered, obj)
        return gathered

    def reduce_gradients(self, params: list[Tensor], role: str) -> bool:
        """Sums the gradients of ``params`` over ``role``'s group (the losses are pre-weighted).

        A parameter the loss does not reach keeps ``grad=None`` (as with one rank), so the optimizer skips
        it rather than stepping on a zero gradient: Adam's momentum would move it. Every rank of the group
        runs the same loss, so all agree on which parameters have gradients. Returns whether the summed
        gradients are finite (the same answer on every rank of the group).
        """
        if self.world_size == 1 or self.group_size(role) == 1:
            return True
        params = [p for p in params if p.grad is not None]
        if not params:
            return True
        flat = torch.cat([p.grad.flatten() for p in params])
        with self.bounded(f"summing the {role}'s gradients", self.ranks[role]):
            dist.all_reduce(flat, group=self.groups[role])
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        return bool(torch.isfinite(flat).all())

    def reduce_mean(self, value: Tensor, role: str) -> Tensor:
        """Averages ``value`` over ``role``'s group."""
        if self.world_size == 1 or self.group_size(role) == 1:
            return value
        value = value.clone()
        with self.bounded(f"averaging over the {role}'s group", self.ranks[role]):
            dist.all_reduce(value, group=self.groups[role])
        return value / self.group_size(role)

    def member(self, role: str) -> tuple[int, int]:
        """Returns ``(index of this rank in role's group, group size)``."""
        return self.ranks[role].index(self.global_rank), self.group_size(role)

    def sync_weights(self, params_by_role: dict[str, list[Tensor]]) -> None:
        """Broadcasts each role's parameters from its first rank to every rank."""
        if self.world_size == 1:
            return
        for role in ROLES:
            params = params_by_role[role]
            flat = parameters_to_vector([p.detach() for p in params])
            with self.bounded(f"sending the {role}'s weights from rank {self.ranks[role][0]}"):
                dist.broadcast(flat, src=self.ranks[role][0])
            with torch.no_grad():
                vector_to_parameters(flat, params)

    def merge_stats(self, stats: Stats, steps: dict[str, int]) -> tuple[Stats, int]:
        """Merges every rank's per-step stats by name, so rank 0 logs those of the roles it did not run; and counts
        the run's optimizer steps of the iteration (each role's, as its first rank took them), in the same
        all-gather.

        The ranks of a group take the same steps, each on its share of every minibatch: a step's value is
        the mean over the ranks that report it, and the number of steps stays that of one rank.
        """
        if self.world_size == 1:
            return stats, sum(steps.values())
        mine = {key: [float(v) for v in values] for key, values in stats.items()}
        gathered = self.all_gather_object((mine, steps))
        reports: dict[str, list[list[float]]] = {}
        for theirs, _ in gathered:
            for key, values in theirs.items():
                reports.setdefault(key, []).append(values)
        merged = {key: [torch.tensor(sum(step) / len(step)) for step in zip(*lists)] for key, lists in reports.items()}
        return merged, sum(gathered[self.ranks[role][0]][1][role] for role in ROLES)

    def from_role(self, obj: Any, role: str) -> Any:
        """Returns ``obj`` as the first rank of ``role`` has it."""
        if self.world_size == 1:
            return obj
        box = [obj]
        with self.bounded(f"sending the {role}'s state from rank {self.ranks[role][0]}"):
            dist.broadcast_object_list(box, src=self.ranks[role][0])
        return box[0]

    def wait_for_role(self) -> None:
        """Makes the second role's ranks wait here, in ``serial`` mode, until the first role has updated."""
        if self.update_mode == "serial" and self.world_size > 1:
            self.barrier("lit_rl.serial_update")

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
        """Returns the state of ``optimizer`` as its role's first rank holds it, for the checkpoint rank 0 writes."""
        state = optimizer.state_dict()
        role = self.optimizer_roles.get(id(getattr(optimizer, "optimizer", optimizer)))
        if role is None and self.world_size > 1:
            raise RuntimeError("ActorCriticPlacement: an optimizer no role was assigned to is being checkpointed; the "
                               "module must call placement.assign_optimizers in configure_optimizers.")
        return state if role is None else self.from_role(state, role)

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="actor and critic on their own ranks")


def _require_within(key: str, given: Any, chosen: list[int], count: int, unit: str, fix: str) -> None:
    """Raises a ConfigError naming ``trainer.strategy.init_args.<key>`` unless ``chosen`` is a non-empty subset of
    ``0..count-1``."""
    if not chosen or any(not 0 <= i < count for i in chosen):
        raise ConfigError(f"trainer.strategy.init_args.{key}: {given} cannot be hosted by {count} {unit} "
                          f"0..{count - 1}; {fix}")


ActorCriticPlacement.register_strategies(StrategyRegistry)
