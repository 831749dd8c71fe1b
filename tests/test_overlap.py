"""Overlapped collection (data.collection=overlapped): collector processes collect while the learner updates.

What is checked: policy lag 0 is the synchronous run, exactly; with lag 1 each rollout is collected by exactly
the weights of one update back, and the update uses the log-probs recorded at collection with values from the
current critic; the budget is exact and resume works; a collector that fails, dies or stalls ends the run
with one line naming it; a learner killed with SIGKILL or stopped with Ctrl-C leaves no collector behind."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from lit_rl.algos.ppo import PPO
from lit_rl.algos.updater import share_of
from lit_rl.data.datamodule import RolloutDataModule
from lit_rl.errors import CollectorError, ConfigError
from lit_rl.objectives import normalize_advantages
from lit_rl.nets import History
from tests.helpers import REPO, QUIET, fit, lit_rl, make, read_metrics

OVERLAPPED = dict(collection="overlapped")
NORMALIZED = dict(normalize_observation=True, normalize_reward=True)


class Recording(PPO):
    """PPO that keeps each rollout it learns from, with its own weights at that moment (after ``j`` updates)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple] = []

    def prepare_batch(self, rollout):
        assert self.agent is not None
        weights = {k: v.detach().clone() for k, v in self.agent.state_dict().items()}
        batch = super().prepare_batch(rollout)
        self.seen.append((rollout, weights, {k: v.clone() for k, v in batch.items()}))
        return batch


def train_metrics(root: Path) -> list[dict[str, float]]:
    rows = read_metrics(next(root.rglob("metrics.csv")))
    return [{k: v for k, v in row.items() if k.startswith("train/") or k == "env_steps"} for row in rows]


@pytest.mark.integration
def test_policy_lag_0_is_the_synchronous_run_exactly(tmp_path):
    """The same parameters and every logged training value, with normalization of observations and rewards
    (whose statistics the learner merges from the collector's moments)."""
    sync, data = make(data=NORMALIZED)
    fit(sync, data, tmp_path / "sync")
    overlapped, data = make(data={**NORMALIZED, **OVERLAPPED, "policy_lag": 0})
    fit(overlapped, data, tmp_path / "overlapped")
    assert sync.state_dict().keys() == overlapped.state_dict().keys()
    for key, value in sync.state_dict().items():
        assert torch.equal(value, overlapped.state_dict()[key]), key
    # Two rollouts: the second is normalized with statistics merged from the first's moments.
    assert [row["env_steps"] for row in train_metrics(tmp_path / "sync")] == [128, 256]
    assert train_metrics(tmp_path / "sync") == train_metrics(tmp_path / "overlapped")


SLOW = {"env_id": "tests.envs:Stall-v0", "env_kwargs": {"after": 0, "mode": "slow"}}
# Two collectors, the second's envs (seeds 5 and 6 of data.seed 3) slow: they load their versions at other times.
SECOND_SLOW = {"env_id": "tests.envs:Stall-v0", "env_kwargs": {"after": 0, "mode": "slow", "slow_from_seed": 5},
               "num_collectors": 2}


@pytest.mark.parametrize("lag, env", [(1, {}), (2, SLOW), (2, SECOND_SLOW)], ids=["lag1", "lag2", "lag2-two-collectors"])
@pytest.mark.integration
def test_each_rollout_is_collected_with_the_weights_of_exactly_lag_updates_back(tmp_path, lag, env):
    """Rollout j's recorded log-probs are those of the weights after update j - lag (the first rollouts: the
    initial weights), not those the learner holds when it takes it, even when newer weights were published
    before the collector started it (lag 2, with envs slower than the update); the batch keeps them, and its
    values come from the current critic."""
    module, data = make(data={**OVERLAPPED, "policy_lag": lag, "total_timesteps": 512, **env}, cls=Recording)
    fit(module, data, tmp_path)
    assert [r.iteration for r, _, _ in module.seen] == [0, 1, 2, 3]
    assert [r.policy_lag for r, _, _ in module.seen] == [min(j, lag) for j in range(4)]
    probe = PPO()
    env = gym.make("CartPole-v1")
    probe.build(env.observation_space, env.action_space)
    assert probe.agent is not None

    def logprobs(weights, rollout):
        probe.agent.load_state_dict(weights)
        valid = rollout.valid
        dist = probe.agent.dist(rollout.obs[valid])
        return dist.log_prob(rollout.actions[valid]), probe.agent.value(rollout.obs[valid])

    weights = [w for _, w, _ in module.seen]
    for j, (rollout, current, batch) in enumerate(module.seen):
        behaviour = weights[max(0, j - lag)]
        recorded = rollout.logprobs[rollout.valid]
        expected, _ = logprobs(behaviour, rollout)
        assert torch.allclose(recorded, expected, atol=1e-5), j
        newest, current_values = logprobs(current, rollout)
        if j >= 1:  # the learner's weights are newer than the behaviour policy's
            assert not torch.allclose(recorded, newest, atol=1e-5), j
        assert torch.equal(batch["logprobs"], recorded)  # the ratio's denominator: the behaviour policy
        assert torch.allclose(batch["values"], current_values, atol=1e-6), j  # GAE: the current critic


