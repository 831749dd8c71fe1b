"""Recurrent (LSTM) PPO training SPS against the feed-forward (MLP) PPO on the same task, in one run.

Both train CartPole-v1 without velocities with their shipped configs (configs/ppo/cartpole_novel_lstm.yaml
and cartpole_novel_mlp.yaml: same envs, steps and epochs) for the same budget, one after the other in
this process. Training SPS counts rollout and update time; the split shows where the LSTM's cost goes
(collection steps it once per env step; training unrolls it over each sequence). Prints a table and
appends it, with date and machine, to results/benchmark_recurrent.md.

    python scripts/benchmark_recurrent.py [--total-timesteps 100000] [--accelerator cpu|gpu]
"""

import argparse
import csv
import datetime
import glob
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lit_rl.cli import LitRLCLI  # noqa: E402
from scripts.benchmark_ppo import append_results, machine  # noqa: E402

CONFIGS = {"LSTM": "configs/ppo/cartpole_novel_lstm.yaml", "MLP": "configs/ppo/cartpole_novel_mlp.yaml"}


def train(config: str, total: int, accelerator: str, workdir: str) -> dict[str, float]:
    args = ["fit", "--config", str(REPO / config), "--data.total_timesteps", str(total),
            "--trainer.accelerator", accelerator, "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "0",
            "--checkpoint.every_n_env_steps", "0", "--trainer.logger.save_dir", workdir]
    start = time.perf_counter()
    LitRLCLI(args=args)
    wall = time.perf_counter() - start
    with open(glob.glob(os.path.join(workdir, "lightning_logs", "*", "metrics.csv"))[0]) as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/update_time")]
    rollout = sum(float(r["perf/rollout_time"]) for r in rows)
    update = sum(float(r["perf/update_time"]) for r in rows)
    late = [float(r["train/episodic_return"]) for r in rows
            if r.get("train/episodic_return") and float(r["env_steps"]) > 0.9 * total]
    return {"wall": wall, "rollout": rollout, "update": update, "sps": total / (rollout + update),
            "return": sum(late) / max(len(late), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-timesteps", type=int, default=100_000)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--results", default=str(REPO / "results/benchmark_recurrent.md"))
    args = parser.parse_args()

    runs = {}
    for name, config in CONFIGS.items():
        with tempfile.TemporaryDirectory() as workdir:
            runs[name] = train(config, args.total_timesteps, args.accelerator, workdir)
    lstm, mlp = runs["LSTM"], runs["MLP"]
    rows = [(name, f"{r['sps']:,.0f}", f"{r['rollout']:.1f} s", f"{r['update']:.1f} s", f"{r['return']:.1f}")
            for name, r in runs.items()]
    header = (f"## {datetime.date.today().isoformat()}: CartPole-v1 without velocities, "
              f"{args.total_timesteps:,} env steps each, accelerator {args.accelerator}\n\nMachine: {machine()}\n\n"
              f"Recurrent / MLP training SPS: **{lstm['sps'] / mlp['sps']:.2f}** (rollout time x"
              f"{lstm['rollout'] / mlp['rollout']:.1f}, update time x{lstm['update'] / mlp['update']:.1f}).\n")
    table = ("| policy | training SPS | rollout time | update time | mean return, last 10% of steps |\n"
             "|---|---|---|---|---|\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n")
    print(header)
    print(table)
    append_results(args.results, "Recurrent benchmark results", "scripts/benchmark_recurrent.py", header + "\n" + table + "\n")


if __name__ == "__main__":
    main()
