"""A data-parallel group whose minibatch has fewer rows than the group has ranks: the ranks with an empty
share add nothing, and the step goes on (it crashed with a reshape of 0 elements)."""

import gymnasium as gym
import torch

from lit_rl.algos.ppo import PPO

from tests.helpers import REPO, TINY, lit_rl

# 2 envs x 4 steps = 8 rows, minus autoreset steps, in 8 minibatches: minibatches of one row, so one of the
# two ranks of each group has an empty share of every step.
ONE_ROW_MINIBATCHES = ["--config", str(REPO / "configs/ppo/cartpole.yaml"), "--data.num_envs", "2",
                       "--data.num_steps", "4", "--data.total_timesteps", "96", "--data.vectorization_mode", "sync",
                       "--model.init_args.num_minibatches", "8", "--model.init_args.update_epochs", "2",
                       "--trainer.limit_val_batches", "0", "--checkpoint.every_n_env_steps", "0",
                       "--trainer.accelerator", "cpu", *TINY]


def train(tmp_path, name: str, *extra: str) -> dict[str, torch.Tensor]:
    lit_rl("fit", *ONE_ROW_MINIBATCHES, "--trainer.logger.save_dir", str(tmp_path / name),
           "--trainer.callbacks+=tests.placement_helpers.SaveRankParams",
           "--trainer.callbacks.dirpath", str(tmp_path / name / "params"), *extra, cwd=tmp_path)
    return torch.load(tmp_path / name / "params" / "rank0.pt", weights_only=True)


def test_empty_shares_of_a_minibatch_add_nothing(tmp_path):
    one = train(tmp_path, "one")
    two = train(tmp_path, "two", "--config", str(REPO / "configs/placement/data_parallel.yaml"),
                "--trainer.devices", "2", "--trainer.strategy.process_group_backend", "gloo")
    assert one.keys() == two.keys()
    for key, value in one.items():
        assert torch.allclose(two[key], value, atol=1e-6, rtol=0), key
    # Both trained: the networks moved away from their initial weights (data.seed 1).
    env = gym.make("CartPole-v1")
    initial = PPO()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        initial.build(env.observation_space, env.action_space)
    moved = [key for key, value in initial.state_dict().items() if (one[key] - value).abs().max() > 1e-4]
    assert any(k.startswith("agent.actor") or "policy" in k for k in moved) and len(moved) > len(one) // 2, moved
