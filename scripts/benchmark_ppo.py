"""PPO throughput on CartPole-v1 with CleanRL's ppo.py defaults, against the inference-only ceiling.

In one run on one machine:
1. trains with configs/ppo/cartpole_cleanrl.yaml (4 envs x 128 steps, 4 epochs x 4 minibatches, 500k steps):
   training SPS, final mean return, and the split of wall time between rollout and update;
2. steps the same vector env with the same policy network's inference alone (no learning): the ceiling.

The target (``TARGET``): training SPS at least half the ceiling, i.e. the learning around collection (the
update, the returns, the bookkeeping) costs no more wall time than collecting itself. Prints a table and the
verdict, and writes them, with the commit, date and machine, first in results/benchmark_ppo.md.

    python scripts/benchmark_ppo.py [--total-timesteps 500000] [--accelerator cpu|gpu]
"""

import argparse
import csv
import glob
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lit_rl.run.cli import LitRLCLI  # noqa: E402
from lit_rl.data.collector import Collector  # noqa: E402
from scripts.results import markdown_table, met, section, stamp, write_section  # noqa: E402

CONFIG = REPO / "configs/ppo/cartpole_cleanrl.yaml"
TARGET = 0.5  # training SPS / ceiling SPS


def train(total: int, accelerator: str, workdir: str, config: Path = CONFIG, late_fraction: float = 0.05,
          extra: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Trains ``config`` (with the flags ``extra``) for ``total`` env steps in ``workdir``: wall time, rollout and
    update time (their sum is ``loop``), the mean training return over the last ``late_fraction`` of the steps,
    and the module."""
    args = ["fit", "--config", str(config), "--data.total_timesteps", str(total), "--trainer.accelerator", accelerator,
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.limit_val_batches", "0", "--checkpoint.every_n_env_steps", "0", *extra]
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        start = time.perf_counter()
        cli = LitRLCLI(args=args)
        wall = time.perf_counter() - start
    finally:
        os.chdir(cwd)
    with open(glob.glob(os.path.join(workdir, "lightning_logs", "*", "metrics.csv"))[0]) as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/update_time")]
    rollout = sum(float(r["perf/rollout_time"]) for r in rows)
    update = sum(float(r["perf/update_time"]) for r in rows)
    late = [float(r["train/episodic_return"]) for r in rows
            if r.get("train/episodic_return") and float(r["env_steps"]) > (1 - late_fraction) * total]
    return {"module": cli.model, "datamodule": cli.datamodule, "wall": wall, "loop": rollout + update,
            "rollout": rollout, "update": update, "return": sum(late) / max(len(late), 1)}


def ceiling(module, datamodule, steps: int) -> float:
    """SPS of the same vector env stepped by the same network's inference, nothing learned."""
    collector = Collector(datamodule.make_envs(datamodule.num_envs, training=True))
    collector.reset(seed=123)
    rollouts = max(1, steps // (datamodule.num_envs * datamodule.num_steps))
    collector.collect(module, datamodule.num_steps, 0, 0)  # warm-up
    start = time.perf_counter()
    for _ in range(rollouts):
        collector.collect(module, datamodule.num_steps, 0, 0)
    elapsed = time.perf_counter() - start
    collector.envs.close()
    return rollouts * datamodule.num_envs * datamodule.num_steps / elapsed


def verdict(train_sps: float, ceiling_sps: float, target: float = TARGET) -> tuple[bool, str]:
    """Whether training SPS reaches ``target`` of the ceiling, and a sentence that says so with the numbers."""
    ratio = train_sps / ceiling_sps
    ok = ratio >= target
    return ok, (f"**Target (training SPS at least {target:.0%} of the ceiling): {met(ok)}**: "
                f"{train_sps:,.0f} / {ceiling_sps:,.0f} = {ratio:.1%}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--ceiling-steps", type=int, default=100_000)
    parser.add_argument("--results", default=str(REPO / "results/benchmark_ppo.md"))
    args = parser.parse_args()

    started = stamp()
    with tempfile.TemporaryDirectory() as workdir:
        run = train(args.total_timesteps, args.accelerator, workdir)
        run["datamodule"].setup("fit")  # the CLI tore its envs down; the ceiling builds its own alike
        top = ceiling(run["module"], run["datamodule"], args.ceiling_steps)
        run["datamodule"].teardown("fit")
    train_sps = args.total_timesteps / run["loop"]
    rows = [
        ("training SPS (rollout + update time)", f"{train_sps:,.0f}"),
        ("training SPS (whole process wall time, incl. start-up)", f"{args.total_timesteps / run['wall']:,.0f}"),
        ("ceiling SPS (same envs, same network, inference only)", f"{top:,.0f}"),
        ("training / ceiling", f"{train_sps / top:.1%}"),
        ("wall time in rollout / update", f"{run['rollout']:.1f} s / {run['update']:.1f} s "
                                          f"({run['rollout'] / run['loop']:.0%} / {run['update'] / run['loop']:.0%})"),
        ("final mean episodic return (last 5% of steps)", f"{run['return']:.1f}"),
    ]
    _, sentence = verdict(train_sps, top)
    text = section(started, f"CartPole-v1, CleanRL ppo.py defaults, {args.total_timesteps:,} env steps, accelerator "
                            f"{args.accelerator}", markdown_table(("measure", "value"), rows) + "\n" + sentence)
    print(text)
    write_section(args.results, "PPO benchmark results", "scripts/benchmark_ppo.py", text)


if __name__ == "__main__":
    main()
