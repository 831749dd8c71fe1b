"""model.compile: the compiled optimizer steps against the eager ones.

The default tier compiles with torch.compile's ``aot_eager`` backend: the same captured graphs (the losses, the
torch.func gradients, the clip and torch's functional Adam), run without inductor's code generation, so a fit
costs seconds. The integration tier compiles with inductor, as a run does.
"""

import gc
import os
import pickle
import weakref
from copy import deepcopy
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from lit_rl.algos.compiled import check_compile_placement
from lit_rl.algos.ppg import PPG
from lit_rl.algos.ppo import PPO
from lit_rl.algos.roles import Placement
from lit_rl.errors import ConfigError
from lit_rl.nets import noise_dim
from lit_rl.nets import networks
from lit_rl.nets.layers import layer
from lit_rl.nets.networks import ActorCritic, AheadOfTimeActing, acting_graph
from tests.helpers import fit, make, read_metrics
from tests.test_overlap import Recording

# 3 rollouts of 32, 32 and 16 steps over 4 CartPoles: the last shorter, and each rollout's valid steps vary in
# number (an episode's end is followed by a reset step that is no transition).
DATA = {"total_timesteps": 320}
STATS = ("train/value_loss", "train/policy_loss", "train/entropy", "train/approx_kl", "train/clip_fraction",
         "train/aux_value_loss", "train/bc_kl", "train/aux_phase_value_loss")


