"""PPG: gradient routing per architecture, the auxiliary phase's two jobs, gradient surgery, memory, resume."""

import copy
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
import torch

from lit_rl.algos.ppg import PPG
from lit_rl.algos.ppo import PPO
from lit_rl.algos.roles import Placement, RoleSpec
from lit_rl.algos.updater import RoleUpdater, Shuffler, interleaved_epochs, share_of
from lit_rl.data.store import RolloutStore
from lit_rl.errors import ConfigError
from lit_rl.objectives import pcgrad
from tests.helpers import OBS, fit, grads_of, make, random_batch, read_metrics

CARTPOLE = dict(env_id="CartPole-v1", num_envs=4, num_steps=32, seed=3)


def built(arch: str, space: gym.Space = gym.spaces.Discrete(2), **kwargs) -> PPG:
    module = PPG(arch=arch, **kwargs)
    module.build(OBS, space)
    return module


def aux_minibatch(module: PPG, n: int = 64) -> dict[str, torch.Tensor]:
    batch = random_batch(n)
    with torch.no_grad():
        old = module.agent.dist(batch["obs"]).params() + 0.3 * torch.randn(n, 2)
    return {"obs": batch["obs"], "returns": batch["returns"] * 5, "old_params": old}


# ---------------------------------------------------------------- architectures: who owns what, who gets gradients
@pytest.mark.parametrize("arch", ["separate", "shared", "detach"])
def test_optimizers_own_disjoint_parts_and_the_actor_owns_the_aux_head(arch):
    agent = built(arch).agent
    actor, critic = agent.actor_parameters(), agent.critic_parameters()
    assert not {id(p) for p in actor} & {id(p) for p in critic}
    assert len(actor) + len(critic) == len(list(agent.parameters()))
    assert {id(p) for p in agent.aux_value_head.parameters()} <= {id(p) for p in actor}
    assert {id(p) for p in agent.policy_trunk.parameters()} <= {id(p) for p in actor}


@pytest.mark.parametrize("space", [gym.spaces.Discrete(3), gym.spaces.Box(-2, 2, (2,), np.float32)])
def test_separate_policy_losses_give_no_gradient_to_the_value_network(space):
    module = built("separate", space)
    critic = module.agent.critic_parameters()
    batch = random_batch(action_space=space)
    loss, _ = module.actor_loss(share_of(batch, torch.arange(64)))
    loss.backward()
    assert not any(grads_of(critic)) and all(grads_of(module.agent.policy_head.parameters()))

    module.agent.zero_grad(set_to_none=True)
    with torch.no_grad():
        old = module.agent.dist(batch["obs"]).params() + 0.3 * torch.randn(64, module.agent.policy_head.num_params)
    mb = {"obs": batch["obs"], "returns": batch["returns"] * 5, "old_params": old}
    loss, _ = module.aux_actor_loss(share_of(mb, torch.arange(64)))
    loss.backward()
    assert not any(grads_of(critic))
    assert all(grads_of(module.agent.aux_value_head.parameters())) and all(grads_of(module.agent.policy_trunk.parameters()))


def test_detach_value_losses_give_no_gradient_to_the_trunk():
    module = built("detach")
    trunk = list(module.agent.policy_trunk.parameters())
    for loss_fn in (lambda: module.critic_loss(share_of(random_batch(), torch.arange(64)))[0],
                    lambda: module.aux_critic_loss(share_of(aux_minibatch(module), torch.arange(64)))[0]):
        module.agent.zero_grad(set_to_none=True)
        loss_fn().backward()
        assert not any(grads_of(trunk))
        assert all(grads_of(module.agent.value_head.parameters()))
    # The trunk learns from the policy's losses alone: the actor loss has no value term.
    module.agent.zero_grad(set_to_none=True)
    module.actor_loss(share_of(random_batch(), torch.arange(64)))[0].backward()
    assert not any(grads_of(module.agent.value_head.parameters())) and all(grads_of(trunk))


