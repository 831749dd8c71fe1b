"""Recurrent policies: what collection computed step by step is what training recomputes over sequences,
the shared summarizer belongs to the actor optimizer, and the POMDP wrapper hides what it should."""

import gymnasium as gym
import lightning as L
import numpy as np
import pytest
import torch

from lit_rl.algos.ppg import PPG
from lit_rl.algos.ppo import PPO
from lit_rl.algos.updater import share_of
from lit_rl.data.collector import Collector
from lit_rl.data.datamodule import RolloutDataModule
from lit_rl.errors import ConfigError
from lit_rl.nets import History
from lit_rl.envs.wrappers import MaskObservation
from tests.helpers import fit, make, read_metrics

POMDP = {"CartPole-v1": [1, 3], "Pendulum-v1": [2]}  # velocities hidden


def collector_for(module: PPO, env_id: str, num_envs: int = 4) -> Collector:
    data = RolloutDataModule(env_id=env_id, num_envs=num_envs, hide_observation=POMDP[env_id], vectorization_mode="sync")
    envs = data.make_envs(num_envs, training=True)
    torch.manual_seed(0)
    module.build(envs.single_observation_space, envs.single_action_space)
    collector = Collector(envs, noise_seed=5)
    collector.reset(seed=11)
    return collector


def recomputed(module: PPO, batch: dict, role: str) -> torch.Tensor:
    """Log-probs (actor) or values (critic) of every valid sample, recomputed over the batch's sequences."""
    idx = torch.arange(len(batch["returns"]))
    share = share_of(batch, idx)
    mb, history = share.data, share.history
    with torch.no_grad():
        if role == "actor":
            return module.agent.dist(mb["obs"], history).log_prob(mb["actions"]), mb["logprobs"]
        return module.agent.value(mb["obs"], history), mb["values"]


@pytest.mark.parametrize("env_id,recurrent,arch,bptt", [
    ("CartPole-v1", "lstm", "separate", None),
    ("CartPole-v1", "lstm", "shared", 16),
    ("CartPole-v1", "gru", "detach", 8),
    ("Pendulum-v1", "lstm", "separate", 16),
])
def test_collection_and_training_compute_the_same_logprobs_and_values(env_id, recurrent, arch, bptt):
    module = PPO(recurrent=recurrent, recurrent_size=32, arch=arch, bptt_length=bptt)
    collector = collector_for(module, env_id)
    # Pendulum episodes are 200 steps: 3 rollouts of 96 steps cross one (a truncation) in every env.
    starts_inside = 0
    for iteration in range(3):
        rollout = collector.collect(module, 96, env_steps=0, iteration=iteration)
        starts_inside += int(rollout.starts[1:].sum())
        batch = module.prepare_batch(rollout)
        for role in ("actor", "critic"):
            new, old = recomputed(module, batch, role)
            assert new.shape == old.shape == (int(rollout.valid.sum()),)
            assert (new - old).abs().max() <= 1e-5, role
    assert starts_inside >= 4, "episodes must start inside rollouts"
    collector.envs.close()


def test_the_state_resets_where_an_episode_starts():
    module = PPO(recurrent="lstm", recurrent_size=16)
    collector = collector_for(module, "CartPole-v1", num_envs=2)
    rollout = collector.collect(module, 64, env_steps=0, iteration=0)
    t, env = [int(i) for i in rollout.starts[1:].nonzero()[0]]
    t += 1
    # The output at an episode's first step does not depend on the state before it.
    obs = rollout.obs[t:t + 1, env:env + 1]
    starts = torch.ones(1, 1, dtype=torch.bool)
    with torch.no_grad():
        a = module.agent.value(obs, History(starts, torch.randn(1, module.agent.state_size)))
        b = module.agent.value(obs, History(starts, torch.zeros(1, module.agent.state_size)))
    assert torch.equal(a, b)
    collector.envs.close()


def test_each_optimizer_changes_exactly_the_parameters_it_owns_with_a_shared_summarizer(tmp_path):
    module, dm = make({"recurrent": "lstm", "recurrent_size": 16, "arch": "shared", "num_minibatches": 2,
                       "anneal_lr": False},
                      {"hide_observation": [1, 3], "vectorization_mode": "sync", "total_timesteps": 128})
    fit(module, dm, tmp_path)
    agent = module.agent
    summarizer = {id(p) for p in agent.policy_memory.parameters()}
    assert summarizer <= {id(p) for p in agent.actor_parameters()}  # the actor optimizer owns it
    assert not summarizer & {id(p) for p in agent.critic_parameters()}
    assert agent.value_memory is None

    collector = collector_for(module, "CartPole-v1")
    batch = module.prepare_batch(collector.collect(module, 32, env_steps=0, iteration=0))
    idx = torch.arange(len(batch["returns"]))
    for role, loss_fn, owned in (("actor", module.actor_loss, agent.actor_parameters()),
                                 ("critic", module.critic_loss, agent.critic_parameters())):
        before = {name: p.detach().clone() for name, p in agent.named_parameters()}
        with module.updaters[role].toggled():
            module.updaters[role].step(loss_fn, share_of(batch, idx), "test")
        owned_ids = {id(p) for p in owned}
        for name, p in agent.named_parameters():
            changed = not torch.equal(before[name], p.detach())
            assert changed == (id(p) in owned_ids), name
    collector.envs.close()


