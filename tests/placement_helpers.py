"""Callbacks for the placement tests, loaded by every process of a distributed `lit-rl fit`."""

import json
import os
import socket
import time

import lightning as L
import torch
from torch.nn.utils import parameters_to_vector


class SaveRankParams(L.Callback):
    """At the end of training, each rank writes

    - ``dirpath/rank<r>.pt``: its parameters (the module's state dict);
    - ``dirpath/rank<r>.roles.pt``: each role's parameters as one vector, ``final`` (as the rank ends) and
      ``updated`` (for the roles this rank trains: as its own last update left them, before the weight
      exchange overwrote them with the role's first rank's), and its datamodule's state (normalization
      statistics);
    - ``dirpath/rank<r>.json``: where it ran (node rank, SLURM node name), its roles, which of its optimizers
      ever stepped (a rank that only holds the critic never steps the actor optimizer), and its datamodule's
      env count and iterations.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self.updated: dict[str, torch.Tensor] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        strategy = trainer.strategy
        exchange = getattr(strategy, "sync_weights", None)
        if exchange is None:  # not under ActorCriticPlacement: nothing is exchanged
            return

        def record_then_exchange(params_by_role: dict[str, list[torch.Tensor]]) -> None:
            self.updated = {role: flat(params_by_role[role]) for role in strategy.roles}
            exchange(params_by_role)

        strategy.sync_weights = record_then_exchange

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        rank = trainer.global_rank
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, os.path.join(self.dirpath, f"rank{rank}.pt"))
        agent = pl_module.agent
        final = {"actor": flat(agent.actor_parameters()), "critic": flat(agent.critic_parameters())}
        data = trainer.datamodule
        torch.save({"final": final, "updated": self.updated, "data": data.state_dict()},
                   os.path.join(self.dirpath, f"rank{rank}.roles.pt"))
        stepped = {role: bool(opt.state) for role, opt in zip(("actor", "critic"), pl_module.optimizers())}
        info = {"global_rank": rank, "node_rank": trainer.node_rank, "host": socket.gethostname(),
                "slurm_node": os.environ.get("SLURMD_NODENAME"), "roles": getattr(trainer.strategy, "roles", None),
                "stepped": stepped, "env_steps": int(pl_module.env_steps),
                "envs": data.envs_per_process, "iterations": data.iteration,
                "global_step": trainer.global_step}
        with open(os.path.join(self.dirpath, f"rank{rank}.json"), "w") as f:
            json.dump(info, f)


def flat(params: list[torch.Tensor]) -> torch.Tensor:
    return parameters_to_vector([p.detach() for p in params]).cpu().clone()


class FailRank(L.Callback):
    """Makes one rank fail at the start of an iteration: ``exit`` ends its process at once (as a crash or a
    lost node would), ``hang`` stops it answering (as a stuck or frozen process would)."""

    def __init__(self, rank: int, iteration: int, how: str = "exit") -> None:
        self.rank, self.iteration, self.how = rank, iteration, how

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, batch_idx: int) -> None:
        if trainer.global_rank != self.rank or batch_idx != self.iteration:
            return
        if self.how == "exit":
            os._exit(17)
        time.sleep(3600)