@pytest.fixture(autouse=True)
def fresh_compile_cache():
    """Each test compiles its own graphs (and counts them): dynamo's cache holds the graphs of earlier tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def adam(params):
    return torch.optim.Adam(params, lr=3e-3, eps=1e-5, fused=True)


def run(tmp_path, compile, model=None, cls=PPO, backend="aot_eager", data=None):
    """Fits a module with compiling on or off; returns it, its trainer and its logged rows. Compiled, the fit
    must have run compiled graphs (dynamo falls back to eager code where it cannot compile)."""
    module, dm = make({"actor_optimizer": adam, "critic_optimizer": adam, "compile": compile, **(model or {})},
                      {**DATA, **(data or {})}, cls=cls)
    counter = backend if isinstance(backend, CompileCounterWithBackend) else CompileCounterWithBackend(backend)
    module.compile_backend = counter
    trainer = fit(module, dm, tmp_path)
    assert (counter.frame_count > 0) == compile
    return module, trainer, read_metrics(next(tmp_path.rglob("metrics.csv")))


def assert_same_run(eager, compiled, rtol=1e-3, atol=2e-5):
    """Float rounding: Adam divides by the root of small second moments, so rounding grows to ~1e-5 over a fit;
    a wrong step (a missed clip, a stale learning rate, a role reading the other's stepped weights) moves
    parameters by about the learning rate (1e-3) at every step."""
    (m_e, t_e, rows_e), (m_c, t_c, rows_c) = eager, compiled
    assert t_c.global_step == t_e.global_step > 0
    assert {r: u.steps for r, u in m_c.updaters.items()} == {r: u.steps for r, u in m_e.updaters.items()}
    for a, b in zip(m_e.agent.parameters(), m_c.agent.parameters()):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol)
    # The Adam state in the checkpoint's format: the same entries, dtypes, devices and values.
    for opt_e, opt_c in zip(m_e.optimizers(), m_c.optimizers()):
        state_e, state_c = opt_e.optimizer.state_dict(), opt_c.optimizer.state_dict()
        assert state_c["param_groups"] == state_e["param_groups"]
        assert state_c["state"].keys() == state_e["state"].keys()
        for key, entry in state_e["state"].items():
            assert entry.keys() == state_c["state"][key].keys()
            for name, value in entry.items():
                other = state_c["state"][key][name]
                assert (other.dtype, other.device, other.shape) == (value.dtype, value.device, value.shape), name
                torch.testing.assert_close(other, value, rtol=rtol, atol=atol)
    assert len(rows_c) == len(rows_e)
    logged = 0
    for row_e, row_c in zip(rows_e, rows_c):
        for key in STATS:
            if key in row_e:
                assert row_c[key] == pytest.approx(row_e[key], rel=1e-3, abs=1e-5), key
                logged += 1
    assert logged


@pytest.mark.parametrize("model, cls", [
    # Separate networks: both roles in one graph; the critic alone in its warm-up, then the actor's epochs cut
    # short by target_kl while the critic's go on.
    # AdamW with decoupled weight decay, amsgrad and betas of its own, and Adam with L2 weight decay.
    ({"critic_warmup": 1, "target_kl": 0.004, "actor_epochs": 3, "critic_epochs": 2,
      "actor_optimizer": lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.1, amsgrad=True, betas=(0.8, 0.99)),
      "critic_optimizer": lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=0.05, eps=1e-6)}, PPO),
    ({"n_pi": 2, "aux_epochs": 2, "actor_epochs": 2, "critic_epochs": 2}, PPG),  # the auxiliary phase
    # A shared trunk: one role's graph after the other's.
    pytest.param({"arch": "shared"}, PPO, marks=pytest.mark.integration),
    pytest.param({"n_pi": 2, "aux_epochs": 1, "arch": "shared", "aux_minibatch": "samples"}, PPG,
                 marks=pytest.mark.integration),
], ids=["separate, warm-up, target_kl", "PPG", "shared", "PPG shared, samples"])
def test_compiled_steps_match_the_eager_steps(tmp_path, model, cls):
    """Parameters, Adam state, step counts and every logged loss: the same to float rounding (the compiled
    step runs torch's single-tensor Adam, the eager one the fused kernel)."""
    eager = run(tmp_path / "eager", False, {"update_epochs": 2, "num_minibatches": 4, **model}, cls)
    compiled = run(tmp_path / "compiled", True, {"update_epochs": 2, "num_minibatches": 4, **model}, cls)
    assert_same_run(eager, compiled)


def test_each_kind_of_step_compiles_once(tmp_path):
    """Minibatches of varying size (the rollouts' valid steps vary, the last rollout is shorter), a schedule of
    the learning rate and Adam's betas, and PPG's auxiliary phase compile no graph again: one per kind of step
    (the critic alone in its warm-up, both roles in the policy phase, both in the auxiliary phase), and one for the
    collector's acting, whose weights change at every update."""
    counter = CompileCounterWithBackend("aot_eager")
    one_cycle = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=8)  # noqa: E731
    module, trainer, rows = run(tmp_path, True, {"n_pi": 2, "aux_epochs": 1, "critic_warmup": 1,
                                                 "actor_scheduler": one_cycle},  # it changes lr and Adam's beta1
                                PPG, backend=counter, data={"total_timesteps": 5 * 128 + 64})
    assert max(r.get("train/aux_phases", 0) for r in rows) == 3
    assert counter.frame_count == 4


class NanReturnAtOneRow(PPO):
    """From the second iteration on, one row's value target is NaN: the critic's loss is non-finite on the
    minibatch that holds it (one an epoch) and finite on the others."""

    def prepare_batch(self, rollout):
        batch = super().prepare_batch(rollout)
        if rollout.iteration >= 1:
            batch["returns"][0] = float("nan")
        return batch


def test_a_non_finite_loss_stops_a_compiled_run_as_it_stops_an_eager_one(tmp_path):
    """No update of either role from the first non-finite loss on (the later finite minibatches included): the
    critic's parameters and Adam steps end where the eager run's do, and both name the critic's loss."""
    ends = []
    for compile in (False, True):
        module, dm = make({"actor_optimizer": adam, "critic_optimizer": adam, "compile": compile},
                          cls=NanReturnAtOneRow)
        module.compile_backend = "aot_eager"
        with pytest.raises(Exception, match="The critic loss is nan"):
            fit(module, dm, tmp_path / str(compile))
        critic_opt = module.optimizers()[1].optimizer
        ends.append(([p.detach().clone() for p in module.agent.critic_parameters()],
                     {int(s["step"]) for s in critic_opt.state.values()}))
    (eager_params, eager_steps), (compiled_params, compiled_steps) = ends
    assert compiled_steps == eager_steps and len(eager_steps) == 1
    assert 16 < next(iter(eager_steps)) < 32  # the first iteration's 16, and some of the second's
    for a, b in zip(eager_params, compiled_params):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=2e-5)


