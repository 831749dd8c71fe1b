"""The update step's cost per minibatch step: this checkout against an earlier commit, in one run.

For each env (CartPole-v1 with CleanRL's ppo.py settings: 4 epochs x 4 minibatches per role, 32 optimizer
steps per iteration, 100 iterations; Pendulum-v1 with configs/ppo/pendulum.yaml, 20 iterations) it trains with
the checkout (``after``) and with the commit ``--before`` (checked out in a temporary git worktree),
alternating the two ``--repeats`` times so that both see the same machine. The time per optimizer step is
the iterations' summed ``perf/update_time`` (the update of both roles and the weight exchange, logged by
the trainer) over the run's optimizer steps (``trainer.global_step``, both roles'), without the first
iteration (warm-up). It reports the median of the repeats and after / before.

Writes the table, the commit, date and machine first in results/benchmark_update.md.

    python scripts/benchmark_update.py --before <commit> [--only cartpole pendulum] [--iterations N] [--repeats 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.results import markdown_table, section, stamp, write_section  # noqa: E402

ENVS = {"cartpole": REPO / "configs/ppo/cartpole_cleanrl.yaml", "pendulum": REPO / "configs/ppo/pendulum.yaml"}
ITERATIONS = {"cartpole": 100, "pendulum": 20}  # Pendulum's iteration is 4 x 1024 steps and 10 x 32 minibatch steps per role

# Runs in a fresh process with the checkout under test first on sys.path; it uses only what every commit
# since the trainer logged perf/update_time has: LitRLCLI and metrics.csv.
MEASURE = r"""
import csv, glob, json, os, sys
if os.path.exists("lit_rl/run/cli.py"):  # the working folder is the checkout; the command moved into run/
    from lit_rl.run.cli import LitRLCLI
else:
    from lit_rl.cli import LitRLCLI
config, total, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.chdir(workdir)
cli = LitRLCLI(args=["fit", "--config", config, "--data.total_timesteps", str(total), "--trainer.accelerator", "cpu",
                     "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                     "--trainer.limit_val_batches", "0", "--checkpoint.every_n_env_steps", "0"])
with open(glob.glob(os.path.join(workdir, "lightning_logs", "*", "metrics.csv"))[0]) as f:
    updates = [float(r["perf/update_time"]) for r in csv.DictReader(f) if r.get("perf/update_time")]
steps = cli.trainer.global_step
per_iteration = steps / len(updates)
print("RESULT " + json.dumps({"seconds": sum(updates[1:]), "steps": steps - per_iteration,
                              "iterations": len(updates), "module": cli.model.__module__}))
"""


def measure(checkout: Path, config: Path, total: int) -> dict:
    """One fit of ``config`` for ``total`` env steps with the code in ``checkout``: its update seconds and
    optimizer steps (the first iteration left out)."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    with tempfile.TemporaryDirectory() as workdir:
        done = subprocess.run([sys.executable, "-c", MEASURE, str(config), str(total), workdir], cwd=checkout, env=env,
                              capture_output=True, text=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"the measurement at {checkout} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def per_step_ms(result: dict) -> float:
    return 1000.0 * result["seconds"] / result["steps"]


def run_env(name: str, before: Path, iterations: int, repeats: int) -> list[str]:
    config = ENVS[name]
    data = yaml.safe_load(config.read_text())["data"]
    total = iterations * data["num_envs"] * data["num_steps"]
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(repeats):
        for side, checkout in (("before", before), ("after", REPO)):
            # The config file is this checkout's, for both sides: the same experiment.
            times[side].append(per_step_ms(measure(checkout, config, total)))
    b, a = statistics.median(times["before"]), statistics.median(times["after"])
    spread = lambda xs: f"{min(xs):.3f}-{max(xs):.3f}"  # noqa: E731
    return [name, f"{iterations}", f"{b:.3f} ({spread(times['before'])})", f"{a:.3f} ({spread(times['after'])})",
            f"{a / b:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the commit to compare with (e.g. HEAD~1, a hash)")
    parser.add_argument("--only", nargs="+", choices=sorted(ENVS), default=sorted(ENVS))
    parser.add_argument("--iterations", type=int, default=None, help="iterations per fit (default: per env)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", default=str(REPO / "results" / "benchmark_update.md"))
    args = parser.parse_args()
    started = stamp()
    ref = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(before), ref], cwd=REPO, check=True)
        try:
            rows = [run_env(name, before, args.iterations or ITERATIONS[name], args.repeats) for name in args.only]
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, check=False)
    table = markdown_table(["env", "iterations", f"ms per optimizer step, before ({ref}): median (range)",
                            "after: median (range)", "after / before"], rows)
    body = (f"Per optimizer step (one minibatch of one role): the summed `perf/update_time` of the iterations "
            f"after the first, over their optimizer steps; {args.repeats} fits per side, alternating.\n\n{table}")
    text = section(started, f"update step, this checkout vs {ref}", body)
    print(text)
    write_section(args.results, "Update step: time per optimizer step", "scripts/benchmark_update.py", text,
                  comparison=True)


if __name__ == "__main__":
    main()
