"""The lean collector (issue 25) records what the plain step-by-step collection records, bit for bit: the policy
head's acting path gives the distributions' numbers without building them, the collector's preallocated buffers
and in-place bookkeeping give what a loop of per-step tensors gives, and a step waits on the device only for the
actions the envs need."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import Tensor

from lit_rl.algos.ppo import PPO
from lit_rl.data.collector import Collector
from lit_rl.nets import History
from lit_rl.nets.distributions import PolicyHead

SPACES = {"discrete": gym.spaces.Discrete(5), "multi_discrete": gym.spaces.MultiDiscrete([4, 2, 3]),
          "box": gym.spaces.Box(-1.0, 1.0, (8,))}


@pytest.mark.parametrize("space", list(SPACES))
def test_acting_gives_the_distributions_actions_and_log_probs_bit_for_bit(space):
    torch.manual_seed(0)
    head = PolicyHead(16, SPACES[space])
    with torch.no_grad():
        head.linear.weight.mul_(300.0)  # logits spread widely: rounding differences would show
        if head.continuous:
            head.log_std.copy_(torch.randn(8))
            # Some standard deviation's log is not its log_std again: a log-prob from log_std would differ.
            assert (head.log_std.exp().log() != head.log_std).any()
    features = torch.randn(2000, 16)
    noise = torch.rand(2000, 8)
    with torch.inference_mode():
        dist = head(features)
        if not head.continuous:
            # Half the draws exactly on a category's cumulative probability, where a cdf rounded otherwise
            # picks another category.
            probs = [dist.dist.probs] if hasattr(dist, "dist") else [d.probs for d in dist.dists]  # type: ignore[attr-defined]
            for k, p in enumerate(probs):
                picked = torch.randint(0, p.shape[-1] - 1, (1000, 1))
                noise[:1000, k] = p[:1000].cumsum(-1).gather(-1, picked).squeeze(-1)
        action, logprob = head.act(features, noise)
        assert torch.equal(action, dist.sample_from(noise)) and torch.equal(logprob, dist.log_prob(action))
        action, logprob = head.act(features, deterministic=True)
        assert torch.equal(action, dist.mode()) and torch.equal(logprob, dist.log_prob(action))
        # Without noise it samples through the distribution, drawing from torch's generator as before.
        torch.manual_seed(1)
        expected = dist.sample()
        torch.manual_seed(1)
        action, logprob = head.act(features)
        assert torch.equal(action, expected) and torch.equal(logprob, dist.log_prob(expected))


def reference_collect(envs: gym.vector.VectorEnv, policy: PPO, noise: Tensor, obs: np.ndarray, start: np.ndarray,
                      prev_done: np.ndarray, state):
    """Collects as a plain loop does, a tensor made for everything each step; returns the fields, the episodes, and
    the loop's carried ``(obs, start, prev_done, state)``."""
    rows: dict[str, list] = {k: [] for k in ("obs", "actions", "logprobs", "values", "rewards", "terminated",
                                              "truncated", "valid", "starts")}
    returns, lengths, initial_state = [], [], state
    for t in range(len(noise)):
        history = None if state is None else History(torch.tensor(start).unsqueeze(0), state)
        action, logprob, value = policy.act(torch.tensor(obs), noise=noise[t], history=history)
        if history is not None:
            state = history.final_state
        for key, x in (("obs", torch.tensor(obs)), ("actions", action), ("logprobs", logprob), ("values", value),
                       ("valid", torch.tensor(~prev_done)), ("starts", torch.tensor(start))):
            rows[key].append(x.clone())
        obs, reward, term, trunc, info = envs.step(action.numpy())
        rows["rewards"].append(torch.tensor(reward, dtype=torch.float32))
        rows["terminated"].append(torch.tensor(term))
        rows["truncated"].append(torch.tensor(trunc))
        start, prev_done = prev_done, term | trunc  # next-step autoreset
        if "_episode" in info:
            for i in np.flatnonzero(info["_episode"]):
                returns.append(float(info["episode"]["r"][i]))
                lengths.append(float(info["episode"]["l"][i]))
    fields = {k: torch.stack(v) for k, v in rows.items()}
    history = None if state is None else History(torch.tensor(start).unsqueeze(0), state)
    fields |= {"last_value": policy.value(torch.tensor(obs), history), "last_obs": torch.tensor(obs),
               "last_start": torch.tensor(start), "episode_returns": torch.tensor(returns, dtype=torch.float32),
               "episode_lengths": torch.tensor(lengths, dtype=torch.float32)}
    if initial_state is not None:
        fields["initial_state"] = initial_state
    return fields, (obs, start, prev_done, state)