def test_shared_value_loss_reaches_the_trunk_in_both_phases():
    """Same weights, same data: the trunk's gradient differs between shared and detach only by the value term."""
    shared, detach = built("shared"), built("detach")
    detach.agent.load_state_dict(shared.agent.state_dict())
    mb, batch = aux_minibatch(shared), random_batch()
    for loss_fn in (lambda m: m.aux_actor_loss(share_of(mb, torch.arange(len(mb["obs"]))))[0],
                    lambda m: m.actor_loss(share_of(batch, torch.arange(64)))[0]):
        grads = [torch.autograd.grad(loss_fn(m), next(m.agent.policy_trunk.parameters())) for m in (shared, detach)]
        assert not torch.allclose(grads[0][0], grads[1][0])
    # With no value term (vf_coef=0) the policy-phase trunk gradients are the same.
    shared0, detach0 = built("shared", vf_coef=0.0), built("detach", vf_coef=0.0)
    detach0.agent.load_state_dict(shared0.agent.state_dict())
    grads = [torch.autograd.grad(m.actor_loss(share_of(batch, torch.arange(64)))[0], next(m.agent.policy_trunk.parameters()))
             for m in (shared0, detach0)]
    assert torch.allclose(grads[0][0], grads[1][0])


# ---------------------------------------------------------------- gradient surgery
def test_pcgrad_removes_exactly_the_conflicting_component():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    combined, stats = pcgrad([g1, g2])
    # g1 projected onto g2's normal plane: [0.5, 0.5]; g2 onto g1's: [0, 1].
    assert torch.allclose(combined, torch.tensor([0.5, 1.5]))
    assert stats["grad_conflict"] == 1 and stats["grad_cosine"] < 0
    assert combined @ g1 >= 0 and combined @ g2 >= 0
    agreeing = [torch.tensor([1.0, 0.2]), torch.tensor([0.5, 1.0])]
    combined, stats = pcgrad(agreeing)
    assert torch.equal(combined, agreeing[0] + agreeing[1]) and stats["grad_conflict"] == 0

    gen = torch.Generator().manual_seed(0)
    conflicts = 0
    for _ in range(20):
        a, b = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
        combined, _ = pcgrad([a, b])
        if a @ b < 0:
            conflicts += 1
            # combined = a' + b'; a' (a without its component along b) is orthogonal to b, and vice versa.
            a_proj, b_proj = combined - (b - (b @ a) / (a @ a) * a), combined - (a - (a @ b) / (b @ b) * b)
            assert abs(float(a_proj @ b)) < 1e-4 and abs(float(b_proj @ a)) < 1e-4
            assert combined @ a >= -1e-4 and combined @ b >= -1e-4
        else:
            assert torch.allclose(combined, a + b)
    assert conflicts > 0


def test_pcgrad_actor_step_writes_the_projected_gradient_on_a_shared_trunk():
    """The actor step of shared PPG with gradient_surgery=pcgrad: on the trunk (reached by the policy and the
    value terms) .grad is PCGrad of the two; the policy head keeps the policy term's gradient; the aux head,
    which neither term reaches, keeps no gradient, so the optimizer does not move it."""
    torch.manual_seed(0)
    module = built("shared", gradient_surgery="pcgrad", vf_coef=1.0)
    module.manual_backward = lambda loss, **kw: loss.backward(**kw)  # no Trainer here; Lightning's is loss.backward
    agent = module.agent
    trunk, head = list(agent.policy_trunk.parameters()), list(agent.policy_head.parameters())
    opt = torch.optim.SGD(agent.actor_parameters(), lr=0.0)
    for seed in range(50):
        batch = random_batch()
        batch["advantages"] = torch.randn(64, generator=torch.Generator().manual_seed(seed))
        terms, _ = module.actor_loss(share_of(batch, torch.arange(64)))
        assert isinstance(terms, tuple) and len(terms) == 2
        flat = [torch.cat([g.flatten() for g in torch.autograd.grad(t, trunk, retain_graph=True)]) for t in terms]
        if flat[0] @ flat[1] < 0:
            break
    else:
        pytest.fail("no batch with conflicting policy and value gradients")
    head_grads = torch.autograd.grad(terms[0], head, retain_graph=True)
    stats = RoleUpdater(module, "actor", Placement(), Shuffler(), None).backward_with_surgery(opt, terms)
    written = torch.cat([p.grad.flatten() for p in trunk])
    expected, _ = pcgrad(flat)
    assert torch.allclose(written, expected, atol=1e-6)
    assert stats["grad_conflict"] == 1 and stats["grad_cosine"] < 0
    assert written @ flat[0] >= -1e-6 and written @ flat[1] >= -1e-6
    assert all(torch.equal(p.grad, g) for p, g in zip(head, head_grads))
    assert all(p.grad is None for p in agent.aux_value_head.parameters())


