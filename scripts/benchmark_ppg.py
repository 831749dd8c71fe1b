"""PPG against PPO at equal env-step budgets, 3 seeds each, on CartPole-v1, Pendulum-v1 and LunarLander-v3.

Each PPG config is its PPO counterpart plus the auxiliary phase (same policy phase, same budget), so the
table measures what the auxiliary phase adds. For every task, algorithm and seed it runs
``lit-rl fit --config configs/<algo>/<task>.yaml --data.seed S --data.total_timesteps B`` (CSV logger,
one torch thread, ``--jobs`` runs at a time), then:

- prints a table of final return (mean +- std over seeds of the mean training return over the last 5% of
  the budget, and of the greedy evaluation at the end) and of the env steps at which the smoothed
  training return first reaches the task's threshold;
- draws the learning curves with scripts/plot_learning_curves.py;
- writes both, with date and machine, to results/benchmark_ppg.md (and the PNG next to it).

    python scripts/benchmark_ppg.py [--seeds 1 2 3] [--jobs 2] [--tasks cartpole pendulum lunarlander]
"""

import argparse
import datetime
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchmark_ppo import machine  # noqa: E402
from scripts.plot_learning_curves import load_runs, plot, smoothed  # noqa: E402

# task: (env id, budget in env steps, return threshold for "steps to threshold")
TASKS = {
    "cartpole": ("CartPole-v1", 150_000, 475.0),
    "pendulum": ("Pendulum-v1", 200_000, -250.0),
    "lunarlander": ("LunarLander-v3", 400_000, 100.0),
}
ALGOS = ("ppo", "ppg")


def run(task: str, algo: str, seed: int, budget: int, out: Path) -> Path:
    """One training run; returns its metrics.csv (an existing one is reused)."""
    log_dir = out / task / algo / f"seed{seed}"
    metrics = log_dir / "metrics.csv"
    if metrics.exists():
        return metrics
    exe = Path(sys.executable).parent / "lit-rl"
    args = [str(exe), "fit", "--config", str(REPO / "configs" / algo / f"{task}.yaml"),
            "--data.seed", str(seed), "--data.total_timesteps", str(budget),
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(out / task / algo),
            "--trainer.logger.name", "", "--trainer.logger.version", f"seed{seed}",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--checkpoint.every_n_env_steps", "0", "--checkpoint.dirpath", str(log_dir / "checkpoints"),
            "--torch_threads", "1"]
    proc = subprocess.run(args, cwd=out, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"{task}/{algo}/seed{seed} failed:\n{proc.stderr[-3000:]}")
    print(f"done: {task} {algo} seed {seed}", flush=True)
    return metrics


def summarize(runs: list[dict], budget: int, threshold: float) -> dict[str, object]:
    finals, evals, reached = [], [], []
    for r in runs:
        steps, returns = r["steps"], r["returns"]
        # Episodes that ended in the last 5% of the budget (at least the last iteration that logged any).
        late = returns[steps >= min(0.95 * budget, steps[-1])]
        finals.append(float(late.mean()))
        if r["eval"] is not None:
            evals.append(r["eval"])
        smooth = smoothed(returns)
        hit = np.flatnonzero(smooth >= threshold)
        reached.append(float(steps[hit[0]]) if hit.size else None)
    hits = [s for s in reached if s is not None]
    return {"final": (np.mean(finals), np.std(finals)), "eval": (np.mean(evals), np.std(evals)) if evals else None,
            "reached": len(hits), "steps": (np.mean(hits), np.std(hits)) if hits else None, "n": len(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--out", type=Path, default=REPO / "results" / "ppg_vs_ppo")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    jobs = [(t, a, s) for t in args.tasks for a in ALGOS for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        files = list(pool.map(lambda j: run(*j, TASKS[j[0]][1], args.out), jobs))
    by_run = dict(zip(jobs, files))

    lines = ["| task | budget | algo | final return (last 5%) | greedy eval | steps to threshold (seeds reaching it) |",
             "|---|---|---|---|---|---|"]
    curves = {}
    for task in args.tasks:
        env_id, budget, threshold = TASKS[task]
        for algo in ALGOS:
            runs = load_runs([by_run[(task, algo, s)] for s in args.seeds])
            curves[(env_id, algo.upper())] = runs
            s = summarize(runs, budget, threshold)
            ev = f"{s['eval'][0]:.1f} +- {s['eval'][1]:.1f}" if s["eval"] else "n/a"
            st = f"{s['steps'][0] / 1000:.0f}k +- {s['steps'][1] / 1000:.0f}k ({s['reached']}/{s['n']})" if s["steps"] else f"not reached (0/{s['n']})"
            lines.append(f"| {env_id} | {budget // 1000}k | {algo.upper()} | {s['final'][0]:.1f} +- {s['final'][1]:.1f} "
                         f"| {ev} | >= {threshold:g}: {st} |")
    png = args.out.parent / "ppg_vs_ppo.png"
    plot(curves, {TASKS[t][0]: TASKS[t][2] for t in args.tasks}, png)
    table = "\n".join(lines)
    print(table)
    stamp = datetime.date.today().isoformat()
    with open(REPO / "results" / "benchmark_ppg.md", "a") as f:
        f.write(f"\n## {stamp}: PPG vs PPO, seeds {args.seeds}\n\nMachine: {machine()} (driver); each run has 1 "
                f"torch thread, {args.jobs} runs at a time\n\n{table}\n\n"
                f"Learning curves: ![PPG vs PPO]({png.name}) (mean and min-max band over seeds, smoothed training return).\n")


if __name__ == "__main__":
    main()
