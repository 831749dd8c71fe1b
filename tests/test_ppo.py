"""The PPO module: gradients reach only their own network, update order, warm-up, the loss call site."""

import dataclasses
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from lit_rl.algos.updater import DeferredCheck, NonFiniteCheck, RoleUpdater
from lit_rl.algos.ppo import PPO
from lit_rl.algos.roles import RoleSpec
from lit_rl.algos.updater import Shuffler, share_of
from lit_rl.errors import NonFiniteLossError
from lit_rl.objectives import policy_loss, value_loss
from tests.helpers import OBS, fit, grads_of, make, random_batch, read_metrics


def built(action_space: gym.Space = gym.spaces.Discrete(2), **kwargs) -> PPO:
    module = PPO(**kwargs)
    module.build(OBS, action_space)
    return module


@pytest.mark.parametrize("space", [gym.spaces.Discrete(3), gym.spaces.MultiDiscrete([3, 2]),
                                   gym.spaces.Box(-2, 2, (2,), np.float32)])
def test_separate_losses_reach_only_their_network(space):
    module = built(space)
    batch, idx = random_batch(action_space=space), torch.arange(64)
    actor, critic = module.agent.actor_parameters(), module.agent.critic_parameters()
    assert not {id(p) for p in actor} & {id(p) for p in critic}
    assert len(actor) + len(critic) == len(list(module.agent.parameters()))

    loss, _ = module.actor_loss(share_of(batch, idx))
    loss.backward()
    assert all(grads_of(actor)) and not any(grads_of(critic))

    module.agent.zero_grad(set_to_none=True)
    loss, _ = module.critic_loss(share_of(batch, idx))
    loss.backward()
    assert all(grads_of(critic)) and not any(grads_of(actor))


def test_shared_trunk_gets_the_value_loss_through_the_actor_update():
    """In `shared`, the actor optimizer owns the trunk: its loss adds vf_coef * value loss, so the trunk's
    gradient changes with vf_coef; the critic optimizer owns only the value head."""
    batch, idx = random_batch(), torch.arange(64)
    trunk_grads = {}
    for vf_coef in (0.0, 0.5):
        torch.manual_seed(0)
        module = built(arch="shared", vf_coef=vf_coef)
        trunk = list(module.agent.policy_trunk.parameters())
        assert {id(p) for p in trunk} <= {id(p) for p in module.agent.actor_parameters()}
        assert {id(p) for p in module.agent.critic_parameters()} == {id(p) for p in module.agent.value_head.parameters()}
        loss, _ = module.actor_loss(share_of(batch, idx))
        loss.backward()
        trunk_grads[vf_coef] = trunk[0].grad.clone()
    assert not torch.allclose(trunk_grads[0.0], trunk_grads[0.5])


def test_shared_optimizer_steps_change_only_what_they_own(tmp_path):
    module, dm = make({"arch": "shared", "update_epochs": 1, "num_minibatches": 1})
    before = {}
    roles = {}

    def snapshot(tag):
        return {name: p.detach().clone() for name, p in module.agent.named_parameters()}

    original = module.update_role

    def update_role(role, batch):
        before[role] = snapshot(role)
        out = original(role, batch)
        roles[role] = {n for n, p in module.agent.named_parameters() if not torch.equal(p, before[role][n])}
        return out

    module.update_role = update_role
    dm.total_timesteps = 128
    fit(module, dm, tmp_path)
    assert roles["critic"] == {"value_head.weight", "value_head.bias"}
    assert roles["actor"] == {n for n, _ in module.agent.named_parameters() if not n.startswith("value_head")}


def test_actor_loss_uses_normalized_advantages():
    module = built(norm_adv=True, ent_coef=0.0)
    batch, idx = random_batch(), torch.arange(64)
    loss, stats = module.actor_loss(share_of(batch, idx))
    dist = module.agent.dist(batch["obs"])
    adv = batch["advantages"]
    expected, _ = policy_loss(dist.log_prob(batch["actions"]), batch["logprobs"], (adv - adv.mean()) / (adv.std() + 1e-8), 0.2)
    raw, _ = policy_loss(dist.log_prob(batch["actions"]), batch["logprobs"], adv, 0.2)
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, raw)


def test_policy_and_value_loss_values():
    adv = torch.tensor([1.0, -1.0, 2.0])
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.5, 0.5, 1.1]))  # ratios 1.5, 0.5, 1.1
    loss, stats = policy_loss(new, old, adv, 0.2)
    # min(r*A, clip(r)*A): 1.2*1, -0.8*1 -> min(-0.5, -0.8) = -0.8, 1.1*2
    assert loss.item() == pytest.approx(-(1.2 - 0.8 + 2.2) / 3)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 3)
    v_loss, _ = value_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0]), 0.5)
    # unclipped error 1, clipped prediction 0.5 -> error 0.25; max -> 1; times 0.5
    assert v_loss.item() == pytest.approx(0.5)
    v_loss, _ = value_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([3.0]), 0.5)
    assert v_loss.item() == pytest.approx(0.5 * 2.5**2)