def test_the_update_of_a_stale_rollout_uses_the_recorded_logprobs(tmp_path):
    """A rollout recorded by an older policy: the actor loss is the clipped surrogate of exp(new - recorded),
    and it differs from the loss with log-probs recomputed by the current policy."""
    torch.manual_seed(0)  # the networks and the older policy's perturbation, whatever tests ran before
    env = gym.make("CartPole-v1")
    module = PPO(num_minibatches=1)
    module.build(env.observation_space, env.action_space)
    assert module.agent is not None
    old = PPO()
    old.build(env.observation_space, env.action_space)
    assert old.agent is not None
    with torch.no_grad():
        for p in old.agent.parameters():
            p.add_(0.3 * torch.randn_like(p))
    from lit_rl.data.collector import Collector

    collector = Collector(gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync"))
    collector.reset(0)
    rollout = collector.collect(old, 16, env_steps=32, iteration=3)
    rollout.policy_lag = 1
    rollout = module.revalue(rollout)
    batch = module.prepare_batch(rollout)
    share = share_of(batch, torch.arange(len(batch["returns"])))
    loss, stats = module.actor_loss(share)
    dist = module.agent.dist(batch["obs"])
    new = dist.log_prob(batch["actions"])
    adv = normalize_advantages(batch["advantages"], batch["advantages"])
    ratio = (new - rollout.logprobs[rollout.valid]).exp()
    surrogate = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
    expected = surrogate - 0.01 * dist.entropy().mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    recomputed = torch.max(-adv, -adv).mean() - 0.01 * dist.entropy().mean()  # ratio 1: log-probs recomputed
    assert not torch.allclose(loss, recomputed, atol=1e-4)


def stale_rollout(recurrent=None, num_steps=32):
    """A rollout collected by one PPO (the second of two: a recurrent one starts from a state that is not zero),
    and a learner whose weights are those moved by noise: its critic gives other values than the recorded ones."""
    from lit_rl.data.collector import Collector

    env = gym.make("CartPole-v1")
    torch.manual_seed(0)
    behaviour = PPO(recurrent=recurrent, recurrent_size=16)
    behaviour.build(env.observation_space, env.action_space)
    learner = PPO(recurrent=recurrent, recurrent_size=16)
    learner.build(env.observation_space, env.action_space)
    learner.load_state_dict(behaviour.state_dict())
    with torch.no_grad():
        for p in learner.agent.parameters():
            p.add_(0.3 * torch.randn_like(p))
    collector = Collector(gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync"))
    collector.reset(0)
    collector.collect(behaviour, num_steps, env_steps=2 * num_steps, iteration=0)
    rollout = collector.collect(behaviour, num_steps, env_steps=4 * num_steps, iteration=1)
    rollout.policy_lag = 1
    return behaviour, learner, rollout


def test_revalue_gives_the_current_critics_values_and_bootstrap():
    """A stale rollout's values and its ``last_value`` (the bootstrap of GAE's last step) are the current critic's,
    computed here one observation at a time, not those recorded at collection."""
    _, learner, rollout = stale_rollout()
    again = learner.revalue(rollout)
    T, N = rollout.num_steps, rollout.num_envs
    expected = torch.stack([torch.stack([learner.agent.value(rollout.obs[t, i:i + 1])[0] for i in range(N)])
                            for t in range(T)])
    expected_last = torch.stack([learner.agent.value(rollout.last_obs[i:i + 1])[0] for i in range(N)])
    assert not torch.allclose(expected, rollout.values, atol=1e-3)  # the critic moved since collection
    assert not torch.allclose(expected_last, rollout.last_value, atol=1e-3)
    torch.testing.assert_close(again.values, expected)
    torch.testing.assert_close(again.last_value, expected_last)


@pytest.mark.parametrize("recurrent", ["lstm", "gru"])
def test_revalue_of_a_recurrent_critic_runs_the_current_critic_from_the_recorded_state(recurrent):
    """The collecting weights give back the recorded values (the recorded state is the one the rollout started
    from, not zero); the learner's weights give its own critic run step by step from that state, zeroed where an
    episode starts, up to the bootstrap after the last step."""
    behaviour, learner, rollout = stale_rollout(recurrent)
    assert rollout.initial_state is not None and rollout.initial_state.abs().sum() > 0
    assert rollout.starts[1:].any()  # an episode starts inside the rollout: the state is reset there
    same = behaviour.revalue(rollout)
    torch.testing.assert_close(same.values, rollout.values)
    torch.testing.assert_close(same.last_value, rollout.last_value)

    # The bootstrap of env 0 is the first observation of a new episode: its state is reset there too.
    rollout = dataclasses.replace(rollout, last_start=torch.tensor([True, False]))
    T, N = rollout.num_steps, rollout.num_envs
    no_start = torch.zeros(1, N, dtype=torch.bool)
    state, expected = rollout.initial_state, []
    for t in range(T):
        state = state * ~rollout.starts[t].unsqueeze(-1)
        history = History(no_start, state)
        expected.append(learner.agent.act(rollout.obs[t], history=history)[2])
        state = history.final_state
    state = state * ~rollout.last_start.unsqueeze(-1)
    expected_last = learner.agent.act_value(rollout.last_obs, History(no_start, state))
    expected = torch.stack(expected)
    assert not torch.allclose(expected, rollout.values, atol=1e-3)  # the critic moved since collection
    assert not torch.allclose(expected_last, rollout.last_value, atol=1e-3)
    again = learner.revalue(rollout)
    torch.testing.assert_close(again.values, expected)
    torch.testing.assert_close(again.last_value, expected_last)


@pytest.mark.parametrize("recurrent", [None, "lstm"])
def test_revalue_feeds_the_networks_at_most_a_forward_chunk_and_gives_the_unchunked_values(recurrent, monkeypatch):
    """A chunk of 6 observations over 2 envs x 32 steps: no network sees more than 6 at once (a recurrent pass
    runs spans of 3 steps, carrying the state across), and the values are those of one pass over the rollout."""
    import lit_rl.data.store

    _, learner, rollout = stale_rollout(recurrent)
    whole = learner.revalue(rollout)
    monkeypatch.setattr(lit_rl.data.store, "FORWARD_CHUNK", 6)
    seen: list[int] = []
    encoders = [learner.agent.policy_encoder, learner.agent.value_encoder]
    hooks = [e.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0]))) for e in encoders]
    try:
        chunked = learner.revalue(rollout)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and max(seen) <= 6
    assert sum(seen) >= rollout.num_steps * rollout.num_envs + rollout.num_envs  # every observation and the last
    torch.testing.assert_close(chunked.values, whole.values)
    torch.testing.assert_close(chunked.last_value, whole.last_value)