@pytest.mark.parametrize("recurrent", [None, "lstm"])
def test_the_collector_records_what_a_step_by_step_loop_records(recurrent):
    def envs() -> gym.vector.VectorEnv:
        # Short time limits: episodes end by termination and by truncation, in different envs at different steps.
        vec = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync", max_episode_steps=15)
        return gym.wrappers.vector.RecordEpisodeStatistics(vec)

    probe = gym.make("CartPole-v1")
    torch.manual_seed(0)
    policy = PPO(recurrent=recurrent, recurrent_size=8)
    policy.build(probe.observation_space, probe.action_space)
    collector = Collector(envs(), env_offset=2, noise_seed=3)
    collector.reset(seed=11)
    plain = envs()
    obs, _ = plain.reset(seed=11)
    carried = (obs, np.ones(4, dtype=bool), np.zeros(4, dtype=bool), policy.initial_state(4))
    for iteration in range(3):  # the loop's state carries over from rollout to rollout
        keeping = KeepingPolicy(policy)
        rollout = collector.collect(keeping, 40, env_steps=0, iteration=iteration)
        if recurrent:  # a history handed to the policy stays as it was handed, whatever the collector does next
            assert torch.equal(torch.cat(keeping.starts), rollout.starts)
        expected, carried = reference_collect(plain, policy, collector.noise(40, iteration), *carried)
        assert len(expected["episode_returns"]) > 4 and expected["truncated"].any() and expected["terminated"].any()
        for key, value in expected.items():
            got = getattr(rollout, key)
            assert got.dtype == value.dtype and torch.equal(got, value), (iteration, key)
        assert (rollout.initial_state is None) == (recurrent is None)


class KeepingPolicy:
    """Acts as ``policy`` does, and keeps the episode starts of every history it is handed."""

    def __init__(self, policy: PPO) -> None:
        self.policy, self.device, self.starts = policy, policy.device, []

    def act(self, obs, deterministic=False, noise=None, history=None):
        if history is not None:
            self.starts.append(history.starts)
        return self.policy.act(obs, deterministic, noise, history)

    def value(self, obs, history=None):
        return self.policy.value(obs, history)

    def initial_state(self, batch):
        return self.policy.initial_state(batch)


class Watched(torch.Tensor):
    """Records the calls that would make the host wait for a device: reading a value, or moving to the CPU."""

    waits: list[str] = []
    WAITING = {"cpu", "item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__array__"}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in cls.WAITING or (name == "to" and any(str(a) == "cpu" for a in [*args[1:], *(kwargs or {}).values()])):
            cls.waits.append(name)
        return super().__torch_function__(func, types, args, kwargs or {})


class WatchedPolicy:
    """Acts as ``policy`` does, handing out log-probs and values that record what waits on them."""

    def __init__(self, policy: PPO) -> None:
        self.policy, self.device = policy, policy.device

    def act(self, obs, deterministic=False, noise=None, history=None):
        action, logprob, value = self.policy.act(obs, deterministic, noise, history)
        return action, logprob.as_subclass(Watched), value.as_subclass(Watched)

    def value(self, obs, history=None):
        return self.policy.value(obs, history)

    def initial_state(self, batch):
        return self.policy.initial_state(batch)


def test_a_step_waits_on_the_device_only_for_the_actions():
    """On a GPU a per-step ``.cpu()`` of the log-probs or values would wait for the device every step; they stay in
    device buffers and move to the CPU once per rollout."""
    probe = gym.make("CartPole-v1")
    policy = PPO()
    policy.build(probe.observation_space, probe.action_space)
    collector = Collector(gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync"))
    collector.reset(seed=0)
    Watched.waits.clear()
    rollout = collector.collect(WatchedPolicy(policy), 20, env_steps=0, iteration=0)
    assert Watched.waits == []
    assert type(rollout.logprobs) is torch.Tensor and type(rollout.values) is torch.Tensor



@pytest.mark.parametrize("env_id", ["Pendulum-v1", "MountainCarContinuous-v0"])
def test_the_batched_action_clip_gives_gymnasiums_clipped_actions_and_spaces(env_id):
    """lit_rl clips a batch of Box actions in one np.clip (make_envs); gymnasium's vector ClipAction clips env
    by env. The same actions reach the envs, and the wrapped envs show the same (unbounded) action spaces."""
    from gymnasium.wrappers import vector as vw

    from lit_rl.envs.wrappers import clip_vector_actions

    theirs = vw.ClipAction(gym.make_vec(env_id, num_envs=3, vectorization_mode="sync"))
    ours = clip_vector_actions(gym.make_vec(env_id, num_envs=3, vectorization_mode="sync"))
    assert (ours.action_space, ours.single_action_space) == (theirs.action_space, theirs.single_action_space)
    actions = np.random.default_rng(0).normal(0, 3, (50, *theirs.action_space.shape)).astype(np.float32)
    for batch in actions:
        clipped = ours.actions(batch)
        assert clipped.dtype == theirs.actions(batch).dtype and np.array_equal(clipped, theirs.actions(batch))
    assert (np.abs(actions) > theirs.env.single_action_space.high).any()  # some were clipped
    ours.close()
    theirs.close()
