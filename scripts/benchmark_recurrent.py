"""Recurrent (LSTM) PPO training SPS against the feed-forward (MLP) PPO on the same task, in one run.

Both train CartPole-v1 without velocities with their shipped configs (configs/ppo/cartpole_novel_lstm.yaml
and cartpole_novel_mlp.yaml: same envs, steps and epochs) for the same budget, one after the other in
this process. Training SPS counts rollout and update time; the split shows where the LSTM's cost goes
(collection steps it once per env step; training unrolls it over each sequence). Prints a table and
appends it, with date and machine, to results/benchmark_recurrent.md.

    python scripts/benchmark_recurrent.py [--total-timesteps 100000] [--accelerator cpu|gpu]
"""

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchmark_ppo import append_results, machine, markdown_table, train  # noqa: E402

CONFIGS = {"LSTM": "configs/ppo/cartpole_novel_lstm.yaml", "MLP": "configs/ppo/cartpole_novel_mlp.yaml"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-timesteps", type=int, default=100_000)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--results", default=str(REPO / "results/benchmark_recurrent.md"))
    args = parser.parse_args()

    runs = {}
    for name, config in CONFIGS.items():
        with tempfile.TemporaryDirectory() as workdir:
            run = train(args.total_timesteps, args.accelerator, workdir, REPO / config, late_fraction=0.1)
            runs[name] = {**run, "sps": args.total_timesteps / run["loop"]}
    lstm, mlp = runs["LSTM"], runs["MLP"]
    rows = [(name, f"{r['sps']:,.0f}", f"{r['rollout']:.1f} s", f"{r['update']:.1f} s", f"{r['return']:.1f}")
            for name, r in runs.items()]
    header = (f"## {datetime.date.today().isoformat()}: CartPole-v1 without velocities, "
              f"{args.total_timesteps:,} env steps each, accelerator {args.accelerator}\n\nMachine: {machine()}\n\n"
              f"Recurrent / MLP training SPS: **{lstm['sps'] / mlp['sps']:.2f}** (rollout time x"
              f"{lstm['rollout'] / mlp['rollout']:.1f}, update time x{lstm['update'] / mlp['update']:.1f}).\n")
    table = markdown_table(("policy", "training SPS", "rollout time", "update time",
                            "mean return, last 10% of steps"), rows)
    print(header)
    print(table)
    append_results(args.results, "Recurrent benchmark results", "scripts/benchmark_recurrent.py", header + "\n" + table + "\n")


if __name__ == "__main__":
    main()