@pytest.mark.integration
def test_lag_1_is_reproducible_and_the_budget_exact(tmp_path):
    """Two runs give the same parameters (each rollout's weights are fixed by its index, not by timing), the
    last rollout is the budget's remainder, and the waits and lag are logged."""
    runs = []
    for name in ("a", "b"):
        module, data = make(data={**OVERLAPPED, "total_timesteps": 4 * 32 * 3 + 4 * 8})
        fit(module, data, tmp_path / name)
        runs.append(module.state_dict())
        assert data.env_steps == 4 * 32 * 3 + 4 * 8 and data.iteration == 4
    for key, value in runs[0].items():
        assert torch.equal(value, runs[1][key]), key
    rows = read_metrics(next((tmp_path / "a").rglob("metrics.csv")))
    logged = [r for r in rows if "perf/policy_lag" in r]
    assert [r["env_steps"] for r in logged] == [128, 256, 384, 416]
    assert [r["perf/policy_lag"] for r in logged] == [0, 1, 1, 1]
    assert all(r["perf/learner_wait"] >= 0 and r["perf/collector_wait"] >= 0 for r in logged)


class KeepCheckpoint(__import__("lightning").Callback):
    """Copies the checkpoint saved at ``env_steps`` before later ones replace it (at the next batch's start:
    Lightning runs checkpoint callbacks last)."""

    def __init__(self, env_steps: int, folder: Path, keep: Path) -> None:
        self.env_steps, self.folder, self.keep = env_steps, folder, keep

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.env_steps == self.env_steps:
            shutil.copy(self.folder / f"env_steps={self.env_steps}.ckpt", self.keep)


