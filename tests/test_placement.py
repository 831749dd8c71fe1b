"""The actor/critic placement strategy on CPU (gloo): parallel updates on two processes give what the serial
update in one process gives, and every rank ends each run with the same parameters."""

from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from tests.test_cli import TINY, lit_rl

SMALL = ["--data.total_timesteps", "2048", "--data.num_steps", "32", "--data.vectorization_mode", "sync",
         "--model.init_args.num_minibatches", "2", "--trainer.limit_val_batches", "0", "--trainer.accelerator", "cpu",
         "--checkpoint.every_n_env_steps", "0", *TINY]


def run(tmp_path: Path, name: str, config: str, envs: int, processes: int, *extra: str) -> dict[int, dict]:
    """Trains with ``envs`` envs in all, split over ``processes``; returns each rank's final parameters."""
    args = ["fit", "--config", str(REPO / config), *SMALL, "--data.num_envs", str(envs // processes),
            "--trainer.logger.save_dir", str(tmp_path / name),
            "--trainer.callbacks+=tests.placement_helpers.SaveRankParams",
            "--trainer.callbacks.dirpath", str(tmp_path / name / "params")]
    if processes > 1:
        args += ["--trainer.devices", str(processes), "--trainer.strategy", "lit_rl.distributed.ActorCriticPlacement",
                 "--trainer.strategy.process_group_backend", "gloo"]
    lit_rl(*args, *extra, cwd=tmp_path)
    return {r: torch.load(tmp_path / name / "params" / f"rank{r}.pt", weights_only=True) for r in range(processes)}


def max_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("config,extra", [
    ("configs/ppo/cartpole.yaml", ["--model.init_args.update_epochs", "2"]),
    ("configs/ppg/cartpole.yaml", ["--model.init_args.n_pi", "4", "--model.init_args.actor_epochs", "2",
                                   "--model.init_args.critic_epochs", "2"]),  # 8 iterations: two aux phases
])
def test_parallel_actor_and_critic_ranks_match_the_serial_update(tmp_path, config, extra):
    serial = run(tmp_path, "serial", config, 8, 1, *extra)[0]
    parallel = run(tmp_path, "parallel", config, 8, 2, *extra, "--trainer.strategy.actor_ranks", "[0]",
                   "--trainer.strategy.critic_ranks", "[1]", "--trainer.strategy.update_mode", "parallel")
    assert max_diff(parallel[0], parallel[1]) == 0.0  # all ranks end with the same parameters
    assert max_diff(serial, parallel[0]) <= 1e-6


def test_ranks_that_do_not_exist_are_refused(tmp_path):
    proc = lit_rl("fit", "--config", str(REPO / "configs/ppo/cartpole.yaml"), *SMALL, "--data.num_envs", "4",
                  "--trainer.devices", "2", "--trainer.strategy", "lit_rl.distributed.ActorCriticPlacement",
                  "--trainer.strategy.process_group_backend", "gloo", "--trainer.strategy.critic_ranks", "[3]",
                  cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "critic_ranks" in proc.stderr and "2 process" in proc.stderr
