"""The Rollout declares its layout once: a new tensor field is gathered across ranks, kept by PPG's store and
carried into the training batch from that one declaration."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_rl.algos.ppg import PPG
from lit_rl.algos.ppo import PPO
from lit_rl.algos.metrics import RunMetrics
from lit_rl.algos.updater import share_of
from lit_rl.data.rollout import ENV, TIME, NoRollout, Rollout, env_major, flatten_valid, per_episode, time_major, to_sequences
from lit_rl.data.store import RolloutStore
from lit_rl.distributed.placement import gather_rollout
from tests.helpers import OBS

T, N = 5, 3  # steps, envs per rank


@dataclass
class RolloutWithCost(Rollout):
    """A rollout with three more fields, each one declaration."""

    cost: torch.Tensor = time_major(stored=True)  # [T, N] a per-step cost, e.g. for a constrained objective
    goal: torch.Tensor = env_major(stored=False, optional=True)  # [N, 2]
    episode_costs: torch.Tensor = per_episode("episodic_cost")  # [E] each ended episode's summed cost


def make_rollout(rank: int, cls: type = RolloutWithCost, N: int = N) -> Rollout:
    """A rollout of ``N`` envs whose every value tells the rank (and env and step) it came from."""
    g = torch.Generator().manual_seed(rank)
    time = lambda *shape: torch.rand(T, N, *shape, generator=g) + 10 * rank  # noqa: E731
    valid = torch.ones(T, N, dtype=torch.bool)
    valid[2, rank % N] = False
    fields = dict(obs=time(4), actions=torch.randint(0, 2, (T, N), generator=g), logprobs=time(), values=time(),
                  rewards=time(), terminated=torch.zeros(T, N, dtype=torch.bool), truncated=torch.zeros(T, N, dtype=torch.bool),
                  valid=valid, starts=torch.zeros(T, N, dtype=torch.bool), last_value=torch.rand(N, generator=g) + rank,
                  last_obs=torch.rand(N, 4, generator=g) + rank, last_start=torch.zeros(N, dtype=torch.bool),
                  episode_returns=torch.full((rank + 1,), float(rank)), episode_lengths=torch.full((rank + 1,), rank + 1),
                  env_steps=64, iteration=2, rollout_time=1.0 + rank)
    if cls is RolloutWithCost:
        fields.update(cost=torch.arange(T * N, dtype=torch.float32).view(T, N) + 100 * rank,
                      goal=torch.full((N, 2), float(rank)), episode_costs=torch.arange(rank + 1.0) + 10 * rank)
    return cls(**fields)


def _gather_on_rank(rank: int, world_size: int, store: str, out: str, shares: Optional[list[int]] = None) -> None:
    """Gathers ``make_rollout(rank)`` (``shares[rank]`` envs; 0: a NoRollout) with the other ranks."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)

    def all_gather_object(obj: object) -> list:
        gathered: list = [None] * world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    share = N if shares is None else shares[rank]
    mine = make_rollout(rank, N=share) if share else NoRollout(iteration=2, env_steps=64)
    joined = gather_rollout(mine, world_size, lambda parts, t, name: dist.all_gather(parts, t), all_gather_object,
                            torch.device("cpu"))
    torch.save(vars(joined), os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.integration
def test_a_new_field_is_gathered_across_ranks_by_its_declaration(tmp_path: Path):
    """Two real gloo processes gather a rollout with a field Rollout does not have: each rank ends with every
    rank's envs of it, in rank order, along the layout's env dimension, like every declared field."""
    mp.spawn(_gather_on_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    parts = [make_rollout(r) for r in range(2)]
    for rank in range(2):
        joined = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert torch.equal(joined["cost"], torch.cat([p.cost for p in parts], 1))  # [T, 2N]
        assert torch.equal(joined["goal"], torch.cat([p.goal for p in parts], 0))  # [2N, 2]
        assert torch.equal(joined["obs"], torch.cat([p.obs for p in parts], 1))
        assert torch.equal(joined["valid"], torch.cat([p.valid for p in parts], 1)) and joined["valid"].dtype == torch.bool
        assert torch.equal(joined["last_obs"], torch.cat([p.last_obs for p in parts], 0))
        assert torch.equal(joined["episode_returns"], torch.tensor([0.0, 1.0, 1.0]))
        assert torch.equal(joined["episode_costs"], torch.tensor([0.0, 10.0, 11.0]))
        assert joined["rollout_time"] == 2.0 and joined["env_steps"] == 64 and joined["iteration"] == 2
        assert joined["initial_state"] is None


@pytest.mark.integration
def test_ranks_that_collect_nothing_or_fewer_envs_receive_every_collected_env(tmp_path: Path):
    """Three gloo processes: rank 0 collects nothing (a learner beside rollout ranks: a NoRollout), ranks 1
    and 2 collect 3 and 2 envs. Every rank ends with ranks 1 and 2's envs only, in rank order, of the
    collecting ranks' class, with their episodes and per-round values; nothing of rank 0's padding."""
    shares = [0, 3, 2]
    mp.spawn(_gather_on_rank, args=(3, str(tmp_path / "store"), str(tmp_path), shares), nprocs=3, join=True)
    parts = [make_rollout(r, N=shares[r]) for r in (1, 2)]
    for rank in range(3):
        joined = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for name, layout in RolloutWithCost.layout().items():
            if layout in (TIME, ENV) and getattr(parts[0], name) is not None:
                expected = torch.cat([getattr(p, name) for p in parts], 1 if layout == TIME else 0)
                assert joined[name].dtype == expected.dtype and torch.equal(joined[name], expected), (rank, name)
        assert joined["obs"].shape[1] == 5 and joined["initial_state"] is None
        assert torch.equal(joined["episode_returns"], torch.tensor([1.0, 1.0, 2.0, 2.0, 2.0]))
        assert torch.equal(joined["episode_costs"], torch.cat([p.episode_costs for p in parts]))
        assert joined["rollout_time"] == 3.0 and joined["env_steps"] == 64 and joined["iteration"] == 2


def test_a_new_field_reaches_the_store_the_batch_and_minibatches():
    rollout = make_rollout(0)
    assert RolloutWithCost.layout()["cost"] == TIME and RolloutWithCost.layout()["goal"] == ENV
    store = RolloutStore()
    store.add(rollout)
    assert torch.equal(store.rollouts[0]["cost"], rollout.cost) and "goal" not in store.rollouts[0]
    assert "actions" not in store.rollouts[0]  # declared not stored

    ppg = PPG()  # the auxiliary phase's batch: one sequence per env, with the stored field
    ppg.build(OBS, __import__("gymnasium").spaces.Discrete(2))
    ppg.store.add(rollout)
    aux = ppg.take_aux_batch()
    assert torch.equal(aux["cost"], rollout.cost.transpose(0, 1)) and "goal" not in aux

    module = PPO()
    module.build(OBS, __import__("gymnasium").spaces.Discrete(2))
    batch = module.prepare_batch(rollout)
    valid = rollout.valid.flatten()
    assert torch.equal(batch["cost"], rollout.cost.flatten()[valid])  # flat valid samples, with the rest
    assert len(batch["cost"]) == len(batch["returns"]) == int(valid.sum())
    idx = torch.tensor([5, 0, 3, 7])  # a minibatch, and each of two ranks' shares of it: the loss sees the field
    assert torch.equal(share_of(batch, idx).data["cost"], batch["cost"][idx])
    halves = [share_of(batch, idx, member, 2).data["cost"] for member in range(2)]
    assert torch.equal(torch.cat(halves), batch["cost"][idx])


def test_sequences_and_flat_samples_keep_the_time_env_layout():
    x = torch.arange(6 * 2).view(6, 2)  # [T=6, N=2]: value = 2 * t + env
    seqs = to_sequences({"x": x, "valid": torch.ones(6, 2, dtype=torch.bool)}, 4)  # chunks of 4, last one padded
    assert seqs["x"].tolist() == [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 0, 0], [9, 11, 0, 0]]
    assert seqs["valid"].tolist() == [[True] * 4, [True] * 4, [True, True, False, False], [True, True, False, False]]
    valid = torch.ones(6, 2, dtype=torch.bool)
    valid[1, 0] = False
    assert flatten_valid({"x": x}, valid)["x"].tolist() == [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11]


def test_a_new_per_episode_field_is_logged_as_its_declared_metric():
    """The iteration's metrics take every per-episode field from the declaration: the subclass's cost is logged
    as ``train/episodic_cost`` (its mean), beside the returns and lengths."""
    rollout = make_rollout(1)  # episodes: returns [1, 1], lengths [2, 2], costs [10, 11]
    module = PPO()
    module.build(OBS, __import__("gymnasium").spaces.Discrete(2))
    metrics = RunMetrics(PPO.loss_metrics).iteration_metrics(rollout, module.prepare_batch(rollout), {}, {"actor": 1e-3})
    assert float(metrics["train/episodic_cost"]) == 10.5
    assert float(metrics["train/episodic_return"]) == 1.0 and float(metrics["train/episodic_length"]) == 2.0
    assert metrics["train/lr_actor"] == 1e-3 and metrics["env_steps"] == 64.0
    empty = make_rollout(1)
    empty.episode_costs = torch.zeros(0)
    assert "train/episodic_cost" not in RunMetrics(PPO.loss_metrics).iteration_metrics(
        empty, module.prepare_batch(empty), {}, {})  # no episode ended: nothing logged, not a NaN
