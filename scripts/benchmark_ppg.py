"""PPG against PPO at equal env-step budgets, 3 seeds each, on CartPole-v1, Pendulum-v1 and LunarLander-v3.

Each PPG config is its PPO counterpart plus the auxiliary phase (same policy phase, same budget), so the
comparison measures what the auxiliary phase adds. For every task, algorithm and seed it runs
``lit-rl fit --config configs/<algo>/<task>.yaml --data.seed S --data.total_timesteps B`` (CSV logger,
one torch thread, ``--jobs`` runs at a time), then:

- tabulates final return (mean +- std over seeds of the mean training return over the episodes that ended
  in the last 5% of the budget; and of the greedy evaluation at the end) and the env steps at which the
  training return, smoothed over 10 iterations, first reaches the task's threshold;
- computes the verdict (see ``verdict``): PPG at least PPO on every task and above it on at least one, on
  two measures, final return and steps to threshold, a difference within one standard error being a tie;
- draws the learning curves with scripts/plot_learning_curves.py;
- writes all of it, with the commit, date and machine, first in results/benchmark_ppg.md (the PNG next to it).

Runs go to ``--out`` (default results/ppg_vs_ppo/, not in git); one finished at the same commit with no
uncommitted changes is reused, so an interrupted benchmark picks up where it stopped; any other is run anew.

    python scripts/benchmark_ppg.py [--seeds 1 2 3] [--jobs 2] [--tasks cartpole pendulum lunarlander]
"""

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.plot_learning_curves import load_runs, plot, smoothed  # noqa: E402
from scripts.results import head, markdown_table, met, section, stamp, write_section  # noqa: E402

# task: (env id, budget in env steps, return threshold for "steps to threshold")
TASKS = {
    "cartpole": ("CartPole-v1", 150_000, 475.0),
    "pendulum": ("Pendulum-v1", 200_000, -250.0),
    "lunarlander": ("LunarLander-v3", 400_000, 100.0),
}
ALGOS = ("ppo", "ppg")


def run(task: str, algo: str, seed: int, budget: int, out: Path) -> Path:
    """One training run; returns its metrics.csv. A run that finished at the current commit, with no
    uncommitted changes then or now, is reused."""
    log_dir = out / task / algo / f"seed{seed}"
    metrics, measured = log_dir / "metrics.csv", log_dir / "commit.txt"
    sha, dirty = head()
    if not dirty and metrics.exists() and measured.exists() and measured.read_text() == f"{sha} {budget}":
        return metrics
    shutil.rmtree(log_dir, ignore_errors=True)
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
    measured.write_text(f"{sha} {budget}" if not dirty else "uncommitted changes")
    print(f"done: {task} {algo} seed {seed}", flush=True)
    return metrics


def summarize(runs: list[dict], budget: int, threshold: float) -> dict[str, object]:
    """Over the seeds: final return, greedy evaluation and steps to threshold (mean, std), and per seed the
    final return (``seed_finals``) and the steps to threshold with a seed that never reaches it counted at the
    budget (``seed_steps``), which the verdict compares."""
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
            "reached": len(hits), "steps": (np.mean(hits), np.std(hits)) if hits else None, "n": len(runs),
            "seed_finals": finals, "seed_steps": [float(budget) if s is None else s for s in reached]}


def compare(ppo: Sequence[float], ppg: Sequence[float], higher_is_better: bool) -> tuple[float, float, str]:
    """PPG's lead over PPO on one measure: the difference of the means over seeds, signed so that a positive
    one favours PPG; its standard error (from the seeds' sample variances); and "better", "worse" or "tie",
    a difference within one standard error being a tie."""
    lead = (np.mean(ppg) - np.mean(ppo)) * (1 if higher_is_better else -1) + 0.0  # + 0.0: no "-0.0"
    se = float(np.sqrt(sum(np.var(x, ddof=1) / len(x) for x in (ppo, ppg) if len(x) > 1)))
    return float(lead), se, "better" if lead > se else "worse" if lead < -se else "tie"