def test_pcgrad_policy_phase_through_the_trainer_leaves_the_aux_head_alone(tmp_path):
    """End to end (toggle, Lightning's manual_backward, clipping, Adam): after an aux phase has given the aux
    head Adam momentum, the policy phase's surgery steps, which no loss of the aux head takes part in, must
    not move it (a zero gradient would: Adam steps on its momentum)."""
    module, dm = make({"arch": "shared", "gradient_surgery": "pcgrad", "n_pi": 2, "aux_minibatch_size": 2},
                      {**CARTPOLE, "total_timesteps": 3 * 128}, cls=PPG)
    snapshots = {}
    original = module.auxiliary_phase

    def auxiliary_phase(iteration):
        stats = original(iteration)
        snapshots["aux_head"] = copy.deepcopy(module.agent.aux_value_head.state_dict())
        snapshots["trunk"] = module.agent.policy_trunk[0].weight.detach().clone()
        return stats

    module.auxiliary_phase = auxiliary_phase
    fit(module, dm, tmp_path)  # iterations 0, 1 (+ aux phase), 2
    assert module.aux_phases == 1
    final = module.agent.aux_value_head.state_dict()
    assert all(torch.equal(snapshots["aux_head"][k], final[k]) for k in final)
    assert not torch.equal(snapshots["trunk"], module.agent.policy_trunk[0].weight)
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")))
    assert any("train/grad_conflict" in r for r in rows)


def test_gradient_surgery_needs_a_shared_trunk():
    with pytest.raises(ConfigError, match="model.gradient_surgery"):
        PPG(arch="separate", gradient_surgery="pcgrad")
    with pytest.raises(ConfigError, match="model.gradient_surgery"):
        PPO(arch="separate", gradient_surgery="pcgrad")


# ---------------------------------------------------------------- the auxiliary phase does its two jobs
def run_aux_phase(tmp_path, beta_clone: float, arch: str = "separate", aux_epochs: int = 6, **data: object) -> dict[str, float]:
    """One auxiliary phase after 2 CartPole iterations; measures KL(pi_old || pi) and the aux value loss over
    the stored observations, before and after the phase."""
    # The policy phase first makes the policy far from uniform, so that trunk changes show in it.
    module, dm = make({"arch": arch, "n_pi": 4, "aux_epochs": aux_epochs, "beta_clone": beta_clone, "aux_minibatch_size": 4,
                       "actor_epochs": 10, "critic_epochs": 10, "num_minibatches": 2, "anneal_lr": False,
                       "actor_max_grad_norm": None, "actor_optimizer": lambda p: torch.optim.Adam(p, lr=3e-3)},
                      {**CARTPOLE, "total_timesteps": 512, **data}, cls=PPG)
    measured: dict[str, float] = {}
    captured: dict[str, torch.Tensor] = {}
    original_data, original_phase = module.take_aux_batch, module.auxiliary_phase

    def aux_loss(data):
        valid = data["valid"]
        with torch.no_grad():
            _, aux_values, _ = module.agent.forward_aux(data["obs"][valid])
        return float(0.5 * (aux_values - data["returns"][valid]).pow(2).mean())

    def take_aux_batch():
        measured["stored_rollouts"] = len(module.store)
        data = original_data()
        captured.update(data)
        measured["aux_loss_before"] = aux_loss(data)
        return data

    def auxiliary_phase(iteration):
        stats = original_phase(iteration)
        valid = captured["valid"]
        with torch.no_grad():
            obs = captured["obs"][valid]
            pi_old = module.agent.policy_head.from_params(captured["old_params"][valid])
            measured["kl"] = float(pi_old.kl(module.agent.dist(obs)).mean())
        measured["aux_loss_after"] = aux_loss(captured)
        return stats

    module.take_aux_batch, module.auxiliary_phase = take_aux_batch, auxiliary_phase
    fit(module, dm, tmp_path)
    assert module.aux_phases == 1 and measured["stored_rollouts"] == 4
    return measured


