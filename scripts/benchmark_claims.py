"""Each shipped config's headline learning claim, measured as the median of 3 seeds.

A claim that holds for one seed on one machine's float rounding is a coin toss, so the README's and the
configs' claims are checked here on the median over seeds: for every claim it runs ``lit-rl fit --config
<config> --data.seed S`` (one torch thread, ``--jobs`` at a time; :mod:`scripts.runs`: a finished run whose
resolved config, lit_rl code and packages match is reused) and takes the final training return (the episodes
that ended in the last 5% of the budget) and the greedy evaluation at the end (10 episodes). A claim holds when
the median of each is on its side of the threshold. The MuJoCo and MinAtar configs have benchmarks of their
own (``benchmark_mujoco.py``, ``benchmark_minatar.py``); the LunarLander and Procgen/Atari configs claim no
threshold of their own (``benchmark_ppg.py`` and ``benchmark_procgen.py`` measure them).

    python scripts/benchmark_claims.py [--seeds 1 2 3] [--jobs 2] [--only ppo/cartpole ...]
"""

import argparse
import functools
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.plot_learning_curves import load_runs  # noqa: E402
from scripts.results import markdown_table, met, section, stamp, write_section  # noqa: E402
from scripts.runs import Run, commits, final_return, train  # noqa: E402

# name: (config, its budget, threshold, "at least" or "below", where the claim is made)
CLAIMS = {
    "ppo/cartpole": ("configs/ppo/cartpole.yaml", 100_000, 475.0, "at least", "README, config, test_learning.py"),
    "ppo/cartpole_cleanrl": ("configs/ppo/cartpole_cleanrl.yaml", 500_000, 475.0, "at least",
                             "CleanRL's 490.0 +- 6.1 (benchmark_ppo.py)"),
    "ppo/pendulum": ("configs/ppo/pendulum.yaml", 300_000, -300.0, "at least", "config, test_learning.py"),
    "ppg/cartpole": ("configs/ppg/cartpole.yaml", 150_000, 475.0, "at least", "config, test_learning.py"),
    "ppo/cartpole_novel_lstm": ("configs/ppo/cartpole_novel_lstm.yaml", 200_000, 475.0, "at least",
                                "README (Recurrent policies), config, test_learning.py"),
    "ppo/cartpole_novel_mlp": ("configs/ppo/cartpole_novel_mlp.yaml", 200_000, 475.0, "below",
                               "README: the MLP cannot solve it"),
}


def holds(value: float, threshold: float, side: str) -> bool:
    return value >= threshold if side == "at least" else value < threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(CLAIMS), default=list(CLAIMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", type=Path, default=REPO / "results" / "benchmark_claims.md")
    parser.add_argument("--out", type=Path, help="where the runs go (default: claims_runs/ next to the results file)")
    parser.add_argument("--report-only", action="store_true",
                        help="report the finished runs of these configs, whatever lit_rl code they ran; train nothing")
    args = parser.parse_args()
    out = args.out or args.results.parent / "claims_runs"

    started = stamp()
    runs = {}
    for name in args.only:
        config = REPO / CLAIMS[name][0]
        env_id = next(line.split(":", 1)[1].strip() for line in config.read_text().splitlines()
                      if line.strip().startswith("env_id:"))
        for seed in args.seeds:
            runs[(name, seed)] = Run(out / name.replace("/", "_") / f"seed{seed}", config,
                                     ("--data.seed", str(seed), "--torch_threads", "1"), env_id)
    with ThreadPoolExecutor(args.jobs) as pool:
        records = dict(zip(runs, pool.map(functools.partial(train, report_only=args.report_only), runs.values())))

    rows, verdicts = [], []
    for name in args.only:
        _, budget, threshold, side, where = CLAIMS[name]
        curves = load_runs([runs[(name, s)].metrics for s in args.seeds])
        finals = [final_return(c, budget) for c in curves]
        evals = [c["eval"] for c in curves]
        ok = holds(float(np.median(finals)), threshold, side) and holds(float(np.median(evals)), threshold, side)
        verdicts.append(ok)
        rows.append((name, f"{budget // 1000}k", f"{side} {threshold:g}", ", ".join(f"{f:.0f}" for f in finals),
                     f"{np.median(finals):.1f}", ", ".join(f"{e:.0f}" for e in evals), f"{np.median(evals):.1f}",
                     met(ok), where))
    body = (f"Seeds {args.seeds}; each config as shipped, at its own budget. Final return: the mean training return "
            "over the episodes that ended in the last 5% of the budget; greedy: the evaluation at the end (10 "
            f"episodes). A claim holds when the median of both is on its side. Runs used commits "
            f"{commits(list(records.values()))}.\n\n"
            + markdown_table(("config", "budget", "claim", "final return per seed", "median", "greedy per seed",
                              "median", "holds", "claimed in"), rows)
            + f"\n**Target (every claim holds for the median of the seeds): {met(all(verdicts))}** "
            f"({sum(verdicts)} of {len(verdicts)}).")
    text = section(started, f"the configs' learning claims, seeds {args.seeds}", body,
                   f" (driver); each run has 1 torch thread, {args.jobs} runs at a time")
    print(text)
    write_section(args.results, "The configs' learning claims, over seeds", "scripts/benchmark_claims.py", text)


if __name__ == "__main__":
    main()