@pytest.mark.integration
def test_resume_drops_the_rollout_in_flight_and_extends_exactly(tmp_path):
    """A checkpoint taken while the collector was already collecting the next rollout counts the rollouts
    the learner took; the resumed run continues from there to the new budget."""
    module, data = make(data={**OVERLAPPED, "total_timesteps": 512})
    ckpt = tmp_path / "at256.ckpt"
    fit(module, data, tmp_path / "first", every_n_env_steps=256,
        callbacks=[KeepCheckpoint(256, tmp_path / "first" / "ckpt", ckpt)])
    saved = torch.load(ckpt, weights_only=False)
    assert saved["datamodule_hyper_parameters"]["collection"] == "overlapped"
    assert saved["RolloutDataModule"]["env_steps"] == 256  # the rollouts taken, none in flight
    module, data = make(data={**OVERLAPPED, "total_timesteps": 768})
    fit(module, data, tmp_path / "resumed", ckpt_path=str(ckpt))
    assert data.env_steps == 768 and data.iteration == 6


@pytest.mark.integration
def test_a_resumed_run_normalizes_with_the_checkpoint_statistics(tmp_path):
    """Resumed from one checkpoint with normalized observations, overlapped at lag 0 continues exactly as
    synchronous does: the collectors' first observations are normalized with the checkpoint's statistics."""
    module, data = make(data={**NORMALIZED, "total_timesteps": 256})
    fit(module, data, tmp_path / "first")
    ckpt = str(tmp_path / "first" / "ckpt" / "last.ckpt")
    finals = []
    for name, extra in (("sync", {}), ("overlapped", {**OVERLAPPED, "policy_lag": 0})):
        module, data = make(data={**NORMALIZED, "total_timesteps": 512, **extra})
        fit(module, data, tmp_path / name, ckpt_path=ckpt)
        finals.append(module.state_dict())
    for key, value in finals[0].items():
        assert torch.equal(value, finals[1][key]), key


@pytest.mark.integration
def test_two_collectors_merge_their_statistics_and_a_later_validate_uses_them(tmp_path):
    """Two collectors' moments make the statistics one process would have (every env's steps); the fit leaves
    no collector behind, and a validate after it normalizes with the run's statistics."""
    import multiprocessing

    from lit_rl.envs.wrappers import NormalizeObservation

    common = {**NORMALIZED, "vectorization_mode": "sync", "total_timesteps": 512}
    module, sync = make(data=common)
    fit(module, sync, tmp_path / "sync")
    module, data = make(data={**common, **OVERLAPPED, "policy_lag": 0, "num_collectors": 2})
    fit(module, data, tmp_path / "two")
    assert not multiprocessing.active_children()
    for name in ("obs_rms", "return_rms"):
        one, two = sync.state_dict()[name], data.state_dict()[name]
        assert one["count"] == two["count"] > 100, name
        assert torch.allclose(one["mean"], two["mean"], atol=1e-4) and torch.allclose(one["var"], two["var"], rtol=1e-3)
    data.setup("validate")  # as trainer.validate does after the fit
    envs = data.eval_collector.envs
    while not isinstance(envs, NormalizeObservation):
        envs = envs.env
    assert envs.obs_rms.count == data.state_dict()["obs_rms"]["count"]