def test_bc_term_keeps_the_policy_close_and_without_it_the_policy_drifts(tmp_path):
    """A long aux phase (16 epochs), 8 seeds: one seed's KL varies tenfold, so fewer seeds leave the means'
    ratio near its bar, where another CPU's rounding (a different path through training) can move it. Reward
    normalization, as in the paper, keeps the value targets (and so the aux loss) at the scale the BC term is
    weighed against."""
    kl = {1.0: [], 0.0: []}
    for seed in range(3, 11):
        for beta in kl:
            kl[beta].append(run_aux_phase(tmp_path / f"{beta}-{seed}", beta_clone=beta, aux_epochs=16, seed=seed,
                                          normalize_reward=True)["kl"])
    with_bc, without = float(np.mean(kl[1.0])), float(np.mean(kl[0.0]))
    print(f"mean KL(pi_old || pi) after the aux phase: beta_clone=1: {with_bc:.2e}, beta_clone=0: {without:.2e}; "
          f"per seed (1 / 0): {[f'{a:.1e} / {b:.1e}' for a, b in zip(kl[1.0], kl[0.0])]}")
    assert with_bc < 2e-3
    assert without > 5 * with_bc
    assert all(b > a for a, b in zip(kl[1.0], kl[0.0]))  # paired: on every seed the BC term keeps it closer


@pytest.mark.parametrize("arch", ["separate", "detach", "shared"])
def test_aux_phase_lowers_the_aux_value_loss_on_the_stored_data(tmp_path, arch):
    measured = run_aux_phase(tmp_path, beta_clone=1.0, arch=arch)
    assert measured["aux_loss_after"] < 0.7 * measured["aux_loss_before"], measured


def test_aux_phase_metrics_are_logged(tmp_path):
    module, dm = make({"n_pi": 2, "aux_epochs": 1, "aux_minibatch": "samples"}, {**CARTPOLE, "total_timesteps": 512}, cls=PPG)
    fit(module, dm, tmp_path)
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")))
    aux_rows = [r for r in rows if "train/bc_kl" in r]
    assert [r["train/iteration"] for r in aux_rows] == [1.0, 3.0]
    for key in ("train/aux_value_loss", "train/aux_phase_value_loss", "perf/aux_phase_time", "perf/policy_phase_time"):
        assert all(key in r for r in aux_rows), key
    assert max(r.get("train/aux_phases", 0) for r in rows) == 2