@pytest.mark.parametrize("order", ["critic_first", "actor_first"])
def test_update_order_is_honoured(tmp_path, order):
    module, dm = make({"update_order": order})
    calls = []
    original = module.update_role
    module.update_role = lambda role, batch: (calls.append(role), original(role, batch))[1]
    fit(module, dm, tmp_path)
    expected = ["critic", "actor"] if order == "critic_first" else ["actor", "critic"]
    assert calls == expected * 2  # two iterations of 128 env steps


def test_critic_warmup_freezes_the_actor(tmp_path):
    k = 3
    module, dm = make({"critic_warmup": k}, {"total_timesteps": k * 128})
    module.build(gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2))
    actor0 = [p.detach().clone() for p in module.agent.actor_parameters()]
    critic0 = [p.detach().clone() for p in module.agent.critic_parameters()]
    fit(module, dm, tmp_path)
    assert dm.env_steps == k * 128
    assert all(torch.equal(a, b) for a, b in zip(actor0, module.agent.actor_parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(critic0, module.agent.critic_parameters()))


def test_target_kl_stops_actor_epochs(tmp_path):
    module, dm = make({"target_kl": 1e-9, "update_epochs": 4, "num_minibatches": 2})
    fit(module, dm, tmp_path)
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")))
    assert [r["train/actor_updates"] for r in rows] == [2.0, 2.0]  # one epoch of 2 minibatches, then the stop


@pytest.mark.parametrize("kls, epochs", [((0.0, 0.0, 1.0, 1.0), 3), ((0.0, 0.0, 0.0, 0.0), 4)])
def test_target_kl_stops_after_the_first_epoch_whose_kl_exceeds_it(tmp_path, monkeypatch, kls, epochs):
    """The epochs run until the end of the first epoch whose KL exceeds the target (here the third), or all of
    them when none does; the KL of an epoch is its own steps' mean (below)."""
    module, dm = make({"target_kl": 0.5, "update_epochs": 4, "num_minibatches": 2})
    def epoch_kl(self, stats, steps):  # the KL of epoch k of this iteration: kls[k - 1]
        return torch.tensor(kls[len(stats["approx_kl"]) // steps - 1])

    monkeypatch.setattr(RoleUpdater, "epoch_kl", epoch_kl)
    fit(module, dm, tmp_path)
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")))
    assert [r["train/actor_updates"] for r in rows] == [2.0 * epochs] * 2


def test_an_epochs_kl_is_the_mean_of_its_own_steps(tmp_path):
    module, dm = make({"update_epochs": 1})
    fit(module, dm, tmp_path)
    stats = {"approx_kl": [torch.tensor(v) for v in (9.0, 7.0, 1.0, 2.0, 3.0, 6.0)]}  # 3 epochs of 2 steps
    assert float(module.updaters["actor"].epoch_kl(stats, 2)) == 4.5


def test_each_epoch_has_exactly_num_minibatches_of_near_equal_size_and_target_kl_is_checked_at_its_end(tmp_path, monkeypatch):
    """4 envs x 128 steps, minus the autoreset steps: about 490 valid rows, which 32 minibatches do not divide.
    torch.chunk gave 31 uneven minibatches (down to 1 row), and the target-KL check then fell mid-epoch.
    Each epoch must split every valid row into exactly 32 minibatches whose sizes differ by at most one, and a
    target KL that every epoch exceeds must stop the actor after exactly its first whole epoch."""
    module, dm = make({"num_minibatches": 32, "update_epochs": 3, "target_kl": 1e-12},
                      {"num_steps": 128, "total_timesteps": 1024})
    steps: dict[str, list[torch.Tensor]] = {"actor": [], "critic": []}
    rows: dict[str, int] = {}
    original_split, original_prepare = Shuffler.split, module.prepare_batch

    def prepare_batch(rollout):
        batch = original_prepare(rollout)
        rows["valid"] = len(batch["returns"])
        return batch

    def split(self, size, role, count, device):
        parts = original_split(self, size, role, count, device)
        steps[role] += [idx.clone() for idx in parts]  # the epoch's minibatches, one optimizer step each
        return parts

    module.prepare_batch = prepare_batch
    monkeypatch.setattr(Shuffler, "split", split)
    fit(module, dm, tmp_path)
    # The last iteration's steps (its batch is the one measured).
    actor, critic = steps["actor"][-32:], steps["critic"][-3 * 32:]
    assert len(steps["actor"]) == 2 * 32 and len(steps["critic"]) == 2 * 3 * 32
    assert rows["valid"] % 32 and rows["valid"] < 512  # the case that torch.chunk got wrong
    for epoch in (actor, critic[:32], critic[32:64], critic[64:]):
        sizes = [len(idx) for idx in epoch]
        assert max(sizes) - min(sizes) <= 1, sizes
        assert sorted(torch.cat(epoch).tolist()) == list(range(rows["valid"]))  # every valid row, once


def test_minibatch_split_is_exact_for_any_row_count():
    spec = PPO(num_minibatches=4).role_specs()["actor"]
    for size in (1, 3, 4, 5, 481, 512):
        parts = Shuffler().split(size, spec.stream, spec.minibatches, torch.device("cpu"))
        assert len(parts) == min(4, size)
        assert sorted(torch.cat(parts).tolist()) == list(range(size))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_training_stops_exactly_at_the_budget(tmp_path):
    module, dm = make(data={"total_timesteps": 4 * 32 * 2 + 4 * 5})  # two full rollouts and a short one
    fit(module, dm, tmp_path)
    assert dm.env_steps == 276 and module.env_steps == 276
    assert dm.iteration == 3


@pytest.mark.parametrize("env_id,mode", [("tests.envs:Chain-v0", "sync"), pytest.param("CartPole-v1", "async", marks=pytest.mark.integration),
                                         ("CartPole-v1", "vector_entry_point"), ("Pendulum-v1", "sync")])
def test_spaces_and_vectorization_modes_train(tmp_path, env_id, mode):
    """Discrete observations with MultiDiscrete actions; async and native vector envs; Box actions."""
    module, dm = make(data={"env_id": env_id, "vectorization_mode": mode})
    fit(module, dm, tmp_path)
    assert dm.env_steps == 256
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")))
    assert all(np.isfinite(r["train/policy_loss"]) and np.isfinite(r["train/value_loss"]) for r in rows)


def test_unsupported_observation_space_is_refused():
    from lit_rl.errors import ConfigError
    from lit_rl.nets import check_spaces

    with pytest.raises(ConfigError, match="observation space"):
        check_spaces(gym.spaces.Tuple([OBS, OBS]), gym.spaces.Discrete(2))
    with pytest.raises(ConfigError, match=r"data.env_id\['a'\]: observation space"):
        check_spaces(gym.spaces.Dict({"a": gym.spaces.Tuple([OBS])}), gym.spaces.Discrete(2))


class NanAtCriticStep(PPO):
    """The critic's loss turns NaN at its ``bad``-th step; records the critic's parameters just before it."""

    bad = 3

    def critic_loss(self, share):
        self.calls = getattr(self, "calls", 0) + 1
        loss, stats = super().critic_loss(share)
        if self.calls == self.bad:
            self.before_bad = [p.detach().clone() for p in self.agent.critic_parameters()]
            loss = loss * float("nan")
        return loss, stats


@pytest.mark.parametrize("fused", [True, False], ids=["fused: deferred check", "plain: checked every step"])
def test_a_non_finite_loss_applies_neither_its_update_nor_any_later_one(tmp_path, fused):
    """With a fused optimizer the check costs no host sync per step: the optimizer skips the bad step and
    every later one on a device flag, and the error comes at the end of the role's epochs. Either way the
    critic ends as it was before the bad step, its Adam state counted only the steps applied, and the
    message names the critic's NaN loss."""
    def adam(params):
        return torch.optim.Adam(params, lr=1e-2, fused=fused)

    module, data = make(model={"critic_optimizer": adam, "actor_optimizer": adam, "update_epochs": 2,
                               "num_minibatches": 4}, cls=NanAtCriticStep)
    with pytest.raises(Exception) as err:
        fit(module, data, tmp_path)
    assert "critic loss is nan" in str(err.value)
    assert module.calls == (4 * 2 if fused else NanAtCriticStep.bad)  # fused: the epochs ran to their end
    for p, before in zip(module.agent.critic_parameters(), module.before_bad):
        assert torch.equal(p.detach(), before)
    critic_opt = module.optimizers()[1].optimizer
    steps = {int(state["step"]) for state in critic_opt.state.values()}
    assert steps == {NanAtCriticStep.bad - 1}, steps
    # The critic updates first: the error ends the iteration before the actor's epochs start.
    assert not module.optimizers()[0].optimizer.state


def amp_fit(module, data, root) -> "L.Trainer":
    import lightning as L
    from lightning.pytorch.plugins.precision import MixedPrecision

    trainer = L.Trainer(max_epochs=-1, accelerator="cpu", logger=False, default_root_dir=root,
                        plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))],
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(module, data)
    return trainer


def test_the_deferred_check_leaves_a_grad_scalers_flag_alone(tmp_path):
    """Under fp16 AMP the grad scaler sets (and removes) the fused optimizer's found_inf itself, per step:
    the update checks every step instead. Training runs (it raised AttributeError on the scaler's removed
    flag), and a NaN loss stops it at that step (deferred, the scaler's flag would let later steps apply)."""
    def adam(params):
        return torch.optim.Adam(params, lr=1e-3, fused=True)

    model = {"critic_optimizer": adam, "actor_optimizer": adam, "actor_max_grad_norm": None,
             "critic_max_grad_norm": None, "update_epochs": 2, "num_minibatches": 4}
    module, data = make(model=model, data={"total_timesteps": 128})
    trainer = amp_fit(module, data, tmp_path / "finite")
    assert trainer.global_step == 16 and data.env_steps == 128
    module, data = make(model=model, data={"total_timesteps": 128}, cls=NanAtCriticStep)
    with pytest.raises(Exception, match="critic loss is nan"):
        amp_fit(module, data, tmp_path / "nan")
    assert module.calls == NanAtCriticStep.bad


def test_the_roles_updates_are_declared_once_and_the_updater_follows_the_declaration(tmp_path):
    """PPO declares each role's update as a RoleSpec: the actor's actor_epochs of actor_loss on its own stream,
    stopped at target_kl; the critic's critic_epochs of critic_loss, never stopped. The updater runs what the spec
    says: a critic declared with 1 epoch of 3 minibatches takes 3 steps an iteration."""
    module = PPO(actor_epochs=3, critic_epochs=5, num_minibatches=2, target_kl=0.02)
    specs = module.role_specs()
    assert specs["actor"] == RoleSpec(module.actor_loss, 3, "actor", 2, target_kl=0.02)
    assert specs["critic"] == RoleSpec(module.critic_loss, 5, "critic", 2, target_kl=None)

    class OneEpochCritic(PPO):
        def role_specs(self):
            specs = super().role_specs()
            return {**specs, "critic": dataclasses.replace(specs["critic"], epochs=1, minibatches=3)}

    module, dm = make({"update_epochs": 2, "num_minibatches": 4}, {"total_timesteps": 128}, cls=OneEpochCritic)
    fit(module, dm, tmp_path)
    assert (module.updaters["actor"].steps, module.updaters["critic"].steps) == (2 * 4, 3)


class FakeRun:
    """The few parts of an algorithm that a non-finite check's message reads."""

    trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(last_model_path="last.ckpt"))
    env_steps = 640


