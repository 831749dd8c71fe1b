"""Observation and reward normalization: the reward scale on time-limited tasks, and statistics that stay
fixed during a rollout and take the whole rollout's moments at its end. That the statistics are merged over
processes is checked with real processes in tests/test_placement.py."""

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit

from lit_rl.data.normalization import DeferredRunningMeanStd, Normalization
from lit_rl.envs.wrappers import NormalizeObservation, NormalizeReward

LIMIT, GAMMA = 50, 0.98


class ConstantRewardEnv(gym.Env):
    """Reward 1 at every step and no terminal state: under a time limit, every episode ends by truncation,
    as in solved CartPole or Pendulum."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: Any = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: Any) -> Any:
        return np.zeros(1, np.float32), 1.0, False, False, {}


def test_reward_scale_stays_steady_when_episodes_end_by_truncation():
    """gymnasium's NormalizeReward resets its discounted return on termination only: here the return runs
    on across episodes towards 1 / (1 - gamma), its variance shrinks and the reward scale drifts (0.09 after
    10 rollouts, 0.40 after 40k steps). Reset at every episode end, the statistics are those of one
    episode's returns, 0.111 throughout."""
    normalization = Normalization()
    envs = NormalizeReward(gym.vector.SyncVectorEnv([lambda: TimeLimit(ConstantRewardEnv(), LIMIT)] * 4),
                           normalization.statistics("return_rms"), gamma=GAMMA)
    envs.reset(seed=0)
    episode_returns = np.cumsum(GAMMA ** np.arange(LIMIT))  # 1, 1 + gamma, ...: the return after each step
    steady = 1 / np.sqrt(np.var(episode_returns))
    scales = []
    for _ in range(40_000 // (4 * 32)):  # rollouts of 32 steps, not aligned with the episodes
        scale = 1 / np.sqrt(envs.return_rms.var + envs.epsilon)
        for _ in range(32):
            _, reward, *_ = envs.step(np.zeros(4, dtype=np.int64))
            assert set(np.round(reward / scale, 6)) <= {0.0, 1.0}  # the autoreset step's reward is 0
        normalization.commit()
        scales.append(scale)
    envs.close()
    print(f"reward scale after 1, 10, all rollouts: {scales[1]:.3f} {scales[10]:.3f} {scales[-1]:.3f}; "
          f"one episode's returns give {steady:.3f}")
    assert np.allclose(scales[10:], steady, rtol=0.02)


def test_statistics_stay_fixed_during_a_rollout_and_take_its_moments_at_the_end():
    normalization = Normalization()
    envs = NormalizeObservation(gym.make_vec("Pendulum-v1", num_envs=3, vectorization_mode="sync"),
                                normalization.statistics("obs_rms", (3,), np.float32))
    raw = gym.make_vec("Pendulum-v1", num_envs=3, vectorization_mode="sync")  # the same envs, unwrapped
    rms = envs.obs_rms
    assert isinstance(rms, DeferredRunningMeanStd)
    envs.reset(seed=1)
    seen = [raw.reset(seed=1)[0]]  # the raw observations the wrapper saw
    actions = np.zeros((20, 3, 1), np.float32)
    for a in actions:
        obs, *_ = envs.step(a)
        seen.append(raw.step(a)[0])
        assert np.array_equal(rms.mean, np.zeros(3)) and np.array_equal(rms.var, np.ones(3))
        assert np.allclose(obs, seen[-1])  # normalized with the initial statistics: unchanged
    normalization.commit()
    seen = np.concatenate(seen)
    assert rms.count == 1e-4 + len(seen)
    # The initial mean 0 / variance 1 weigh as 1e-4 of a sample.
    assert np.allclose(rms.mean, seen.mean(0), rtol=1e-5, atol=1e-6)
    assert np.allclose(rms.var, seen.var(0), rtol=1e-5, atol=1e-6)
    obs, *_ = envs.step(actions[0])
    assert np.allclose(obs, (raw.step(actions[0])[0] - rms.mean) / np.sqrt(rms.var + envs.epsilon), atol=1e-5)
    envs.close()
    raw.close()


def test_the_owner_merges_several_collectors_moments_into_the_statistics_one_process_would_have():
    """Three collectors' moments (one with no steps) fold in as the moments of all their observations would."""
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (n, 2)) for n in (7, 0, 12)]
    one = Normalization(("obs_rms",))
    one.statistics("obs_rms", (2,), np.float32).update(np.concatenate(batches))
    one.commit()
    parts = []
    for batch in batches:  # each collector records into statistics of its own and sends their moments
        collector = Normalization(("obs_rms",))
        if len(batch):
            collector.statistics("obs_rms", (2,), np.float32).update(batch)
        else:
            collector.statistics("obs_rms", (2,), np.float32)
        parts.append(collector.take_pending()["obs_rms"])
        assert collector.stats["obs_rms"].pending.count == 0
    learner = Normalization(("obs_rms",))
    learner.statistics("obs_rms", (2,), np.float32)
    learner.commit_moments({"obs_rms": parts})
    merged, single = learner.stats["obs_rms"], one.stats["obs_rms"]
    assert merged.count == single.count == 1e-4 + 19
    assert np.allclose(merged.mean, single.mean, rtol=1e-6) and np.allclose(merged.var, single.var, rtol=1e-5)
    assert merged.pending.count == 0


