"""Re-runs every benchmark at the current checkout, one after the other, each with its default settings.

Each script writes its section (numbers, verdict, commit, date, machine) first in its results file; this
stops at the first that fails. Run it on an otherwise idle machine: the numbers are wall times, and the
placement benchmark needs two free cores. ``--smoke`` checks that the scripts run, with budgets far too
small for the numbers to mean anything: point ``--results-dir`` elsewhere with it.

    python scripts/run_benchmarks.py [--only ppo recurrent placement ppg overlap speed procgen] [--results-dir results] [--smoke]
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# name: (script, results file, arguments for --smoke)
BENCHMARKS = {
    "ppo": ("benchmark_ppo.py", "benchmark_ppo.md", ["--total-timesteps", "4096", "--ceiling-steps", "2048"]),
    "recurrent": ("benchmark_recurrent.py", "benchmark_recurrent.md", ["--total-timesteps", "2048"]),
    "placement": ("benchmark_placement.py", "benchmark_placement.md",
                  ["--hidden", "64", "64", "--num-steps", "32", "--iterations", "6", "--n-pi", "2"]),
    "ppg": ("benchmark_ppg.py", "benchmark_ppg.md", ["--seeds", "1", "--budget", "8192"]),
    # Issue 25's pair: four fits per env (synchronous and overlapped, compiled or not), about 12 minutes on 2 idle
    # CPU cores; the update's and the collector's floors, compiled and eager, about 18 minutes.
    "overlap": ("benchmark_overlap.py", "benchmark_overlap.md", ["--only", "cartpole", "--scale", "0.03"]),
    "speed": ("benchmark_speed.py", "benchmark_speed.md",
              ["--only", "cartpole", "--iterations", "2", "--collect-steps", "2048", "--repeats", "1"]),
    # Needs the procgen and atari extras; about 70 minutes on 2 CPU cores at its defaults.
    "procgen": ("benchmark_procgen.py", "benchmark_procgen.md",
                ["--games", "starpilot", "--budget", "2048", "--num-envs", "8", "--num-steps", "64", "--n-pi", "2"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--results-dir", type=Path, default=REPO / "results")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets: checks the scripts, measures nothing")
    args = parser.parse_args()

    written = []
    for name in args.only:
        script, results, smoke = BENCHMARKS[name]
        cmd = [sys.executable, str(REPO / "scripts" / script), "--results", str(args.results_dir / results),
               *(smoke if args.smoke else [])]
        print(f"=== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            sys.exit(f"=== {name} failed; the benchmarks after it did not run")
        minutes = (time.perf_counter() - start) / 60
        written.append(f"{args.results_dir / results} ({name}, {minutes:.1f} min)")
        print(f"=== {name} done in {minutes:.1f} min", flush=True)
    print("Results written, each new section first in its file:\n  " + "\n  ".join(written))


if __name__ == "__main__":
    main()
