"""Resume restores everything: optimizer state, normalization statistics, env-step count, RNG."""

import copy

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.helpers import fit, make, read_metrics

NORM = {"normalize_observation": True, "normalize_reward": True, "clip_observation": 10.0, "clip_reward": 10.0}


def test_resume_restores_optimizer_and_normalization_state(tmp_path):
    module, dm = make(data={"total_timesteps": 1024, **NORM})
    fit(module, dm, tmp_path / "a")
    ckpt = tmp_path / "a" / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["env_steps"] == 1024

    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["optimizers"] = copy.deepcopy([opt.state_dict() for opt in trainer.optimizers])
            seen["data"] = copy.deepcopy(trainer.datamodule.state_dict())
            seen["env_steps"] = pl_module.env_steps

    module2, dm2 = make(data={"total_timesteps": 2048, **NORM})
    fit(module2, dm2, tmp_path / "b", ckpt_path=str(ckpt), callbacks=[Probe()])

    assert seen["env_steps"] == 1024
    for now, then in zip(seen["optimizers"], saved["optimizer_states"]):
        assert now["state"].keys() == then["state"].keys() and now["state"]
        for key in now["state"]:
            for name, value in now["state"][key].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(then["state"][key][name])), name
    for stats in ("obs_rms", "return_rms"):
        for field in ("mean", "var"):
            assert torch.equal(seen["data"][stats][field], saved["RolloutDataModule"][stats][field])
        assert seen["data"][stats]["count"] == saved["RolloutDataModule"][stats]["count"] > 500
    assert dm2.env_steps == 2048 and module2.env_steps == 2048
    schedulers = module2.lr_schedulers()
    assert schedulers[0].last_epoch == 2048 // 128  # the LR schedule continued too


def test_extending_a_run_re_targets_the_lr_schedule_to_the_new_budget(tmp_path):
    """A run of 8 iterations (1024 steps) annealed its LR to 0. Resumed with twice the budget, the schedule
    anneals over 16 iterations: right after the resume (iteration 8) the LR is base * (1 - 8/16), not 0."""
    base = 1e-3  # torch.optim.Adam's default, PPO's default optimizer
    module, dm = make(data={"total_timesteps": 1024})
    fit(module, dm, tmp_path / "a")
    ckpt = tmp_path / "a" / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0  # the first run ended at LR 0

    seen = {}

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("lrs", [group["lr"] for opt in trainer.optimizers for group in opt.param_groups])

    module2, dm2 = make(data={"total_timesteps": 2048})
    trainer = fit(module2, dm2, tmp_path / "b", ckpt_path=str(ckpt), callbacks=[Probe()])
    assert seen["lrs"] == [pytest.approx(base * (1 - 8 / 16))] * 2 and seen["lrs"][0] > 0
    rows = [r for r in read_metrics(next((tmp_path / "b").rglob("metrics.csv"))) if "train/lr_actor" in r]
    assert [r["train/lr_actor"] for r in rows] == pytest.approx([base * (1 - k / 16) for k in range(9, 17)])
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 16
