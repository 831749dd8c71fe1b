"""A data-parallel group whose minibatch has fewer rows than the group has ranks: the ranks with an empty
share add nothing, and the step goes on (it crashed with a reshape of 0 elements). Checked on the shares
themselves, in one process: the group's summed gradient is what the placement all-reduces."""

import gymnasium as gym
import pytest
import torch

from lit_rl.algos.ppo import PPO
from lit_rl.algos.updater import share_of
from tests.helpers import OBS, random_batch


def summed_grads(module: PPO, loss_name: str, batch: dict, idx: torch.Tensor, ranks: int) -> list[torch.Tensor]:
    """The gradient the group's all-reduce sums: each member's weighted loss, backward, added up."""
    params = [p for p in module.agent.parameters()]
    total = [torch.zeros_like(p) for p in params]
    for member in range(ranks):
        share = share_of(batch, idx, member, ranks)
        loss, stats = getattr(module, loss_name)(share)
        assert all(torch.isfinite(v).all() for v in stats.values()), (member, stats)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        total = [t + (g if g is not None else 0) for t, g in zip(total, grads)]
    return total


@pytest.mark.parametrize("loss_name", ["actor_loss", "critic_loss"])
@pytest.mark.parametrize("rows", [1, 3])
def test_empty_shares_of_a_minibatch_add_nothing(loss_name, rows):
    """Minibatches of 1 and 3 rows over 4 ranks: 3 and 1 of the shares are empty. The summed gradient is the
    whole minibatch's, and an empty share's own gradient is zero."""
    torch.manual_seed(0)
    module = PPO()
    module.build(OBS, gym.spaces.Discrete(2))
    batch = random_batch(16)
    with torch.no_grad():  # the behaviour policy and values are the current ones: nothing clipped away
        batch["logprobs"] = module.agent.dist(batch["obs"]).log_prob(batch["actions"])
        batch["values"] = module.agent.value(batch["obs"])
    idx = torch.tensor([5, 11, 2])[:rows]
    whole = summed_grads(module, loss_name, batch, idx, ranks=1)
    group = summed_grads(module, loss_name, batch, idx, ranks=4)
    assert any(g.abs().sum() > 0 for g in whole)
    for w, g in zip(whole, group):
        assert torch.allclose(w, g, atol=1e-6, rtol=1e-5)
    def grads(member: int) -> tuple:
        loss, _ = getattr(module, loss_name)(share_of(batch, idx, member, 4))
        return torch.autograd.grad(loss, list(module.agent.parameters()), allow_unused=True)

    empty = [m for m in range(4) if share_of(batch, idx, m, 4).weight == 0]
    assert len(empty) == 4 - rows
    reached = [g is not None for g in grads(3)]  # member 3's share is never empty
    for member in empty:
        # Zero, on exactly the parameters a non-empty share reaches: the group's all-reduce of each gradient
        # needs every rank, and a rank with no gradient for a parameter would leave the others waiting.
        assert [g is not None for g in grads(member)] == reached, member
        assert all(not g.any() for g in grads(member) if g is not None), member


def test_an_empty_share_of_sequences_takes_a_real_row_with_weight_0():
    """Sequences (valid flags): a member whose part of the minibatch holds no valid step still gets a whole
    sequence to run on, with weight 0; the weights of the members sum to 1."""
    valid = torch.ones(4, 6, dtype=torch.bool)
    valid[1, 3:] = False  # sequence 1 is half padding
    batch = {"obs": torch.randn(4, 6, 4), "valid": valid, "starts": torch.zeros(4, 6, dtype=torch.bool)}
    idx = torch.tensor([1])
    shares = [share_of(batch, idx, member, 3) for member in range(3)]
    assert sum(s.weight for s in shares) == pytest.approx(1.0)
    assert [s.weight for s in shares] == [0.0, 0.0, 1.0]
    for share in shares:
        assert share.data["obs"].shape == (3, 4)  # sequence 1's three valid steps, never zero rows
