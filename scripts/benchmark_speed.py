"""lit_rl's update and collector against plain PyTorch loops of the same math, in one run on one machine.

For each env (CartPole-v1 with CleanRL's ppo.py settings, configs/ppo/cartpole_cleanrl.yaml; Pendulum-v1 with
configs/ppo/pendulum.yaml; Hopper-v4 with configs/ppo/mujoco.yaml where the mujoco extra is installed) it
measures, alternating the sides ``--repeats`` times so all see the same machine:

- **update**: milliseconds per iteration of lit_rl's update, eager and compiled (``model.compile``), each the
  ``perf/update_time`` of a fit, median over its iterations after the first ``WARMUP``, against
  :func:`plain_update`, an eager PyTorch loop written here of the same math with the config's settings: a
  separate MLP actor and critic, Adam as configured, critic first, the config's epochs x minibatches per role,
  the clipped surrogate with entropy bonus and per-minibatch advantage normalization, the (clipped) value loss,
  gradient-norm clipping. The compile cost is the first iteration of the first compiled fit of each env: a fresh
  torch.compile (dynamo reset, inductor's cache in a new directory);
- **collector**: env steps per second of lit_rl's :class:`~lit_rl.data.collector.Collector` stepping the
  config's envs with the module's ``act()`` (inference alone, nothing learned), eager and compiled
  (``model.compile`` compiles the acting; the ratios take the config's setting), against two floors, loops that
  sample the same networks' actions and values and record observations, actions, log-probs, values, rewards and
  flags into preallocated tensors (:func:`plain_collect`): the *wrapped* floor steps the collector's own envs
  (lit_rl's wrappers: episode statistics, action clipping, normalization), the *bare* floor
  ``gymnasium.make_vec`` of the config's env id and vectorization mode, with no wrapper.

Issue 25's targets (``TARGETS``, :func:`verdicts`): the compiled update's ms per iteration <= 0.7 of the plain
eager loop's on CartPole, and <= 0.7 of lit_rl's eager update's elsewhere ("of today's"); the collector's SPS
>= 0.8 of the bare floor's. Writes the tables and verdicts, with the commit, date and machine, first in
results/benchmark_speed.md.

    python scripts/benchmark_speed.py [--only cartpole pendulum hopper] [--iterations N] [--repeats 3]
"""

import argparse
import csv
import glob
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lit_rl.envs import resolve_env_id  # noqa: E402
from lit_rl.run.cli import LitRLCLI  # noqa: E402
from scripts.benchmark_ppo import ceiling  # noqa: E402
from scripts.results import markdown_table, met, section, stamp, write_section  # noqa: E402

ENVS = {"cartpole": (REPO / "configs/ppo/cartpole_cleanrl.yaml", []),
        "pendulum": (REPO / "configs/ppo/pendulum.yaml", []),
        "hopper": (REPO / "configs/ppo/mujoco.yaml", ["--data.env_id", "Hopper-v4"])}
# Compiled update / its baseline: at most; collector / bare floor: at least.
TARGETS = {"update": 0.7, "collector": 0.8}
# The update's baseline: the plain eager loop on CartPole (CleanRL's settings), lit_rl's own eager update elsewhere.
UPDATE_BASELINE = {"cartpole": "plain"}
WARMUP = 2  # update iterations left out of each median: the first compiles (model.compile), the second settles
QUIET = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "0",
         "--checkpoint.every_n_env_steps", "0", "--torch_threads", "1"]


def resolved(name: str) -> LitRLCLI:
    """The env's config, resolved (model and datamodule built, nothing run)."""
    config, extra = ENVS[name]
    return LitRLCLI(args=["--config", str(config), *extra, *QUIET], run=False)


def lit_rl_update(name: str, iterations: int, compile: bool) -> tuple[float, float]:
    """Seconds of lit_rl's update per iteration, eager or compiled (``model.compile``), over a fit of
    ``iterations + WARMUP`` iterations: the median after the first ``WARMUP``, and the first iteration's."""
    config, extra = ENVS[name]
    cli = resolved(name)
    total = (iterations + WARMUP) * cli.datamodule.num_envs * cli.datamodule.num_steps
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        try:
            LitRLCLI(args=["fit", "--config", str(config), *extra, *QUIET, "--data.total_timesteps", str(total),
                           "--model.compile", str(compile).lower()])
        finally:
            os.chdir(cwd)
        with open(glob.glob(os.path.join(workdir, "lightning_logs", "*", "metrics.csv"))[0]) as f:
            times = [float(r["perf/update_time"]) for r in csv.DictReader(f) if r.get("perf/update_time")]
    return statistics.median(times[WARMUP:]), times[0]