def test_recurrent_ppo_and_ppg_train_and_evaluate_through_the_cli_path(tmp_path):
    for cls, extra in ((PPO, {}), (PPG, {"n_pi": 2, "aux_minibatch_size": 4})):
        module, dm = make({"recurrent": "gru", "recurrent_size": 16, "num_minibatches": 2, "bptt_length": 16, **extra},
                          {"hide_observation": [1, 3], "vectorization_mode": "sync", "total_timesteps": 512,
                           "eval_episodes": 2}, cls=cls)
        fit(module, dm, tmp_path / cls.__name__)
        rows = read_metrics(next((tmp_path / cls.__name__).rglob("metrics.csv")))
        assert max(r.get("env_steps", 0) for r in rows) == 512
        if cls is PPG:
            assert max(r.get("train/aux_phases", 0) for r in rows) == 2
        dm.setup("test")  # greedy evaluation runs (whether it carries the state: the cue test below)
        returns, lengths = dm.eval_collector.evaluate(module, 4, seed=0)
        dm.teardown("test")
        assert len(returns) == 4 and np.array_equal(returns, lengths)  # CartPole: +1 per step


class Forgetful:
    """A recurrent module acting with its state zeroed before every step: what evaluation would do if it
    dropped the state between steps."""

    def __init__(self, module: PPO) -> None:
        self.module = module
        self.device = module.device

    def initial_state(self, batch: int) -> torch.Tensor:
        return self.module.initial_state(batch)

    def act(self, obs: torch.Tensor, deterministic: bool = False, noise=None, history: History | None = None):
        history.state = torch.zeros_like(history.state)
        return self.module.act(obs, deterministic=deterministic, noise=noise, history=history)


def test_greedy_evaluation_carries_the_state_through_each_episode(tmp_path):
    """On the cue task (tests/envs.py: the cue is seen at the first step only and must be named at the last)
    a policy wins only by carrying its state through the episode; without it, it is right half the time."""
    module, dm = make({"recurrent": "lstm", "recurrent_size": 16, "hidden_sizes": [32], "num_minibatches": 2,
                       "anneal_lr": False, "actor_optimizer": lambda p: torch.optim.Adam(p, lr=3e-3),
                       "critic_optimizer": lambda p: torch.optim.Adam(p, lr=3e-3)},
                      {"env_id": "tests.envs:Cue-v0", "num_envs": 8, "num_steps": 24, "total_timesteps": 3072,
                       "vectorization_mode": "sync", "eval_episodes": 64, "eval_envs": 8})
    fit(module, dm, tmp_path)
    # The path of `lit-rl validate`: the datamodule's eval collector, greedy actions, episodes to the end.
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.validate(module, datamodule=dm, verbose=False)
    metrics = trainer.callback_metrics
    assert metrics["val/episodes"] == 64 and metrics["val/episodic_length_mean"] == 3
    assert metrics["val/episodic_return_mean"] == 1.0, "every episode's last action must name its cue"
    # The task tells the two apart: the same networks with the state dropped at every step do no better than
    # chance (their last action is the same whatever the cue).
    dm.setup("validate")
    returns, _ = dm.eval_collector.evaluate(Forgetful(module), 64, seed=dm.seed + 1_000_000)
    dm.teardown("validate")
    assert len(returns) == 64 and returns.mean() < 0.75


def test_bad_recurrent_settings_are_refused():
    with pytest.raises(ConfigError, match="model.bptt_length"):
        PPO.check_batch(4, 30, 1, "lstm", 8)
    with pytest.raises(ConfigError, match="model.num_minibatches"):
        PPO.check_batch(2, 32, 3, "lstm", 16)
    with pytest.raises(ConfigError, match="model.recurrent"):
        PPO(recurrent="transformer")
    with pytest.raises(ConfigError, match="model.aux_minibatch"):
        PPG(recurrent="lstm", aux_minibatch="samples")


def test_mask_observation_hides_the_chosen_components():
    env = MaskObservation(gym.make("CartPole-v1"), hide=[1, 3])
    full = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=4)
    ref, _ = full.reset(seed=4)
    assert env.observation_space.shape == (2,) and np.array_equal(obs, ref[[0, 2]])
    data = RolloutDataModule(env_id="CartPole-v1", num_envs=4, hide_observation=[1, 3])  # native vector env
    envs = data.make_envs(4, training=True)
    assert envs.single_observation_space.shape == (2,) and envs.reset(seed=0)[0].shape == (4, 2)
    with pytest.raises(ConfigError, match="data.hide_observation"):
        RolloutDataModule(env_id="CartPole-v1", num_envs=4, hide_observation=[0, 1, 2, 3]).make_envs(4, training=True)
