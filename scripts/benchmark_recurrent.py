"""Recurrent (LSTM) PPO training SPS against the feed-forward (MLP) PPO on the same task, in one run.

Both train CartPole-v1 without velocities with their shipped configs (configs/ppo/cartpole_novel_lstm.yaml
and cartpole_novel_mlp.yaml: same envs, steps, epochs and 200k-step budget), one after the other in this
process. Training SPS counts rollout and update time; the split shows where the LSTM's cost goes (collection
steps it once per env step; training unrolls it over each sequence). The ratio is reported, with no target.

The target, as in the slow learning test: the LSTM's mean training return over the episodes that ended in
the last 5% of the budget reaches ``THRESHOLD`` and the MLP's does not (without velocities, positions alone
cannot tell which way the pole moves). Prints a table and the verdict, and writes them, with the commit, date
and machine, first in results/benchmark_recurrent.md.

    python scripts/benchmark_recurrent.py [--total-timesteps 200000] [--accelerator cpu|gpu]
"""

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchmark_ppo import train  # noqa: E402
from scripts.results import markdown_table, met, section, stamp, write_section  # noqa: E402

CONFIGS = {"LSTM": "configs/ppo/cartpole_novel_lstm.yaml", "MLP": "configs/ppo/cartpole_novel_mlp.yaml"}
THRESHOLD = 475.0
LATE = 0.05  # the fraction of the budget whose episodes make the final return


def verdict(lstm_return: float, mlp_return: float, threshold: float = THRESHOLD) -> tuple[bool, str]:
    """Whether the LSTM reaches ``threshold`` while the MLP does not, and a sentence with the numbers."""
    ok = lstm_return >= threshold > mlp_return
    return ok, (f"**Target (LSTM final return at least {threshold:g}, MLP's below it): {met(ok)}**: LSTM "
                f"{lstm_return:.1f}, MLP {mlp_return:.1f}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-timesteps", type=int, default=200_000)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--results", default=str(REPO / "results/benchmark_recurrent.md"))
    args = parser.parse_args()

    started = stamp()
    runs = {}
    for name, config in CONFIGS.items():
        with tempfile.TemporaryDirectory() as workdir:
            run = train(args.total_timesteps, args.accelerator, workdir, REPO / config, late_fraction=LATE)
            runs[name] = {**run, "sps": args.total_timesteps / run["loop"]}
    lstm, mlp = runs["LSTM"], runs["MLP"]
    rows = [(name, f"{r['sps']:,.0f}", f"{r['rollout']:.1f} s", f"{r['update']:.1f} s", f"{r['return']:.1f}")
            for name, r in runs.items()]
    table = markdown_table(("policy", "training SPS", "rollout time", "update time",
                            f"mean training return, last {LATE:.0%} of steps"), rows)
    _, sentence = verdict(lstm["return"], mlp["return"])
    text = section(started, f"CartPole-v1 without velocities, {args.total_timesteps:,} env steps each, accelerator "
                            f"{args.accelerator}",
                   f"Recurrent / MLP training SPS: **{lstm['sps'] / mlp['sps']:.2f}** (rollout time "
                   f"x{lstm['rollout'] / mlp['rollout']:.1f}, update time x{lstm['update'] / mlp['update']:.1f}).\n\n"
                   + table + "\n" + sentence)
    print(text)
    write_section(args.results, "Recurrent benchmark results", "scripts/benchmark_recurrent.py", text)


if __name__ == "__main__":
    main()
