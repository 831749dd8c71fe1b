"""Callbacks for the placement tests, loaded by every process of a distributed `lit-rl fit`."""

import json
import os
import socket
import time

import lightning as L
import torch


class SaveRankParams(L.Callback):
    """At the end of training, each rank writes its parameters to ``dirpath/rank<r>.pt``, and to
    ``dirpath/rank<r>.json`` where it ran: node rank, SLURM node name, its roles, and which of its
    optimizers ever stepped (a rank that only holds the critic never steps the actor optimizer)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, os.path.join(self.dirpath, f"rank{trainer.global_rank}.pt"))
        stepped = {role: bool(opt.state) for role, opt in zip(("actor", "critic"), pl_module.optimizers())}
        info = {"global_rank": trainer.global_rank, "node_rank": trainer.node_rank, "host": socket.gethostname(),
                "slurm_node": os.environ.get("SLURMD_NODENAME"), "roles": getattr(trainer.strategy, "roles", None),
                "stepped": stepped, "env_steps": int(pl_module.env_steps)}
        with open(os.path.join(self.dirpath, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(info, f)


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