def verdict(tasks: dict[str, tuple[dict, dict]]) -> tuple[bool, str]:
    """Whether PPG is at least PPO on every task and above it on at least one, and the table that decides it.

    ``tasks`` maps a task's name to its (PPO, PPG) ``summarize`` results. Two measures per task: the final
    return (higher is better) and the steps to threshold (fewer is better; a seed that never reaches the
    threshold counts at the budget). PPG is at least PPO on a task when it is worse on neither measure, and
    above PPO when it is also better on one, where better and worse mean by more than one standard error.
    """
    rows, at_least, above = [], [], []
    for task, (ppo, ppg) in tasks.items():
        final = compare(ppo["seed_finals"], ppg["seed_finals"], higher_is_better=True)
        steps = compare(ppo["seed_steps"], ppg["seed_steps"], higher_is_better=False)
        no_worse = "worse" not in (final[2], steps[2])
        better = no_worse and "better" in (final[2], steps[2])
        at_least += [task] if no_worse else []
        above += [task] if better else []
        rows.append((task, f"{np.mean(ppo['seed_finals']):.1f} / {np.mean(ppg['seed_finals']):.1f}",
                     f"{final[0]:+.1f} +- {final[1]:.1f}: {final[2]}",
                     f"{np.mean(ppo['seed_steps']) / 1000:.1f}k / {np.mean(ppg['seed_steps']) / 1000:.1f}k",
                     f"{steps[0] / 1000:+.1f}k +- {steps[1] / 1000:.1f}k: {steps[2]}",
                     "yes" if no_worse else "no", "yes" if better else "no"))
    ok = len(at_least) == len(tasks) and bool(above)
    table = markdown_table(("task", "final return, PPO / PPG", "PPG's lead +- SE", "steps to threshold, PPO / PPG",
                            "PPG's lead +- SE", "PPG at least PPO", "PPG above PPO"), rows)
    return ok, (table + f"\n**Target (PPG at least PPO on every task, above it on at least one): {met(ok)}**: at "
                f"least PPO on {len(at_least)} of {len(tasks)} ({', '.join(at_least) or 'none'}), above on "
                f"{len(above)} ({', '.join(above) or 'none'}).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--budget", type=int, help="env steps per run for every task, instead of each task's own")
    parser.add_argument("--results", type=Path, default=REPO / "results" / "benchmark_ppg.md",
                        help="the results file; the learning curves go next to it")
    parser.add_argument("--out", type=Path, help="where the runs go (default: ppg_vs_ppo/ next to the results file)")
    args = parser.parse_args()
    out = args.out or args.results.parent / "ppg_vs_ppo"
    out.mkdir(parents=True, exist_ok=True)
    budgets = {t: args.budget or TASKS[t][1] for t in args.tasks}

    started = stamp()
    jobs = [(t, a, s) for t in args.tasks for a in ALGOS for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        files = list(pool.map(lambda j: run(*j, budgets[j[0]], out), jobs))
    by_run = dict(zip(jobs, files))

    rows, curves, compared = [], {}, {}
    for task in args.tasks:
        env_id, budget, threshold = TASKS[task][0], budgets[task], TASKS[task][2]
        summaries = []
        for algo in ALGOS:
            runs = load_runs([by_run[(task, algo, s)] for s in args.seeds])
            curves[(env_id, algo.upper())] = runs
            s = summarize(runs, budget, threshold)
            summaries.append(s)
            ev = f"{s['eval'][0]:.1f} +- {s['eval'][1]:.1f}" if s["eval"] else "n/a"
            st = (f"{s['steps'][0] / 1000:.0f}k +- {s['steps'][1] / 1000:.0f}k ({s['reached']}/{s['n']})"
                  if s["steps"] else f"not reached (0/{s['n']})")
            rows.append((env_id, f"{budget // 1000}k", algo.upper(), f"{s['final'][0]:.1f} +- {s['final'][1]:.1f}", ev,
                         f">= {threshold:g}: {st}"))
        compared[env_id] = (summaries[0], summaries[1])
    png = args.results.parent / "ppg_vs_ppo.png"
    plot(curves, {TASKS[t][0]: TASKS[t][2] for t in args.tasks}, png)
    _, decision = verdict(compared)
    body = ("Each PPG config is its PPO config plus the auxiliary phase: same policy phase, same budget. Final "
            "return: the mean training return over the episodes that ended in the last 5% of the budget. Steps to "
            "threshold: where the training return, smoothed over 10 iterations, first reaches the threshold. Both "
            "as mean +- std over seeds (steps over the seeds that reach it).\n\n"
            + markdown_table(("task", "budget", "algo", "final return (last 5%)", "greedy eval",
                              "steps to threshold (seeds reaching it)"), rows)
            + "\nVerdict, from the means over seeds: a seed that never reaches the threshold counts at the budget; "
            "PPG's lead is PPG - PPO on final return and PPO - PPG on steps, with the standard error of that "
            "difference; within one standard error is a tie. PPG is at least PPO on a task when it is worse on "
            "neither measure, above PPO when it is also better on one.\n\n" + decision + "\n\n"
            f"Learning curves: ![PPG vs PPO]({png.name}) (mean and min-max band over seeds, smoothed training "
            "return).")
    text = section(started, f"PPG vs PPO, seeds {args.seeds}", body,
                   f" (driver); each run has 1 torch thread, {args.jobs} runs at a time")
    print(text)
    write_section(args.results, "PPG vs PPO: sample efficiency at equal env-step budgets", "scripts/benchmark_ppg.py",
                  text)


if __name__ == "__main__":
    main()