@pytest.mark.integration
def test_a_compiled_run_resumes_with_compiling_off(tmp_path):
    """The checkpoint holds the optimizers' state as torch's Adam keeps it: an eager fit resumes it, and its Adam
    counts every step of both fits."""
    module, dm = make({"actor_optimizer": adam, "critic_optimizer": adam, "compile": True}, {"total_timesteps": 256})
    module.compile_backend = "aot_eager"
    fit(module, dm, tmp_path / "a", every_n_env_steps=256)
    ckpt = next((tmp_path / "a" / "ckpt").glob("*.ckpt"))
    resumed, dm2 = make({"actor_optimizer": adam, "critic_optimizer": adam}, {"total_timesteps": 512})
    trainer = fit(resumed, dm2, tmp_path / "b", ckpt_path=str(ckpt))
    per_role = 4 * 4  # each iteration: 4 epochs x 4 minibatches per role
    assert trainer.global_step == 4 * 2 * per_role
    for optimizer in resumed.optimizers():
        assert {int(s["step"]) for s in optimizer.optimizer.state.values()} == {4 * per_role}


@pytest.mark.parametrize("model, match", [
    ({"recurrent": "lstm"}, "model.compile: a recurrent policy"),
    ({"arch": "shared", "gradient_surgery": "pcgrad"}, "model.compile: gradient surgery"),
    ({"actor_optimizer": lambda params: torch.optim.SGD(params, lr=0.1)}, "model.actor_optimizer is SGD"),
])
def test_settings_the_compiled_step_cannot_run_are_refused(model, match):
    with pytest.raises(ConfigError, match=match):
        PPO(compile=True, **model)
    PPO(compile=False, **model)  # the same settings without compiling are fine


class TwoProcessGroups(Placement):
    def group_size(self, role):
        return 2


def test_a_role_on_several_processes_or_mixed_precision_is_refused():
    module = SimpleNamespace(trainer=SimpleNamespace(precision="32-true"))
    check_compile_placement(module, Placement())
    with pytest.raises(ConfigError, match="model.compile: the actor is trained by 2 processes"):
        check_compile_placement(module, TwoProcessGroups())
    with pytest.raises(ConfigError, match="trainer.precision='bf16-mixed'"):
        check_compile_placement(SimpleNamespace(trainer=SimpleNamespace(precision="bf16-mixed")), Placement())


@pytest.mark.integration
def test_inductor_compiled_steps_match_the_eager_steps(tmp_path):
    """The graphs as a run compiles them (inductor's generated code), at CleanRL's CartPole minibatches."""
    model = {"update_epochs": 4, "num_minibatches": 4}
    data = {"num_steps": 128, "total_timesteps": 3 * 512}
    eager = run(tmp_path / "eager", False, model, data=data)
    compiled = run(tmp_path / "compiled", True, model, backend="inductor", data=data)
    assert_same_run(eager, compiled)



ACTING = {"discrete": gym.spaces.Discrete(3), "box": gym.spaces.Box(-1.0, 1.0, (2,))}


