"""PPG against PPO on Procgen (easy distribution) at equal env steps, and the throughput of the image envs.

Sample efficiency: for every game, algorithm and seed it runs ``lit-rl fit --config configs/<algo>/procgen.yaml
--data.env_id procgen:<game>`` (the PPG paper's PPG and its PPO baseline) at ``--budget`` env steps. The paper's
scale (64 envs x 256 steps per rollout, an auxiliary phase every 32 rollouts: 524k env steps) needs a GPU; on a
smaller machine ``--num-envs``, ``--num-steps`` and ``--n-pi`` shrink the rollout and the phase, the rest of both
configs as shipped, and the section says so. It then:

- tabulates the final return (mean training return over the episodes that ended in the last 5% of the budget),
  the paper's normalized score of it (``(R - R_min) / (R_max - R_min)``, Procgen's easy-mode constants), the
  random policy's return, and the steps at which the smoothed training return first reaches 10% normalized score;
- computes the verdict as scripts/benchmark_ppg.py does: PPG at least PPO on every game (worse on neither final
  return nor steps to threshold, by more than one standard error over seeds) and above it on at least one;
- reports each run's throughput: env steps per second, and how its wall time splits between collecting,
  the policy phase's update and PPG's auxiliary phase;
- draws the learning curves and writes all of it, with the commit, date and machine, first in
  results/benchmark_procgen.md.

Throughput of the envs alone (``--throughput``, on by default): random actions in Procgen (one batch of
``--num-envs``) and in Atari Breakout (8 envs) with every backend that is installed, and a short
``configs/ppo/atari.yaml`` fit per backend, whose training SPS over the env-only SPS is the share of the envs'
speed that training keeps.

    python scripts/benchmark_procgen.py [--games starpilot bigfish] [--seeds 1] [--budget 40000]
        [--num-envs 16] [--num-steps 128] [--n-pi 8] [--torch-threads 2]
"""

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchmark_ppg import summarize, verdict  # noqa: E402
from scripts.plot_learning_curves import load_runs, plot  # noqa: E402
from scripts.results import head, markdown_table, section, stamp, write_section  # noqa: E402

# Procgen's easy-mode normalization constants (Cobbe et al. 2019, "Leveraging Procedural Generation to Benchmark
# Reinforcement Learning", appendix): (R_min, R_max) per game.
NORMALIZATION = {"bigfish": (1.0, 40.0), "bossfight": (0.5, 13.0), "caveflyer": (3.5, 12.0), "chaser": (0.5, 13.0),
                 "climber": (2.0, 12.6), "coinrun": (5.0, 10.0), "dodgeball": (1.5, 19.0), "fruitbot": (-1.5, 32.4),
                 "heist": (3.5, 10.0), "jumper": (3.0, 10.0), "leaper": (3.0, 10.0), "maze": (5.0, 10.0),
                 "miner": (1.5, 13.0), "ninja": (3.5, 10.0), "plunder": (4.5, 30.0), "starpilot": (2.5, 64.0)}
ALGOS = ("ppo", "ppg")


def normalized(game: str, value: float) -> float:
    low, high = NORMALIZATION[game]
    return (value - low) / (high - low)


