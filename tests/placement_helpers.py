"""Callbacks for the placement tests, loaded by every process of a distributed `lit-rl fit`."""

import os

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
