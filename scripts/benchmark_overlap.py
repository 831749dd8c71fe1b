"""Synchronous vs overlapped collection (data.collection), in one run on one machine.

For each env (CartPole-v1 with CleanRL's ppo.py settings, 500k steps; Pendulum-v1 with configs/ppo/pendulum.yaml,
300k steps) it trains twice, synchronous and overlapped (policy lag 1, one collector process), and reports:

- steady training SPS: env steps per second of wall time between 20% of the budget and the end (process
  start-up, the collectors' spawn included, left out), and over the whole fit;
- the final mean training return (the episodes that ended in the last 5% of the budget);
- the mean policy lag, and the learner's and the collector's waits per iteration (overlapped);
- the ceiling: the same vector env stepped by the same network's inference alone.

Targets (CartPole; ``TARGETS``): overlapped / synchronous steady SPS >= 1.7, overlapped steady SPS >= 0.5 of
the ceiling, and a final return >= 475. Writes the table, the verdicts, the commit, date and machine first in
results/benchmark_overlap.md.

    python scripts/benchmark_overlap.py [--only cartpole pendulum] [--scale 1.0]
"""

import argparse
import csv
import glob
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchmark_ppo import ceiling, train  # noqa: E402
from scripts.results import markdown_table, met, section, stamp, write_section  # noqa: E402

ENVS = {"cartpole": (REPO / "configs/ppo/cartpole_cleanrl.yaml", 500_000),
        "pendulum": (REPO / "configs/ppo/pendulum.yaml", 300_000)}
TARGETS = {"speed-up": 1.7, "of ceiling": 0.5, "return": 475.0}
MODES = {"synchronous": [], "overlapped": ["--data.collection", "overlapped"]}


def timeline(workdir: str) -> list[dict[str, float]]:
    """The logged iterations: env steps, seconds since the fit started (from the logged SPS), and the rest."""
    with open(glob.glob(os.path.join(workdir, "lightning_logs", "*", "metrics.csv"))[0]) as f:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f) if r.get("perf/sps")]
    for r in rows:
        r["time"] = r["env_steps"] / r["perf/sps"]
    return rows


def measure(rows: list[dict[str, float]], total: int) -> dict[str, float]:
    start = next(r for r in rows if r["env_steps"] >= 0.2 * total)
    end = rows[-1]
    overlapped = [r for r in rows[1:] if "perf/policy_lag" in r]
    mean = lambda key: sum(r.get(key, 0.0) for r in overlapped) / max(len(overlapped), 1)  # noqa: E731
    return {"steady": (end["env_steps"] - start["env_steps"]) / (end["time"] - start["time"]),
            "whole": end["env_steps"] / end["time"], "lag": mean("perf/policy_lag"),
            "learner_wait": mean("perf/learner_wait"), "collector_wait": mean("perf/collector_wait"),
            "update": mean("perf/update_time"), "iterations": len(rows)}


def verdicts(sync: dict[str, Any], over: dict[str, Any], top: float) -> list[tuple[bool, str]]:
    speedup, share = over["steady"] / sync["steady"], over["steady"] / top
    return [
        (speedup >= TARGETS["speed-up"], f"overlapped / synchronous steady SPS >= {TARGETS['speed-up']}: "
                                         f"{over['steady']:,.0f} / {sync['steady']:,.0f} = {speedup:.2f}"),
        (share >= TARGETS["of ceiling"], f"overlapped steady SPS >= {TARGETS['of ceiling']:.0%} of the ceiling: "
                                         f"{over['steady']:,.0f} / {top:,.0f} = {share:.1%}"),
        (over["return"] >= TARGETS["return"], f"overlapped final return >= {TARGETS['return']:.0f}: {over['return']:.1f}"),
    ]


def run_env(name: str, scale: float) -> str:
    config, budget = ENVS[name]
    total = int(budget * scale) // 512 * 512
    results: dict[str, dict[str, Any]] = {}
    top = 0.0
    for mode, flags in MODES.items():
        with tempfile.TemporaryDirectory() as workdir:
            run = train(total, "cpu", workdir, config=config, extra=flags)
            results[mode] = {**measure(timeline(workdir), total), "return": run["return"]}
            if mode == "synchronous":
                run["datamodule"].setup("fit")
                top = ceiling(run["module"], run["datamodule"], min(total, 100_000))
                run["datamodule"].teardown("fit")
    rows = [(mode, f"{r['steady']:,.0f}", f"{r['whole']:,.0f}", f"{r['return']:.1f}", f"{r['lag']:.2f}",
             f"{r['learner_wait'] * 1e3:.1f}", f"{r['collector_wait'] * 1e3:.1f}", f"{r['update'] * 1e3:.1f}")
            for mode, r in results.items()]
    rows.append(("ceiling (inference only)", f"{top:,.0f}", "", "", "", "", "", ""))
    table = markdown_table(("mode", "steady SPS", "whole-fit SPS", "final return", "mean lag", "learner wait ms/it",
                            "collector wait ms/it", "update ms/it"), rows)
    lines = [table, ""]
    if name == "cartpole":
        for ok, sentence in verdicts(results["synchronous"], results["overlapped"], top):
            lines.append(f"- **{met(ok)}**: {sentence}.")
    else:
        s, o = results["synchronous"], results["overlapped"]
        lines.append(f"- overlapped / synchronous steady SPS: {o['steady'] / s['steady']:.2f} (no target set for {name}).")
    return f"### {name}: {config.relative_to(REPO)}, {total:,} env steps\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each budget (a quick look: 0.1)")
    parser.add_argument("--results", default=str(REPO / "results/benchmark_overlap.md"))
    args = parser.parse_args()
    started = stamp()
    body = "\n\n".join(run_env(name, args.scale) for name in args.only)
    text = section(started, "synchronous vs overlapped collection (policy lag 1, one collector process)", body)
    print(text)
    write_section(args.results, "Overlapped collection benchmark results", "scripts/benchmark_overlap.py", text)


if __name__ == "__main__":
    main()