class Usr1ToCollectors(__import__("lightning").Callback):
    """SLURM's warning signal, as ``--signal=USR1@90`` sends it to every process of the step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            for process in trainer.datamodule.overlap.processes:
                os.kill(process.pid, signal.SIGUSR1)


@pytest.mark.integration
def test_collectors_survive_slurms_warning_signal_and_run_async_envs(tmp_path):
    module, data = make(data={**OVERLAPPED, "vectorization_mode": "async", "total_timesteps": 512})
    fit(module, data, tmp_path, callbacks=[Usr1ToCollectors()])
    assert data.env_steps == 512


@pytest.mark.integration
def test_settings_that_cannot_apply_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="data.policy_lag: applies to data.collection=overlapped only"):
        RolloutDataModule(policy_lag=2)
    with pytest.raises(ConfigError, match="data.num_collectors: must be positive"):
        RolloutDataModule(collection="overlapped", num_collectors=0)
    with pytest.raises(ConfigError, match="data.num_collectors: data.num_envs=4 envs cannot be split evenly over 3"):
        RolloutDataModule(collection="overlapped", num_envs=4, num_collectors=3)
    # Each process that collects splits its share over its collectors: 4 envs over 2 processes, 2 each.
    proc = lit_rl("fit", "--config", str(REPO / "configs/ppo/cartpole.yaml"), "--config",
                  str(REPO / "configs/placement/data_parallel.yaml"), "--trainer.devices", "2", "--data.num_envs", "4",
                  "--data.collection", "overlapped", "--data.num_collectors", "4", "--data.total_timesteps", "1024",
                  "--trainer.default_root_dir", str(tmp_path / "run"), *QUIET, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = [line for line in proc.stderr.splitlines() if line.startswith("lit-rl: error:")]
    assert message and message[0].startswith("lit-rl: error: data.num_collectors: each of the 2 processes that "
                                             "collect steps 2 of data.num_envs=4 envs"), proc.stderr[-2000:]
    assert not (tmp_path / "run").exists() and not (tmp_path / "lightning_logs").exists()  # refused before any write


@pytest.mark.parametrize("mode, expected", [
    ("raise", r"collector 0 failed:(.|\n)*the simulator broke at step 41"),
    ("hang", r"collectors \[0\] sent no rollout for 3 s \(data.collector_timeout\)"),
])
@pytest.mark.integration
def test_a_collector_that_fails_or_stalls_ends_the_run_naming_it(tmp_path, mode, expected):
    module, data = make(data={**OVERLAPPED, "env_id": "tests.envs:Stall-v0", "env_kwargs": {"after": 40, "mode": mode},
                              "collector_timeout": 3, "total_timesteps": 1024})
    start = time.monotonic()
    with pytest.raises(CollectorError, match=expected):
        fit(module, data, tmp_path)
    assert time.monotonic() - start < 60
    assert data.overlap is None  # the collectors were stopped


class KillCollector(__import__("lightning").Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            process = trainer.datamodule.overlap.processes[0]
            os.kill(process.pid, signal.SIGKILL)
            process.join(5)


@pytest.mark.integration
def test_a_collector_that_dies_ends_the_run_naming_it(tmp_path):
    module, data = make(data={**OVERLAPPED, "total_timesteps": 2048})
    with pytest.raises(CollectorError, match=r"collector 0 \(pid \d+\) died with exit code -9"):
        fit(module, data, tmp_path, callbacks=[KillCollector()])


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid``, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_text(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
@pytest.mark.integration
def test_a_killed_or_interrupted_learner_leaves_no_collector(tmp_path, sig):
    exe = Path(sys.executable).parent / "lit-rl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    learner = subprocess.Popen([str(exe), "fit", "--config", str(REPO / "configs/ppo/cartpole.yaml"), *QUIET,
                                "--data.collection", "overlapped", "--data.num_collectors", "2",
                                "--data.total_timesteps", "10000000", "--trainer.limit_val_batches", "0"],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    collectors: list[int] = []
    while time.monotonic() < deadline and len(collectors) < 2:
        time.sleep(0.5)
        collectors = [p for p in _children(learner.pid) if "spawn_main" in _cmdline(p)]
    assert len(collectors) >= 2, learner.stderr.read() if learner.poll() is not None else "no collectors started"
    time.sleep(3)  # training under way
    descendants = _children(learner.pid)
    learner.send_signal(sig)
    learner.wait(60)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in descendants):
        time.sleep(0.2)
    assert not [p for p in descendants if _alive(p)], "processes outlived the learner"