def test_the_eager_check_stops_a_lone_process_before_the_backward_pass_and_a_group_after_the_sum():
    lone = NonFiniteCheck(FakeRun(), lone=True)
    lone.loss("critic", torch.tensor(1.5))
    lone.gradients(True)
    with pytest.raises(NonFiniteLossError, match=r"critic loss is nan .* 640 env steps.*last good checkpoint is last.ckpt"):
        lone.loss("critic", torch.tensor(float("nan")))
    group = NonFiniteCheck(FakeRun(), lone=False)
    group.loss("actor", torch.tensor(float("inf")))  # its share is bad: it stops with the group, after the sum
    with pytest.raises(NonFiniteLossError, match="actor loss is inf"):
        group.gradients(False)
    group.loss("actor", torch.tensor(0.5))
    with pytest.raises(NonFiniteLossError, match="actor loss is 0.5"):  # another rank's share was bad
        group.gradients(False)


def test_the_deferred_check_skips_every_step_after_a_non_finite_loss_and_names_the_first_at_its_end():
    param = torch.nn.Parameter(torch.zeros(2))
    adam = torch.optim.Adam([param], lr=0.1, fused=True)
    optimizer = SimpleNamespace(optimizer=adam, step=adam.step)  # as Lightning wraps it
    check = DeferredCheck(FakeRun())
    applied = []
    for what, loss in (("actor", 1.0), ("critic", float("nan")), ("actor", 2.0), ("critic", float("inf"))):
        check.loss(what, torch.tensor(loss))  # no error yet: no host sync
        check.gradients(True)
        param.grad = torch.ones(2)
        before = param.detach().clone()
        check.step(optimizer)
        applied.append(not torch.equal(before, param.detach()))
        assert "found_inf" not in adam.__dict__  # the flag is lent to the step only
    assert applied == [True, False, False, False]
    with pytest.raises(NonFiniteLossError, match="The critic loss is nan"):
        check.end()
    DeferredCheck(FakeRun()).end()  # no steps: nothing to raise