def compare_acting(agent, space, backend, rtol=1e-5, atol=1e-6, obs=None, noise=None):
    """Acts with ``agent`` compiled (``backend``) and eager on the same observations (4 rows of 6 by default) and
    noise: the same numbers to float rounding (the same discrete actions). Returns the eager ones."""
    obs = torch.randn(4, 6) if obs is None else obs
    if noise is None:
        noise = torch.rand(len(next(iter(obs.values())) if isinstance(obs, dict) else obs), noise_dim(space))
    agent.compile_acting(backend)
    compiled = agent.act(obs, noise=noise)
    agent.compile_acting(None)
    eager = agent.act(obs, noise=noise)
    agent.compile_acting(backend)
    if not isinstance(space, gym.spaces.Box):
        assert torch.equal(compiled[0], eager[0])
    for c, e in zip(compiled, eager):
        torch.testing.assert_close(c, e, rtol=rtol, atol=atol)
    return eager


@pytest.mark.parametrize("space", list(ACTING))
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.integration)])
def test_compiled_acting_reads_the_weights_at_each_call_and_compiles_once(space, backend):
    """The collector's acting as a torch.compile graph (a backend object, as here, or a GPU; inductor by name on a
    CPU compiles ahead of time instead, tested below): the eager numbers, with the weights as they are now (an
    update steps them in place, an overlapped collector loads them), in a copy of the networks as a collector
    process receives it, all from one compile; the greedy path stays eager."""
    counter = CompileCounterWithBackend(backend)
    torch.manual_seed(0)
    agent = ActorCritic(gym.spaces.Box(-1.0, 1.0, (6,)), ACTING[space])
    first = compare_acting(agent, ACTING[space], counter)
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(torch.randn_like(p))  # as an optimizer step does
    stepped = compare_acting(agent, ACTING[space], counter)
    assert not torch.equal(stepped[2], first[2])
    agent.load_state_dict(ActorCritic(gym.spaces.Box(-1.0, 1.0, (6,)), ACTING[space]).state_dict())
    compare_acting(agent, ACTING[space], counter)
    # An overlapped collector's networks: a deep copy, pickled into the collector process.
    agent.compile_acting(backend)
    copy = pickle.loads(pickle.dumps(deepcopy(agent)))
    assert copy.acting_backend == backend
    with torch.no_grad():
        next(copy.parameters()).add_(1.0)
    compare_acting(copy, ACTING[space], counter)
    assert counter.frame_count == 1
    agent.compile_acting(counter)
    agent.act(torch.randn(4, 6), deterministic=True)
    agent.act(torch.randn(4, 6))  # sampling without noise draws through the distribution, eagerly
    assert counter.frame_count == 1


@pytest.fixture
def library_compiles(monkeypatch):
    """Counts the ahead-of-time compiles (the shapes of each's observation and noise)."""
    compiles = []
    original = AheadOfTimeActing.compile

    def counted(agent, keys, inputs):
        compiles.append(tuple(tuple(t.shape) for t in inputs[-2:]))
        return original(agent, keys, inputs)

    monkeypatch.setattr(AheadOfTimeActing, "compile", staticmethod(counted))
    return compiles