class PlainAgent(nn.Module):
    """A separate MLP actor and critic as lit_rl builds them for a flat observation (orthogonal init)."""

    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: list[int], activation: str,
                 log_std_init: float) -> None:
        super().__init__()
        act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]

        def mlp(out: int, gain: float) -> nn.Sequential:
            layers: list[nn.Module] = []
            width = obs_dim
            for h in hidden:
                layers += [nn.Linear(width, h), act()]
                width = h
            layers.append(nn.Linear(width, out))
            for layer in layers:
                if isinstance(layer, nn.Linear):
                    nn.init.orthogonal_(layer.weight, np.sqrt(2))
                    nn.init.zeros_(layer.bias)
            nn.init.orthogonal_(layers[-1].weight, gain)
            return nn.Sequential(*layers)

        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.actor = mlp(int(action_space.n) if self.discrete else int(np.prod(action_space.shape)), 0.01)
        self.critic = mlp(1, 1.0)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((int(np.prod(action_space.shape)),), log_std_init))

    def dist(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        out = self.actor(obs)
        if self.discrete:
            return torch.distributions.Categorical(logits=out, validate_args=False)
        return torch.distributions.Normal(out, self.log_std.exp(), validate_args=False)

    def logprob_entropy(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.dist(obs)
        if self.discrete:
            return d.log_prob(actions), d.entropy()
        return d.log_prob(actions).sum(-1), d.entropy().sum(-1)


def plain_update(cli: LitRLCLI, iterations: int) -> float:
    """Median seconds per iteration (after the first ``WARMUP``) of an eager PyTorch PPO update with the config's
    settings, on a batch of the config's size with random contents (the update's cost does not depend on them)."""
    hp, data = cli.model.hparams, cli.datamodule
    envs = gym.make_vec(data.env_id, num_envs=1)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    space = envs.single_action_space
    envs.close()
    agent = PlainAgent(obs_dim, space, list(hp.hidden_sizes), hp.activation, hp.log_std_init)
    actor_params = [*agent.actor.parameters(), *([agent.log_std] if not agent.discrete else [])]
    actor_opt = cli.model.actor_optimizer(actor_params)
    critic_opt = cli.model.critic_optimizer(agent.critic.parameters())
    n = data.num_envs * data.num_steps
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(n, obs_dim, generator=gen)
    actions = (torch.randint(0, int(space.n), (n,), generator=gen) if agent.discrete
               else torch.randn(n, *space.shape, generator=gen))
    with torch.no_grad():
        logprobs, _ = agent.logprob_entropy(obs, actions)
        values = agent.critic(obs).squeeze(-1)
    advantages, returns = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    clip, epochs, k = hp.clip_coef, hp.update_epochs, hp.num_minibatches
    times = []
    for _ in range(iterations + WARMUP):
        start = time.perf_counter()
        for epoch_role in ("critic", "actor"):
            for _ in range(epochs):
                for idx in torch.randperm(n).chunk(k):
                    if epoch_role == "critic":
                        new = agent.critic(obs[idx]).squeeze(-1)
                        loss = (new - returns[idx]).square()
                        if hp.clip_value_loss:
                            clipped = values[idx] + (new - values[idx]).clamp(-clip, clip)
                            loss = torch.max(loss, (clipped - returns[idx]).square())
                        loss = hp.vf_coef * 0.5 * loss.mean()
                        opt, params, norm = critic_opt, agent.critic.parameters(), hp.critic_max_grad_norm
                    else:
                        adv = advantages[idx]
                        if hp.norm_adv:
                            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                        new_logprob, entropy = agent.logprob_entropy(obs[idx], actions[idx])
                        ratio = (new_logprob - logprobs[idx]).exp()
                        surrogate = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
                        loss = surrogate - hp.ent_coef * entropy.mean()
                        opt, params, norm = actor_opt, actor_params, hp.actor_max_grad_norm
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if norm is not None:
                        nn.utils.clip_grad_norm_(params, norm)
                    opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[WARMUP:])


def lit_rl_collect(cli: LitRLCLI, steps: int, compile: bool) -> float:
    """Env steps per second of lit_rl's collector with the module's inference, nothing learned; ``compile``: with
    the compiled acting ``model.compile`` turns on (compiled in the warm-up rollout)."""
    data = cli.datamodule
    data.setup("fit")
    cli.model.build(data.single_observation_space, data.single_action_space)
    assert cli.model.agent is not None
    cli.model.agent.compile_acting("inductor" if compile else None)
    sps = ceiling(cli.model, data, steps)
    data.teardown("fit")
    return sps


def bare_envs(data: Any) -> gym.vector.VectorEnv:
    """The config's vector env as gymnasium makes it (env id, number, vectorization mode, kwargs), unwrapped."""
    spec = data.env_spec
    mode = None if spec.vectorization_mode == "auto" else spec.vectorization_mode  # as lit_rl.envs.make reads it
    return gym.make_vec(resolve_env_id(spec.env_id), num_envs=data.num_envs, vectorization_mode=mode,
                        **spec.env_kwargs)


def plain_collect(cli: LitRLCLI, steps: int, bare: bool) -> float:
    """Env steps per second of a plain loop: the envs lit_rl's collector steps (the config's vector env with its
    wrappers) or, ``bare``, the same vector env without any wrapper (:func:`bare_envs`); the same MLP actor and
    critic, sampled actions and values, every step recorded into preallocated tensors."""
    data, hp = cli.datamodule, cli.model.hparams
    envs = bare_envs(data) if bare else data.make_envs(data.num_envs, training=True)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    agent = PlainAgent(obs_dim, envs.single_action_space, list(hp.hidden_sizes), hp.activation, hp.log_std_init)
    T, N = data.num_steps, data.num_envs
    buffers = {"obs": torch.empty(T, N, obs_dim), "logprobs": torch.empty(T, N), "values": torch.empty(T, N),
               "rewards": torch.empty(T, N), "dones": torch.empty(T, N, dtype=torch.bool)}
    actions_buf = torch.empty(T, N, *envs.single_action_space.shape, dtype=torch.long if agent.discrete else torch.float32)
    obs, _ = envs.reset(seed=123)
    rollouts = max(1, steps // (T * N))
    start = None
    with torch.inference_mode():
        for r in range(rollouts + 1):  # the first is the warm-up
            if r == 1:
                start = time.perf_counter()
            for t in range(T):
                obs_t = torch.as_tensor(obs, dtype=torch.float32)
                dist = agent.dist(obs_t)
                action = dist.sample()
                logprob = dist.log_prob(action) if agent.discrete else dist.log_prob(action).sum(-1)
                buffers["obs"][t] = obs_t
                buffers["logprobs"][t] = logprob
                buffers["values"][t] = agent.critic(obs_t).squeeze(-1)
                actions_buf[t] = action
                obs, reward, terminated, truncated, _ = envs.step(action.numpy())
                buffers["rewards"][t] = torch.as_tensor(reward)
                buffers["dones"][t] = torch.as_tensor(terminated | truncated)
    elapsed = time.perf_counter() - start
    envs.close()
    return rollouts * T * N / elapsed


def verdicts(name: str, m: dict[str, float]) -> list[tuple[bool, str]]:
    """Issue 25's targets for one env from its medians ``m`` (seconds per update iteration: ``plain update``,
    ``eager update``, ``compiled update``; SPS: ``lit collect``, ``bare collect``): whether each holds, and a
    sentence that says so with the numbers."""
    baseline = UPDATE_BASELINE.get(name, "eager")
    what = {"plain": "the plain eager loop's", "eager": "lit_rl's eager update's"}[baseline]
    update = m["compiled update"] / m[f"{baseline} update"]
    lit = m["lit collect"]  # as the config collects: with compiled acting where it sets model.compile
    collect = lit / m["bare collect"]
    return [(update <= TARGETS["update"],
             f"{name}: compiled update ms/iteration <= {TARGETS['update']} of {what}: "
             f"{m['compiled update'] * 1e3:.1f} / {m[f'{baseline} update'] * 1e3:.1f} = {update:.3f}"),
            (collect >= TARGETS["collector"],
             f"{name}: collector SPS >= {TARGETS['collector']} of the bare floor's: "
             f"{lit:,.0f} / {m['bare collect']:,.0f} = {collect:.3f}")]


def run_env(name: str, iterations: int, repeats: int, collect_steps: int) -> dict[str, float]:
    """The medians over ``repeats`` alternating repeats of every side, and the compile cost (seconds of the
    first compiled fit's first iteration)."""
    torch.set_num_threads(1)
    torch._dynamo.reset()  # this env's first compiled fit compiles anew: its first iteration is the compile cost
    cli = resolved(name)
    sides: dict[str, list[float]] = {key: [] for key in ("eager update", "compiled update", "plain update",
                                                         "lit eager collect", "lit compiled collect",
                                                         "wrapped collect", "bare collect")}
    compile_cost = float("nan")
    for repeat in range(repeats):
        sides["eager update"].append(lit_rl_update(name, iterations, compile=False)[0])
        compiled, first = lit_rl_update(name, iterations, compile=True)
        sides["compiled update"].append(compiled)
        if repeat == 0:  # later fits reuse the compiled graph
            compile_cost = first
        sides["plain update"].append(plain_update(cli, iterations))
        sides["lit eager collect"].append(lit_rl_collect(cli, collect_steps, compile=False))
        sides["lit compiled collect"].append(lit_rl_collect(cli, collect_steps, compile=True))
        sides["wrapped collect"].append(plain_collect(cli, collect_steps, bare=False))
        sides["bare collect"].append(plain_collect(cli, collect_steps, bare=True))
    m = {key: statistics.median(values) for key, values in sides.items()}
    m["lit collect"] = m["lit compiled collect" if cli.model.hparams.compile else "lit eager collect"]
    return {**m, "compile cost": compile_cost, "config compiles": float(cli.model.hparams.compile)}


def tables(measured: dict[str, dict[str, float]]) -> str:
    """The update and the collector tables, one row per env."""
    update_rows, collect_rows = [], []
    for name, m in measured.items():
        ms = {key: m[f"{key} update"] * 1e3 for key in ("plain", "eager", "compiled")}
        update_rows.append((name, f"{ms['plain']:.1f}", f"{ms['eager']:.1f}", f"{ms['compiled']:.1f}",
                            f"{m['compile cost']:.1f}", f"{ms['eager'] / ms['plain']:.2f}",
                            f"{ms['compiled'] / ms['plain']:.2f}", f"{ms['compiled'] / ms['eager']:.2f}",
                            UPDATE_BASELINE.get(name, "eager")))
        collect_rows.append((name, f"{m['lit eager collect']:,.0f}", f"{m['lit compiled collect']:,.0f}",
                             "compiled" if m["config compiles"] else "eager", f"{m['wrapped collect']:,.0f}",
                             f"{m['bare collect']:,.0f}", f"{m['lit collect'] / m['wrapped collect']:.2f}",
                             f"{m['lit eager collect'] / m['bare collect']:.2f}",
                             f"{m['lit collect'] / m['bare collect']:.2f}"))
    update = markdown_table(("env", "plain eager ms/it", "lit_rl eager ms/it", "lit_rl compiled ms/it",
                             "compile: 1st iteration s", "eager / plain", "compiled / plain", "compiled / eager",
                             "target's baseline"), update_rows)
    collect = markdown_table(("env", "lit_rl eager acting SPS", "lit_rl compiled acting SPS", "config acts",
                              "wrapped floor SPS", "bare floor SPS", "lit (as the config acts) / wrapped",
                              "lit eager / bare", "lit (as the config acts) / bare (the target)"), collect_rows)
    return f"Update (ms per iteration):\n\n{update}\nCollector (env steps per second, inference alone):\n\n{collect}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    available = [n for n in ENVS if n != "hopper" or importlib.util.find_spec("mujoco") is not None]
    parser.add_argument("--only", nargs="*", default=available, choices=list(ENVS))
    parser.add_argument("--iterations", type=int, default=20,
                        help=f"update iterations measured per side and repeat (after {WARMUP} left out)")
    parser.add_argument("--collect-steps", type=int, default=50_000, help="env steps collected per side and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", default=str(REPO / "results/benchmark_speed.md"))
    args = parser.parse_args()
    started = stamp()
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # a cold compile, whatever earlier runs left in the default
        measured = {name: run_env(name, args.iterations, args.repeats, args.collect_steps) for name in args.only}
    said = [v for name, m in measured.items() for v in verdicts(name, m)]
    body = (f"Medians of {args.repeats} alternating repeats; {args.iterations} update iterations (after {WARMUP} "
            f"left out) and {args.collect_steps:,} collected env steps per side and repeat; one torch thread. "
            "Compiled: `--model.compile true`; its compile cost is the first iteration of the env's first compiled "
            "fit (a fresh compile with an empty inductor cache; later fits reuse the graph). The update's target "
            "compares the compiled update with the plain eager loop on CartPole, with lit_rl's eager update (today's) "
            "elsewhere. lit_rl's collector acts eagerly and compiled (`model.compile` compiles the acting too); the "
            "ratios and the target take the acting the env's config sets. "
            "The collector's floors step the same networks' sampling into preallocated tensors: wrapped, "
            "over the collector's own wrapped envs; bare, over `gymnasium.make_vec` of the config's env and mode "
            f"with no wrapper (the target's floor).\n\n{tables(measured)}\n"
            + "\n".join(f"- **{met(ok)}**: {sentence}." for ok, sentence in said))
    text = section(started, "update and collector against plain PyTorch loops", body)
    print(text)
    write_section(args.results, "Update and collector against plain loops", "scripts/benchmark_speed.py", text)


if __name__ == "__main__":
    main()