def fit(config: Path, log_dir: Path, args: list[str]) -> None:
    """One ``lit-rl fit`` with the CSV logger writing ``log_dir/metrics.csv``."""
    exe = Path(sys.executable).parent / "lit-rl"
    cmd = [str(exe), "fit", "--config", str(config), *args,
           "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(log_dir.parent),
           "--trainer.logger.name", "", "--trainer.logger.version", log_dir.name,
           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
           "--checkpoint.every_n_env_steps", "0", "--checkpoint.dirpath", str(log_dir / "checkpoints")]
    proc = subprocess.run(cmd, cwd=log_dir.parent, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def run(game: str, algo: str, seed: int, scale: dict[str, int], budget: int, threads: int, out: Path) -> Path:
    """One training run; its metrics.csv. A run finished at the current commit with the same settings, and no
    uncommitted changes then or now, is reused."""
    log_dir = out / game / algo / f"seed{seed}"
    metrics, measured = log_dir / "metrics.csv", log_dir / "commit.txt"
    sha, dirty = head()
    key = f"{sha} {budget} {sorted(scale.items())} {threads}"
    if not dirty and metrics.exists() and measured.exists() and measured.read_text() == key:
        return metrics
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    args = ["--data.env_id", f"procgen:{game}", "--data.seed", str(seed), "--data.total_timesteps", str(budget),
            "--data.num_envs", str(scale["num_envs"]), "--data.num_steps", str(scale["num_steps"]),
            "--data.eval_envs", str(scale["num_envs"]), "--data.eval_episodes", str(scale["num_envs"]),
            "--torch_threads", str(threads)]
    if algo == "ppg":
        args += ["--model.init_args.n_pi", str(scale["n_pi"])]
    fit(REPO / "configs" / algo / "procgen.yaml", log_dir, args)
    measured.write_text(key if not dirty else "uncommitted changes")
    print(f"done: {game} {algo} seed {seed}", flush=True)
    return metrics


def timing(metrics: Path) -> dict[str, float]:
    """A run's env steps per second over its iterations, and the seconds of collecting, updating (the policy
    phase) and PPG's auxiliary phases, summed."""
    sps, parts = [], {"rollout": 0.0, "update": 0.0, "aux": 0.0}
    with open(metrics) as f:
        for row in csv.DictReader(f):
            if row.get("perf/sps"):
                sps.append(float(row["perf/sps"]))
            for name, column in (("rollout", "perf/rollout_time"), ("update", "perf/update_time"),
                                 ("aux", "perf/aux_phase_time")):
                if row.get(column):
                    parts[name] += float(row[column])
    return {"sps": float(np.mean(sps)) if sps else float("nan"), **parts}


def random_returns(game: str, num_envs: int, episodes: int, seed: int = 0) -> tuple[float, float]:
    """The random policy's mean return over ``episodes`` episodes, and the env steps per second of the batch."""
    import gymnasium as gym

    from lit_rl.envs import resolve_env_id

    envs = gym.wrappers.vector.RecordEpisodeStatistics(gym.make_vec(resolve_env_id(f"procgen:{game}"), num_envs))
    envs.reset(seed=seed)
    rng, returns, steps, start = np.random.default_rng(seed), [], 0, time.perf_counter()
    while len(returns) < episodes:
        _, _, _, _, info = envs.step(rng.integers(0, 15, num_envs))
        steps += num_envs
        if "_episode" in info:
            returns += list(info["episode"]["r"][info["_episode"]])
    sps = steps / (time.perf_counter() - start)
    envs.close()
    return float(np.mean(returns[:episodes])), sps


def atari_env_sps(backend: str, num_envs: int = 8, steps: int = 2000) -> float:
    import gymnasium as gym

    from lit_rl.envs import resolve_env_id

    envs = gym.make_vec(resolve_env_id("atari:Breakout"), num_envs, backend=backend, repeat_action_probability=0.0)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        envs.step(rng.integers(0, envs.single_action_space.n, num_envs))
    sps = steps // num_envs * num_envs / (time.perf_counter() - start)
    envs.close()
    return sps


def throughput(out: Path, threads: int) -> str:
    """The Atari part: env-only SPS per installed backend and a short ppo/atari.yaml fit on each."""
    import importlib.util

    rows = []
    for backend in ("ale_vector", "envpool", "gymnasium"):
        needs = {"envpool": "envpool", "gymnasium": "cv2"}.get(backend)
        if needs and importlib.util.find_spec(needs) is None:
            rows.append((backend, "not installed", "", "", ""))
            continue
        env_sps = atari_env_sps(backend)
        log_dir = out / "atari" / backend
        shutil.rmtree(log_dir, ignore_errors=True)
        log_dir.mkdir(parents=True)
        fit(REPO / "configs/ppo/atari.yaml", log_dir,
            ["--data.total_timesteps", "5120", "--data.env_kwargs", f"{{repeat_action_probability: 0.0, backend: {backend}}}",
             "--trainer.limit_val_batches", "0",
             "--torch_threads", str(threads)])
        t = timing(log_dir / "metrics.csv")
        total = t["rollout"] + t["update"]
        rows.append((backend, f"{env_sps:,.0f}", f"{t['sps']:,.0f}", f"{t['sps'] / env_sps:.3f}",
                     f"{t['rollout'] / total:.0%} / {t['update'] / total:.0%}"))
    return ("Atari Breakout, 8 envs (`configs/ppo/atari.yaml`: Nature CNN, 8 x 128 steps, 4 epochs of 4 "
            "minibatches), 5 iterations per backend:\n\n"
            + markdown_table(("backend", "env-only SPS (random actions)", "training SPS", "training / env-only",
                              "rollout / update share of the time"), rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", nargs="+", default=["starpilot", "bigfish"], choices=sorted(NORMALIZATION))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--budget", type=int, default=40_000, help="env steps per run")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--n-pi", type=int, default=8, help="PPG's policy-phase iterations per auxiliary phase")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--no-throughput", dest="throughput", action="store_false")
    parser.add_argument("--results", type=Path, default=REPO / "results" / "benchmark_procgen.md")
    parser.add_argument("--out", type=Path, help="where the runs go (default: procgen_runs/ next to the results file)")
    args = parser.parse_args()
    out = args.out or args.results.parent / "procgen_runs"
    out.mkdir(parents=True, exist_ok=True)
    scale = {"num_envs": args.num_envs, "num_steps": args.num_steps, "n_pi": args.n_pi}

    started = stamp()
    files = {(g, a, s): run(g, a, s, scale, args.budget, args.torch_threads, out)
             for g in args.games for s in args.seeds for a in ALGOS}
    rows, timing_rows, curves, compared, thresholds = [], [], {}, {}, {}
    for game in args.games:
        random_return, env_sps = random_returns(game, args.num_envs, 3 * args.num_envs)
        threshold = NORMALIZATION[game][0] + 0.1 * (NORMALIZATION[game][1] - NORMALIZATION[game][0])
        thresholds[f"procgen:{game}"] = threshold
        summaries = []
        for algo in ALGOS:
            runs = load_runs([files[(game, algo, s)] for s in args.seeds])
            curves[(f"procgen:{game}", algo.upper())] = runs
            s = summarize(runs, args.budget, threshold)
            summaries.append(s)
            ev = f"{s['eval'][0]:.2f} +- {s['eval'][1]:.2f}" if s["eval"] else "n/a"
            steps = (f"{s['steps'][0] / 1000:.0f}k ({s['reached']}/{s['n']})" if s["steps"]
                     else f"not reached (0/{s['n']})")
            rows.append((game, algo.upper(), f"{s['final'][0]:.2f} +- {s['final'][1]:.2f}",
                         f"{normalized(game, s['final'][0]):.3f}", ev, f"{random_return:.2f}",
                         f">= {threshold:.2f}: {steps}"))
            for seed in args.seeds:
                t = timing(files[(game, algo, seed)])
                total = t["rollout"] + t["update"] + t["aux"]
                timing_rows.append((game, algo.upper(), str(seed), f"{t['sps']:.0f}", f"{env_sps:,.0f}",
                                    f"{t['rollout'] / total:.0%}", f"{t['update'] / total:.0%}",
                                    f"{t['aux'] / total:.0%}"))
        compared[f"procgen:{game}"] = (summaries[0], summaries[1])
    png = args.results.parent / "procgen_ppg_vs_ppo.png"
    plot(curves, thresholds, png)
    _, decision = verdict(compared)
    paper_scale = args.num_envs == 64 and args.num_steps == 256 and args.n_pi == 32
    body = (
        f"Runs: `configs/ppo/procgen.yaml` and `configs/ppg/procgen.yaml` on `procgen:<game>` (easy distribution, "
        f"unlimited levels), {args.budget:,} env steps each, seeds {args.seeds}, "
        + ("at the paper's scale." if paper_scale else
           f"scaled down from the paper's 64 envs x 256 steps and N_pi 32 to {args.num_envs} envs x "
           f"{args.num_steps} steps and N_pi {args.n_pi} (an auxiliary phase every "
           f"{args.num_envs * args.num_steps * args.n_pi:,} env steps); every other setting as shipped.")
        + f" {args.torch_threads} torch threads per run, one run at a time. The budget is "
        f"{args.budget / 25e6:.2%} of the paper's easy-mode 25M steps; its curves begin at the random policy's "
        "level and separate over millions of steps, so at this budget the comparison with the paper is with the "
        "random-policy column: whether either algorithm has left it.\n\n"
        + markdown_table(("game", "algo", "final return (last 5%)", "normalized", "greedy eval", "random policy",
                          "steps to 10% normalized"), rows)
        + "\nVerdict (as scripts/benchmark_ppg.py: within one standard error over seeds is a tie; with one seed "
          "every difference counts):\n\n" + decision + "\n\n"
        f"Learning curves: ![PPG vs PPO on Procgen]({png.name}) (smoothed training return; dotted: 10% normalized "
        "score).\n\nThroughput of these runs: env steps per second of training, of the same batch of envs with "
        "random actions and no policy, and where the wall time of the iterations went:\n\n"
        + markdown_table(("game", "algo", "seed", "training SPS", "env-only SPS", "rollout", "policy-phase update",
                          "auxiliary phase"), timing_rows))
    if args.throughput:
        body += "\n" + throughput(out, args.torch_threads)
    text = section(started, f"PPG vs PPO on Procgen, {args.budget:,} env steps, seeds {args.seeds}", body)
    print(text)
    write_section(args.results, "PPG vs PPO on Procgen, and image-env throughput", "scripts/benchmark_procgen.py",
                  text)


if __name__ == "__main__":
    main()
