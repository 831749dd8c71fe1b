"""Callbacks for the placement tests, loaded by every process of a distributed `lit-rl fit`."""

import os
import time

import lightning as L
import torch


class SaveRankParams(L.Callback):
    """At the end of training, each rank writes its parameters to ``dirpath/rank<r>.pt``."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, os.path.join(self.dirpath, f"rank{trainer.global_rank}.pt"))


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
