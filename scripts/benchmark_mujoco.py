"""PPO on MuJoCo at 1M env steps with CleanRL's settings, beside CleanRL's and rl-zoo's published numbers.

For every task and seed it runs ``lit-rl fit --config configs/ppo/mujoco.yaml --data.env_id <task> --data.seed S``
(one torch thread, ``--jobs`` runs at a time; :mod:`scripts.runs`: a finished run whose resolved config, lit_rl
code and packages match is reused, so the benchmark can be finished over several sessions). Then it tabulates,
per task, over seeds: the final training return (episodes that ended in the last 5% of the budget), the greedy
evaluation at the end (10 episodes), SPS and wall time, beside the published 1M-step means (v4):

- CleanRL ``ppo_continuous_action.py`` (3 seeds): HalfCheetah 1442.6 +- 46.0, Hopper 2382.9 +- 271.7,
  Walker2d 2288.0 +- 571.8 (its settings are configs/ppo/mujoco.yaml's);
- rl-baselines3-zoo PPO (tuned per task, one run, deterministic evaluation): 5819 +- 664, 2410 +- 10, 3479 +- 822.

Verdict (computed): on every task, the mean final training return over seeds is at least CleanRL's published
mean. Learning curves go next to the results file (``mujoco.png``).

    python scripts/benchmark_mujoco.py [--seeds 1 2 3] [--jobs 2] [--tasks HalfCheetah-v4 Hopper-v4 Walker2d-v4]
"""

import argparse
import functools
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.plot_learning_curves import load_runs, plot  # noqa: E402
from scripts.results import markdown_table, met, section, stamp, write_section  # noqa: E402
from scripts.runs import Run, commits, parse_run_arguments, final_return, last_sps, train  # noqa: E402

# Published 1M-step results, v4: (mean, std). CleanRL: docs/benchmark/ppo_continuous_action.md (3 seeds);
# rl-zoo: benchmark.md (one run, deterministic evaluation).
CLEANRL = {"HalfCheetah-v4": (1442.6, 46.0), "Hopper-v4": (2382.9, 271.7), "Walker2d-v4": (2288.0, 571.8)}
RL_ZOO = {"HalfCheetah-v4": (5819, 664), "Hopper-v4": (2410, 10), "Walker2d-v4": (3479, 822)}
CONFIG = REPO / "configs" / "ppo" / "mujoco.yaml"


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f} (one seed)"
    return f"{np.mean(values):.1f} +- {np.std(values):.1f}" if values else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(CLEANRL))
    args = parse_run_arguments(parser, "mujoco")
    out = args.out

    started = stamp()
    runs = {(task, seed): Run(out / task / f"seed{seed}", CONFIG,
                              ("--data.env_id", task, "--data.seed", str(seed), "--data.total_timesteps",
                               str(args.budget), "--torch_threads", "1"), task)
            for task in args.tasks for seed in args.seeds}
    with ThreadPoolExecutor(args.jobs) as pool:
        records = dict(zip(runs, pool.map(functools.partial(train, report_only=args.report_only), runs.values())))

    rows, curves, verdicts = [], {}, []
    for task in args.tasks:
        seeds = [runs[(task, s)] for s in args.seeds]
        loaded = load_runs([r.metrics for r in seeds])
        curves[(task, "PPO")] = loaded
        finals = [final_return(c, args.budget) for c in loaded]
        evals = [c["eval"] for c in loaded if c["eval"] is not None]
        sps = [last_sps(r.metrics) for r in seeds]
        walls = [records[(task, s)]["wall_s"] / 60 for s in args.seeds]
        cleanrl, zoo = CLEANRL.get(task), RL_ZOO.get(task)
        ok = cleanrl is not None and float(np.mean(finals)) >= cleanrl[0]
        verdicts.append((task, ok, cleanrl is not None))
        rows.append((task, str(len(seeds)), mean_std(finals), ", ".join(f"{f:.0f}" for f in finals), mean_std(evals),
                     f"{np.mean(sps):.0f}", f"{np.mean(walls):.1f}",
                     f"{cleanrl[0]:.1f} +- {cleanrl[1]:.1f}" if cleanrl else "n/a",
                     f"{zoo[0]} +- {zoo[1]}" if zoo else "n/a", met(ok) if cleanrl else "no published number"))
    png = args.results.parent / "mujoco.png"
    plot(curves, {t: CLEANRL[t][0] for t in args.tasks if t in CLEANRL}, png)
    compared = [v for v in verdicts if v[2]]
    ok = bool(compared) and all(v[1] for v in compared) and len(compared) == len(args.tasks)
    body = (f"configs/ppo/mujoco.yaml (CleanRL's `ppo_continuous_action.py` settings), {args.budget:,} env steps per "
            f"run, seeds {args.seeds}. Final return: the mean training return over the episodes that ended in the "
            "last 5% of the budget; greedy evaluation: 10 episodes with the mean action at the end; both mean +- "
            "std over seeds. SPS: env steps per second of the whole run (collection and update, 1 torch thread"
            f"{'' if args.report_only else f', {args.jobs} runs at a time'}). {args.conditions + ' ' if args.conditions else ''}Runs used commits {commits(list(records.values()))}.\n\n"
            + markdown_table(("task", "seeds", "final return", "per seed", "greedy eval", "SPS", "wall (min)",
                              "CleanRL (3 seeds)", "rl-zoo (tuned, 1 run, its table's v3 tasks)", "at least CleanRL's mean"), rows)
            + f"\n**Target (the mean final return at least CleanRL's published mean on every task): {met(ok)}** "
            f"({sum(v[1] for v in compared)} of {len(args.tasks)} tasks"
            f"{', from one seed against CleanRL' + chr(39) + 's mean of 3' if len(args.seeds) == 1 else ''}).\n\n"
            f"Learning curves: ![MuJoCo]({png.name}) (mean and min-max band over seeds, smoothed training return; "
            "the dotted line is CleanRL's published mean).")
    text = section(started, f"PPO on MuJoCo, {args.budget // 1000}k steps, seeds {args.seeds}", body,
                   " (driver); each run has 1 torch thread" + ("" if args.report_only else f", {args.jobs} at a time"))
    print(text)
    write_section(args.results, "PPO on MuJoCo against the published numbers", "scripts/benchmark_mujoco.py", text)


if __name__ == "__main__":
    main()