# ---------------------------------------------------------------- memory
def test_store_keeps_what_the_formula_says_and_big_settings_are_refused(tmp_path):
    module, dm = make({"n_pi": 3, "aux_epochs": 1, "aux_minibatch_size": 3}, {**CARTPOLE, "total_timesteps": 256}, cls=PPG)
    fit(module, dm, tmp_path)  # 2 iterations: the store fills to 2 rollouts, no phase yet
    assert len(module.store) == 2
    assert module.store.nbytes == RolloutStore.store_bytes(2, 4, 32, OBS)

    with pytest.raises(ConfigError, match=r"model\.n_pi.*Lower model\.n_pi"):
        PPG(n_pi=10**9).check_memory(4, 32, OBS, gym.spaces.Discrete(2))
    image = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    samples, frame = 32 * 8 * 256, 64 * 64 * 3
    store = 32 * (8 * 256 * (frame + 8) + 8 * (frame + 1))  # obs, reward, 4 flags; last obs and start
    # The IMPALA CNN's activations per frame, counted by hand: per stack its convolution's output, the max-pool's,
    # and per residual block two ReLUs, two convolutions and the sum; then the final ReLU.
    stack = [(16, 64), (32, 32), (32, 16)]  # (channels, side of the convolution's output)
    impala = sum(c * s * s + 11 * c * (s // 2) ** 2 for c, s in stack) + 32 * 8 * 8
    assert impala == 401408
    minibatch = samples // 64 * (frame + 4 * frame + 4 * 2 * impala)  # separate: two encoders
    assert PPG(n_pi=32, aux_minibatch_size=4).check_memory(8, 256, image, gym.spaces.Discrete(15)) == (
        2 * store + samples * (4 + 4 * 15) + minibatch)
    minibatch = samples // 64 * (frame + 4 * frame + 4 * impala)  # shared: one
    assert PPG(n_pi=32, aux_minibatch_size=4, arch="shared").check_memory(8, 256, image, gym.spaces.Discrete(15)) == (
        2 * store + samples * (4 + 4 * 15) + minibatch)
    # Without minibatch gradients to keep, the forward chunk over the store bounds the peak: its float frames and
    # the largest layer's input and output (the first convolution's, 16 x 64 x 64).
    chunk = 2048 * 4 * (frame + 2 * 16 * 64 * 64)
    assert PPG(n_pi=1, aux_minibatch_size=1, arch="shared").check_memory(8, 256, image, gym.spaces.Discrete(15)) == (
        2 * 8 * (256 * (frame + 8) + frame + 1) + 2048 * (4 + 4 * 15) + chunk)


def test_the_auxiliary_phase_declares_both_roles_on_one_shared_stream():
    module = PPG(aux_epochs=5)
    assert module.aux_role_specs(7) == {"actor": RoleSpec(module.aux_actor_loss, 5, "aux", 7),
                                        "critic": RoleSpec(module.aux_critic_loss, 5, "aux", 7)}


@pytest.mark.parametrize("aux_minibatch", ["sequences", "samples"])
def test_aux_phase_takes_minibatches_of_aux_minibatch_size_sequences(tmp_path, aux_minibatch, monkeypatch):
    """The reference (openai/phasic-policy-gradient) trains the aux phase on minibatches of aux_mbsize=4
    (env, rollout) sequences. n_pi 2 x 4 envs = 8 sequences: 2 minibatches per aux epoch, so 6 epochs take
    12 steps of each optimizer; the default must be the reference's 4."""
    assert PPG().hparams.aux_minibatch_size == 4
    module, dm = make({"n_pi": 2, "aux_epochs": 6, "aux_minibatch": aux_minibatch},
                      {**CARTPOLE, "total_timesteps": 256}, cls=PPG)
    sizes = []
    original = Shuffler.split

    def split(self, size, stream, count, device):
        parts = original(self, size, stream, count, device)
        if stream == "aux":  # an aux epoch: one step of each optimizer per minibatch
            sizes.extend(len(idx) for idx in parts)
        return parts

    monkeypatch.setattr(Shuffler, "split", split)
    steps: Counter = Counter()  # optimizer steps of the auxiliary phase, by role
    step = RoleUpdater.step

    def counted(self, loss_fn, share, what, *args):
        if what.startswith("auxiliary-phase"):
            steps[self.role] += 1
        return step(self, loss_fn, share, what, *args)

    monkeypatch.setattr(RoleUpdater, "step", counted)
    fit(module, dm, tmp_path)
    assert module.aux_phases == 1
    assert len(sizes) == 6 * 2
    assert steps == {"actor": 12, "critic": 12}
    if aux_minibatch == "sequences":
        assert sizes == [4] * 12
    else:  # as many single steps as 4 sequences of 32 steps hold, split evenly over the valid ones
        assert all(abs(size - sizes[0]) <= 1 for size in sizes) and 100 <= sizes[0] <= 128


# ---------------------------------------------------------------- resume in the middle of a policy phase
@pytest.mark.parametrize("store_in_checkpoint", [True, False])
def test_resume_mid_policy_phase_keeps_the_phase_counter(tmp_path, store_in_checkpoint):
    """n_pi=4, checkpoint after 6 iterations (2 into the second phase). The resumed run has the right
    counter, the stored rollouts when they were checkpointed, and its next aux phase at iteration 7."""
    model = {"n_pi": 4, "aux_epochs": 1, "store_in_checkpoint": store_in_checkpoint}
    data = {**CARTPOLE, "total_timesteps": 10 * 128}
    first, dm = make(model, {**data, "total_timesteps": 6 * 128}, cls=PPG)
    fit(first, dm, tmp_path / "a")
    ckpt_path = tmp_path / "a" / "ckpt" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["ppg"]["phase_iteration"] == 2 and ckpt["ppg"]["aux_phases"] == 1
    assert len(ckpt["ppg"]["store"]) == (2 if store_in_checkpoint else 0)
    stored = copy.deepcopy(ckpt["ppg"]["store"])

    resumed, dm = make(model, data, cls=PPG)
    seen = {}
    original = resumed.take_aux_batch

    def take_aux_batch():
        seen["store"] = [dict(r) for r in resumed.store.rollouts]
        return original()

    resumed.take_aux_batch = take_aux_batch
    fit(resumed, dm, tmp_path / "b", ckpt_path=str(ckpt_path))
    rows = read_metrics(next((tmp_path / "b").rglob("metrics.csv")))
    aux_iterations = [r["train/iteration"] for r in rows if "train/bc_kl" in r]
    assert aux_iterations == [7.0]
    assert resumed.aux_phases == 2 and resumed.phase_iteration == 2
    assert len(seen["store"]) == (4 if store_in_checkpoint else 2)
    if store_in_checkpoint:
        for saved, used in zip(stored, seen["store"][:2]):
            assert all(torch.equal(saved[k], used[k].cpu()) for k in saved)


def test_a_ppo_checkpoint_cannot_resume_ppg(tmp_path):
    ppo, dm = make({}, {**CARTPOLE, "total_timesteps": 128})
    fit(ppo, dm, tmp_path / "a")
    ppg, dm = make({"arch": "separate"}, {**CARTPOLE, "total_timesteps": 256}, cls=PPG)
    with pytest.raises(ConfigError, match="ckpt_path"):
        fit(ppg, dm, tmp_path / "b", ckpt_path=str(tmp_path / "a" / "ckpt" / "last.ckpt"))


def test_the_old_architecture_name_dual_is_read_as_separate():
    """Configs and checkpoints from before the rename say arch: dual; they get the same network, with a warning."""
    with pytest.warns(UserWarning, match="'dual'.*now called 'separate'"):
        module = PPG(arch="dual")
    assert module.hparams.arch == "separate"


class NanAtAuxCriticStep(PPG):
    """The auxiliary phase's critic loss turns NaN at its second step; records both networks just before."""

    def aux_critic_loss(self, share):
        self.aux_calls = getattr(self, "aux_calls", 0) + 1
        loss, stats = super().aux_critic_loss(share)
        if self.aux_calls == 2:
            self.before_bad = {name: p.detach().clone() for name, p in self.agent.named_parameters()}
            loss = loss * float("nan")
        return loss, stats


def test_a_non_finite_aux_loss_stops_both_roles_updates(tmp_path):
    """In the auxiliary phase the roles take turns on each minibatch; after the critic's non-finite loss
    neither the critic nor the actor applies another update (one deferred check covers both), and the error
    names the auxiliary phase's critic loss."""
    def adam(params):
        return torch.optim.Adam(params, lr=1e-2, fused=True)

    module, dm = make(model={"n_pi": 1, "aux_epochs": 4, "actor_optimizer": adam, "critic_optimizer": adam},
                      data={"total_timesteps": 512}, cls=NanAtAuxCriticStep)
    with pytest.raises(Exception) as err:
        fit(module, dm, tmp_path)
    assert "auxiliary-phase critic loss is nan" in str(err.value)
    assert module.aux_calls > 2  # the phase ran on past the bad step
    for name, p in module.agent.named_parameters():
        assert torch.equal(p.detach(), module.before_bad[name]), name


def test_the_auxiliary_phase_draws_its_minibatches_on_a_process_that_steps_no_role(tmp_path):
    """A rank that learns no role in an auxiliary phase (the actor's rank of a placement preset during the critic
    warm-up) still draws each aux epoch's minibatches, so the aux stream stays the same on every rank."""
    module, dm = make({"n_pi": 2, "aux_epochs": 3}, {**CARTPOLE, "total_timesteps": 256}, cls=PPG)
    fit(module, dm, tmp_path)
    shuffler = module.updaters["actor"].shuffler
    expected = torch.Generator()
    expected.set_state(shuffler.generators["aux"].get_state())
    for _ in range(3):  # three epochs of a shuffle of 8 sequences
        torch.randperm(8, generator=expected)
    updaters = [module.updaters[role] for role in module.role_order()]
    stats = interleaved_epochs(updaters, module.aux_role_specs(2), [], {"returns": torch.zeros(8, 32)}, "aux")
    assert not stats
    assert torch.equal(shuffler.generators["aux"].get_state(), expected.get_state())