@pytest.mark.integration
def test_acting_compiled_ahead_of_time_reads_the_weights_and_compiles_per_shape(library_compiles, tmp_path,
                                                                                monkeypatch):
    """inductor by name on a CPU, as model.compile sets it: an AOTInductor library, the eager numbers with the
    weights as they are at each call, one compile per networks and shape; a library checks no shapes, so another
    batch size must compile another, never run the first's. Nothing is left in $TMPDIR."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where AOTInductor's loader unpacks a library
    space = ACTING["discrete"]
    torch.manual_seed(0)
    agent = ActorCritic(gym.spaces.Box(-1.0, 1.0, (6,)), space)
    first = compare_acting(agent, space, "inductor")
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(torch.randn_like(p))  # as an optimizer step does
    stepped = compare_acting(agent, space, "inductor")
    assert not torch.equal(stepped[2], first[2])
    agent.load_state_dict(ActorCritic(gym.spaces.Box(-1.0, 1.0, (6,)), space).state_dict())
    compare_acting(agent, space, "inductor")
    agent.value_head.weight = torch.nn.Parameter(torch.randn_like(agent.value_head.weight))  # a new tensor
    compare_acting(agent, space, "inductor")
    rows = torch.randn(3, 4, 6)
    for t in range(3):  # a rollout buffer's rows: views at an offset
        compare_acting(agent, space, "inductor", obs=rows[t])
    assert library_compiles == [((4, 6), (4, 1))]
    compare_acting(agent, space, "inductor", obs=torch.randn(5, 6))
    assert library_compiles[1:] == [((5, 6), (5, 1))]
    # An overlapped collector's networks, a deep copy pickled into its process, compile their own.
    copy = pickle.loads(pickle.dumps(deepcopy(agent)))
    with torch.no_grad():
        next(copy.parameters()).add_(1.0)
    compare_acting(copy, space, "inductor")
    assert len(library_compiles) == 3
    assert acting_graph("inductor") is acting_graph("inductor")
    assert list((tmp_path / "tmp").iterdir()) == [] and os.environ["TMPDIR"] == str(tmp_path / "tmp")


@pytest.mark.integration
def test_acting_compiled_ahead_of_time_compiles_anew_for_another_layout_dtype_or_submodule(library_compiles):
    """A library reads its inputs as laid out when it was compiled, and runs the networks' modules as they were:
    observations, noise or weights with other strides, observations of another dtype, or a submodule set anew
    must compile another library (or the eager numbers would be lost without an error)."""
    space = ACTING["box"]
    torch.manual_seed(0)
    agent = ActorCritic(gym.spaces.Box(-1.0, 1.0, (6,)), space)
    compare_acting(agent, space, "inductor")
    compare_acting(agent, space, "inductor", noise=torch.rand(2, 4).t())  # a transposed view
    compare_acting(agent, space, "inductor", obs=torch.randn(6, 4).t())
    compare_acting(agent, space, "inductor", obs=torch.randn(4, 6, dtype=torch.float64))
    weight = agent.policy_trunk[0].weight
    weight.data = weight.data.t().contiguous().t()  # the same values, column-major
    compare_acting(agent, space, "inductor")
    assert len(library_compiles) == 5
    agent.value_head = layer(64, 1)  # the critic's head replaced: its old library must not run
    compare_acting(agent, space, "inductor")
    assert len(library_compiles) == 6
    compare_acting(agent, space, "inductor")
    torch.nn.Linear(3, 3)  # a registration elsewhere: the layout is checked again, and holds
    compare_acting(agent, space, "inductor")
    assert len(library_compiles) == 6


IMAGE = gym.spaces.Box(0, 255, (3, 16, 16), dtype=np.uint8)
SPACES = {  # observation space, action space, networks
    "multi-discrete": (gym.spaces.Box(-1.0, 1.0, (6,)), gym.spaces.MultiDiscrete([3, 4]), {}),
    "box, shared, aux head": (gym.spaces.Box(-1.0, 1.0, (6,)), gym.spaces.Box(-2.0, 2.0, (3,)),
                              {"arch": "shared", "aux_head": True}),
    "dict with an image, detach": (gym.spaces.Dict({"v": gym.spaces.Box(-1.0, 1.0, (2,)), "image": IMAGE}),
                                   gym.spaces.Discrete(4), {"arch": "detach"}),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", list(SPACES))
def test_acting_compiled_ahead_of_time_matches_eager_on_each_kind_of_space(case, library_compiles):
    observation_space, action_space, networks_args = SPACES[case]
    observation_space.seed(0)
    torch.manual_seed(0)
    agent = ActorCritic(observation_space, action_space, **networks_args)
    samples = [observation_space.sample() for _ in range(4)]
    obs = ({k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in observation_space.spaces}
           if isinstance(observation_space, gym.spaces.Dict) else torch.as_tensor(np.stack(samples)))
    compare_acting(agent, action_space, "inductor", obs=obs)
    assert len(library_compiles) == 1


def test_acting_compiled_ahead_of_time_lets_networks_that_are_dropped_go(monkeypatch):
    """The libraries are kept per networks object, weakly: networks dropped elsewhere (a test's, a finished
    fit's) are freed, with their libraries, not kept for the life of the process. A stand-in library here: what
    is kept, not what it computes, is checked (the integration tier compiles real ones)."""
    class Library:
        def boxed_run(self, inputs):
            return torch.zeros(4, 2), torch.zeros(4), torch.zeros(4)

    monkeypatch.setattr(AheadOfTimeActing, "compile", staticmethod(lambda agent, keys, inputs: Library()))
    acting = AheadOfTimeActing()
    agent = ActorCritic(gym.spaces.Box(-1.0, 1.0, (6,)), ACTING["box"])
    acting(agent, torch.randn(4, 6), torch.rand(4, 2))
    assert len(acting.compiled) == 1
    dropped = weakref.ref(agent)
    del agent
    gc.collect()
    assert dropped() is None and len(acting.compiled) == 0


@pytest.mark.integration
def test_acting_that_does_not_export_runs_as_a_torch_compile_graph_and_says_so(monkeypatch):
    def no_export(*args, **kwargs):
        raise RuntimeError("data-dependent control flow")

    monkeypatch.setattr(torch.export, "export", no_export)
    torch.manual_seed(0)
    agent = ActorCritic(gym.spaces.Box(-1.0, 1.0, (6,)), ACTING["box"])
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # dynamo.reset() leaves the counters
    with pytest.warns(UserWarning, match="did not export .*data-dependent control flow.* torch.compile graph"):
        compare_acting(agent, ACTING["box"], "inductor")
    compare_acting(agent, ACTING["box"], "inductor")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1


@pytest.mark.integration
def test_an_overlapped_collector_acts_through_a_library_of_its_own_with_each_versions_weights(tmp_path, monkeypatch):
    """model.compile with inductor and overlapped collection: the collector process compiles the acting ahead of
    time (an AOTInductor library: a C++ wrapper, where torch.compile's CPU graphs have Python ones; the learner
    compiles none, as it draws no actions) and acts with the weights of each version: at policy lag 0 every
    rollout's values and log-probs are the learner's networks' at that iteration."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # the spawned collector's too
    module, dm = make({"actor_optimizer": adam, "critic_optimizer": adam, "compile": True},
                      {**DATA, "collection": "overlapped", "policy_lag": 0}, cls=Recording)
    fit(module, dm, tmp_path / "run")
    assert len(list((tmp_path / "inductor").rglob("*.wrapper.cpp"))) == 1
    assert len(module.seen) == 3
    agent = deepcopy(module.agent)
    agent.compile_acting(None)
    for rollout, weights, _ in module.seen:
        agent.load_state_dict(weights)
        with torch.no_grad():
            dist, values = agent(rollout.obs.flatten(0, 1))
        torch.testing.assert_close(rollout.values.flatten(), values, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rollout.logprobs.flatten(), dist.log_prob(rollout.actions.flatten(0, 1)),
                                   rtol=1e-5, atol=1e-5)


def test_a_compiled_run_acts_through_the_compiled_graph(tmp_path, monkeypatch):
    """model.compile turns on the collectors' compiled acting, at every step of every rollout; without it the
    networks act eagerly."""
    calls = []

    def counted(backend, device_type="cpu"):
        calls.append(backend)
        return acting_graph(backend, device_type)

    monkeypatch.setattr(networks, "acting_graph", counted)
    compiled, _, _ = run(tmp_path / "compiled", True)
    assert len(calls) == DATA["total_timesteps"] // 4  # one call per step of the 4 envs
    assert set(calls) == {compiled.compile_backend}
    calls.clear()
    eager, _, _ = run(tmp_path / "eager", False)
    assert calls == [] and eager.agent.acting_backend is None
