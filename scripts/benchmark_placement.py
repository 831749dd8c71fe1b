"""Update-phase wall time with the actor and the critic updating at the same time on their own processes,
against both updating one after the other in one process.

In one run on one machine, for PPO and for PPG, with actor and critic networks of equal size, large
enough that the updates dominate:
- serial: one process, one thread (configs/placement/single_device.yaml);
- parallel: two processes, one thread each, actor on rank 0 and critic on rank 1
  (configs/placement/critic_device.yaml), the same envs split between them.

Both runs see the same rollouts and end with the same weights (tests/test_placement.py). Update time is
the wall time from the start of an iteration's update until every rank holds the new weights
(``perf/update_time``; the weight exchange included); PPG's auxiliary phase is timed the same way
(``perf/aux_phase_time``). The first iteration is a warm-up and not counted. The target (``TARGET``), per
phase: the parallel run's summed wall time at most 0.6 of the serial run's. Prints a table and the verdict,
and writes them, with the commit, date and machine, first in results/benchmark_placement.md.

    python scripts/benchmark_placement.py [--hidden 1024 1024] [--accelerator cpu|gpu]
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from scripts.results import markdown_table, met, section, stamp, write_section  # noqa: E402

CONFIGS = {"PPO": "configs/ppo/cartpole.yaml", "PPG": "configs/ppg/cartpole.yaml"}
TARGET = 0.6  # parallel / serial wall time, per phase
PRESETS = {"serial": ("configs/placement/single_device.yaml", 1),
           "parallel": ("configs/placement/critic_device.yaml", 2)}


def train(algo: str, mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, list[float]]:
    """One run; the update and aux-phase times rank 0 logged, per iteration (warm-up dropped)."""
    preset, processes = PRESETS[mode]
    envs, steps = args.num_envs, args.num_steps
    iterations = args.iterations
    cmd = [str(Path(sys.executable).parent / "lit-rl"), "fit", "--config", str(REPO / CONFIGS[algo]),
           "--config", str(REPO / preset), "--trainer.accelerator", args.accelerator,
           "--data.num_envs", str(envs), "--data.num_steps", str(steps),
           "--data.total_timesteps", str(envs * steps * iterations), "--data.vectorization_mode", "sync",
           "--model.init_args.hidden_sizes", str(args.hidden), "--model.init_args.num_minibatches",
           str(args.num_minibatches), "--trainer.limit_val_batches", "0", "--checkpoint.every_n_env_steps", "0",
           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
           "--trainer.logger.save_dir", str(workdir / f"{algo}-{mode}")]
    if algo == "PPO":
        cmd += ["--model.init_args.update_epochs", str(args.epochs)]
    else:
        cmd += ["--model.init_args.actor_epochs", str(args.epochs), "--model.init_args.critic_epochs",
                str(args.epochs), "--model.init_args.n_pi", str(args.n_pi), "--model.init_args.aux_epochs",
                str(args.aux_epochs), "--model.init_args.aux_minibatch_size",
                str(args.aux_sequences)]
    if processes > 1:
        cmd += ["--trainer.strategy.process_group_backend", "gloo" if args.accelerator == "cpu" else "nccl"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{algo} {mode} failed:\n{proc.stderr[-4000:]}")
    metrics = next((workdir / f"{algo}-{mode}").rglob("metrics.csv"))
    with open(metrics) as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/update_time")]
    rows.sort(key=lambda r: float(r["env_steps"]))
    aux = [float(r["perf/aux_phase_time"]) for r in rows if r.get("perf/aux_phase_time")]
    policy = [float(r["perf/update_time"]) - (float(r["perf/aux_phase_time"]) if r.get("perf/aux_phase_time") else 0.0)
              for r in rows]
    return {"update": policy[1:], "aux": aux}


def verdict(ratios: dict[str, float], target: float = TARGET) -> tuple[bool, str]:
    """Whether every phase's parallel / serial ratio is at most ``target``, and a sentence with the ratios."""
    ok = all(r <= target for r in ratios.values())
    return ok, (f"**Target (parallel / serial at most {target:g} in every phase): {met(ok)}**: "
                + ", ".join(f"{phase} {r:.2f}" for phase, r in ratios.items()) + ".")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024], help="widths of both networks")
    parser.add_argument("--num-envs", type=int, default=8, help="envs in all (split between the processes)")
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--num-minibatches", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4, help="actor and critic epochs per iteration")
    parser.add_argument("--iterations", type=int, default=13)
    parser.add_argument("--n-pi", type=int, default=4)
    parser.add_argument("--aux-epochs", type=int, default=6)
    parser.add_argument("--aux-sequences", type=int, default=2, help="env sequences per aux minibatch")
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--results", default=str(REPO / "results/benchmark_placement.md"))
    args = parser.parse_args()
    args.hidden = list(args.hidden)
    torch.set_num_threads(args.threads)  # as each training process runs; machine() reports it
    started = stamp()

    times: dict[tuple[str, str], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in CONFIGS:
            for mode in PRESETS:
                times[algo, mode] = train(algo, mode, args, Path(tmp))
                print(f"{algo} {mode}: {len(times[algo, mode]['update'])} updates, "
                      f"{len(times[algo, mode]['aux'])} aux phases", file=sys.stderr)

    rows, ratios = [], {}
    for algo, name, phase, key in (("PPO", "PPO update", "update (critic + actor epochs)", "update"),
                                   ("PPG", "PPG policy phase", "policy phase, per iteration", "update"),
                                   ("PPG", "PPG auxiliary phase", "auxiliary phase", "aux")):
        serial, parallel = times[algo, "serial"][key], times[algo, "parallel"][key]
        if not serial or not parallel:
            raise SystemExit(f"no {name} was timed after the warm-up: raise --iterations (or lower --n-pi)")
        ratios[name] = ratio = sum(parallel) / sum(serial)
        rows.append((f"{algo} {phase}", f"{median(serial):.3f} s", f"{median(parallel):.3f} s", f"{ratio:.2f}",
                     met(ratio <= TARGET), f"{len(serial)} / {len(parallel)}"))
    batch = args.num_envs * args.num_steps
    _, sentence = verdict(ratios)
    text = section(started, f"CartPole-v1, networks {args.hidden} (actor and critic), {batch} samples per iteration "
                            f"in {args.num_minibatches} minibatches, {args.epochs} epochs; PPG N_pi {args.n_pi}, "
                            f"{args.aux_epochs} aux epochs; {args.threads} thread(s) per process, accelerator "
                            f"{args.accelerator}",
                   "Serial: one process does the critic's then the actor's update. Parallel: two processes (actor on "
                   "rank 0, critic on rank 1) update at the same time, then exchange weights. Median per update; "
                   "ratio of the summed wall times.\n\n"
                   + markdown_table(("phase", "serial (1 process)", "parallel (2 processes)", "parallel / serial",
                                     f"<= {TARGET:g}", "updates counted"), rows) + "\n" + sentence)
    print(text)
    write_section(args.results, "Placement benchmark results", "scripts/benchmark_placement.py", text)


if __name__ == "__main__":
    main()