def test_the_owners_state_dict_round_trips_whether_or_not_the_envs_asked_for_the_statistics_yet():
    """The checkpoint's format ({name: {mean, var, count}}, the observation statistics in their float32) loads
    into statistics already made, and into those made later; keys the run does not normalize are left out."""
    saved = Normalization()
    saved.statistics("obs_rms", (3,), np.float32).update(np.arange(12.0).reshape(4, 3))
    saved.statistics("return_rms").update(np.array([1.0, -2.0, 0.5]))
    saved.commit()
    state = saved.state_dict()
    assert set(state) == {"obs_rms", "return_rms"} and set(state["obs_rms"]) == {"mean", "var", "count"}
    assert state["obs_rms"]["mean"].dtype == torch.float32 and state["return_rms"]["mean"].dtype == torch.float64
    made_first = Normalization()
    obs_rms = made_first.statistics("obs_rms", (3,), np.float32)
    made_first.load_state_dict({"env_steps": 64, "iteration": 1, **state})
    assert made_first.statistics("obs_rms", (3,), np.float32) is obs_rms  # the wrappers' object, updated in place
    made_later = Normalization()
    made_later.load_state_dict(state)
    for loaded in (made_first, made_later):
        for name, shape, dtype in (("obs_rms", (3,), np.float32), ("return_rms", (), np.float64)):
            rms = loaded.statistics(name, shape, dtype)
            assert rms.count == saved.stats[name].count and rms.mean.dtype == dtype
            assert np.array_equal(rms.mean, saved.stats[name].mean) and np.array_equal(rms.var, saved.stats[name].var)
        for name, values in loaded.state_dict().items():
            assert torch.equal(values["mean"], state[name]["mean"]) and torch.equal(values["var"], state[name]["var"])
            assert values["count"] == state[name]["count"]
    unused = Normalization(("obs_rms",))
    unused.load_state_dict(state)
    assert set(unused.state_dict()) == {"obs_rms"}


def test_evaluation_envs_apply_the_training_statistics_and_never_update_them():
    """Evaluation envs share the training statistics object (they normalize as training does at that point) and
    must not record into it: an evaluation during a fit would change the run's statistics."""
    from tests.helpers import make

    module, dm = make(data={"normalize_observation": True, "eval_episodes": 4, "eval_envs": 2})
    dm.setup("fit")
    module.build(dm.single_observation_space, dm.single_action_space)
    dm.collector.reset(seed=0)
    dm.collector.collect(module, 32, env_steps=128, iteration=0)
    dm.normalization.commit()
    rms = dm.normalization.stats["obs_rms"]
    before = (rms.mean.copy(), rms.var.copy(), rms.count)
    wrapper = dm.eval_collector.envs
    while not isinstance(wrapper, NormalizeObservation):
        wrapper = wrapper.env
    assert wrapper.obs_rms is rms
    dm.eval_collector.evaluate(module, 4, seed=5)
    assert rms.pending.count == 0
    dm.normalization.commit()
    assert np.array_equal(rms.mean, before[0]) and np.array_equal(rms.var, before[1]) and rms.count == before[2]
    dm.teardown("fit")


def test_a_commit_over_two_processes_gives_the_statistics_of_all_their_observations():
    """Two processes record different observations and commit through an all-reduce (two threads here, summing
    what each hands in): both end with the statistics one process has after recording all of them, which needs
    the squared deviations of each process's mean from the merged one."""
    import threading

    rng = np.random.default_rng(1)
    batches = [rng.normal(-2.0, 1.0, (9, 3)), rng.normal(5.0, 3.0, (14, 3))]
    one = Normalization(("obs_rms",))
    one.statistics("obs_rms", (3,), np.float64).update(np.concatenate(batches))
    one.commit()
    barrier, handed = threading.Barrier(2), [None, None]
    owners = [Normalization(("obs_rms",)) for _ in batches]

    def process(rank: int) -> None:
        def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
            handed[rank] = tensor.clone()
            barrier.wait()
            total = handed[0] + handed[1]
            barrier.wait()  # both have read before either hands in its next tensor
            return total

        owners[rank].statistics("obs_rms", (3,), np.float64).update(batches[rank])
        owners[rank].commit(all_reduce)

    threads = [threading.Thread(target=process, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    single = one.stats["obs_rms"]
    for owner in owners:
        rms = owner.stats["obs_rms"]
        assert rms.count == single.count
        assert np.allclose(rms.mean, single.mean, rtol=1e-10) and np.allclose(rms.var, single.var, rtol=1e-10)


@pytest.mark.parametrize("shape, dtype", [((4,), np.float64), ((4, 3), np.float32), ((1, 11), np.float32),
                                          ((16, 17), np.float32), ((2,), np.float32), ((3,), np.float64),
                                          ((5, 2), np.float32), ((7, 4), np.float32)])
def test_gathered_moments_are_gymnasiums_bit_for_bit(shape, dtype):
    """A step's moments (a reward's return, an observation batch) are gymnasium's RunningMeanStd.update's, bit for
    bit, over many steps of values on very different scales: the behaviour reference's numbers depend on them."""
    rng = np.random.default_rng(0)
    ours = DeferredRunningMeanStd(shape=shape[1:])
    theirs = gym.wrappers.utils.RunningMeanStd(epsilon=0.0, shape=shape[1:])
    for step in range(300):
        x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 5) + rng.standard_normal()).astype(dtype)
        ours.update(x)
        theirs.update(np.asarray(x, dtype=np.float64))
        assert ours.pending.count == theirs.count
        np.testing.assert_array_equal(ours.pending.mean, theirs.mean)
        np.testing.assert_array_equal(ours.pending.var, theirs.var)
