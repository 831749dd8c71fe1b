"""Synchronous vs overlapped collection (data.collection), eager and compiled (model.compile), in one run on one
machine.

For each env (CartPole-v1 with CleanRL's ppo.py settings, 500k steps; Pendulum-v1 with configs/ppo/pendulum.yaml,
300k steps) it trains four times, synchronous and overlapped (policy lag 1, one collector process), each with
compiling off and on, and reports:

- steady training SPS: env steps per second of wall time between 20% of the budget and the end (process
  start-up, the collectors' spawn and the compile included, left out), and over the whole fit;
- the final mean training return (the episodes that ended in the last 5% of the budget);
- the mean policy lag, and the learner's and the collector's waits per iteration (overlapped);
- the update's median seconds per iteration (after the first ``WARMUP``, which compile);
- the ceiling: the same vector env stepped by the same network's inference alone, eager and compiled
  (``model.compile`` compiles the collectors' acting too);
- the pipeline's limit (:func:`pipeline_limit`): the slower of the compiled ceiling and a rollout's env steps per
  compiled update (the synchronous compiled run's median update, which no collector shares the machine with).

Targets (CartPole; ``TARGETS``). Issue 25's, for the overlapped compiled run (:func:`compiled_verdicts`): steady
SPS >= 0.8 of the pipeline's limit and >= 2.5 times the synchronous eager run's, final return >= 475. The
earlier ones, for the eager (default) path (:func:`verdicts`): overlapped / synchronous steady SPS >= 1.7,
overlapped steady SPS >= 0.5 of the ceiling, final return >= 475. Pendulum: reported, no target. Writes the
table, the verdicts, the commit, date and machine first in results/benchmark_overlap.md.

    python scripts/benchmark_overlap.py [--only cartpole pendulum] [--scale 1.0]
"""

import argparse
import csv
import glob
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchmark_ppo import ceiling, train  # noqa: E402
from scripts.results import markdown_table, met, section, stamp, write_section  # noqa: E402

ENVS = {"cartpole": (REPO / "configs/ppo/cartpole_cleanrl.yaml", 500_000),
        "pendulum": (REPO / "configs/ppo/pendulum.yaml", 300_000)}
TARGETS = {"speed-up": 1.7, "of ceiling": 0.5, "return": 475.0,  # eager overlapped against eager synchronous
           "of limit": 0.8, "compiled speed-up": 2.5}  # overlapped compiled against the limit, synchronous eager
# Every mode says whether it compiles: configs/ppo/pendulum.yaml compiles by default.
COMPILE, EAGER = ["--model.compile", "true"], ["--model.compile", "false"]
OVERLAPPED = ["--data.collection", "overlapped"]
MODES = {"synchronous": EAGER, "overlapped": [*OVERLAPPED, *EAGER],
         "synchronous compiled": COMPILE, "overlapped compiled": [*OVERLAPPED, *COMPILE]}
WARMUP = 2  # iterations left out of the update's median: the first compiles (model.compile), the second settles


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
    updates = [r["perf/update_time"] for r in rows if "perf/update_time" in r]
    return {"steady": (end["env_steps"] - start["env_steps"]) / (end["time"] - start["time"]),
            "whole": end["env_steps"] / end["time"], "lag": mean("perf/policy_lag"),
            "learner_wait": mean("perf/learner_wait"), "collector_wait": mean("perf/collector_wait"),
            "update": statistics.median(updates[WARMUP:] or updates), "iterations": len(rows)}


def pipeline_limit(top: float, batch: int, update_seconds: float) -> tuple[float, float]:
    """The SPS an overlapped pipeline can reach: the slower of collecting (``top``, inference alone) and updating
    (``batch`` env steps per ``update_seconds``); returns (the limit, the update's bound)."""
    bound = batch / update_seconds
    return min(top, bound), bound


def verdicts(sync: dict[str, Any], over: dict[str, Any], top: float) -> list[tuple[bool, str]]:
    """The eager path's targets: overlapped against synchronous and against the ceiling, and its final return."""
    speedup, share = over["steady"] / sync["steady"], over["steady"] / top
    return [
        (speedup >= TARGETS["speed-up"], f"overlapped / synchronous steady SPS >= {TARGETS['speed-up']}: "
                                         f"{over['steady']:,.0f} / {sync['steady']:,.0f} = {speedup:.2f}"),
        (share >= TARGETS["of ceiling"], f"overlapped steady SPS >= {TARGETS['of ceiling']:.0%} of the ceiling: "
                                         f"{over['steady']:,.0f} / {top:,.0f} = {share:.1%}"),
        (over["return"] >= TARGETS["return"], f"overlapped final return >= {TARGETS['return']:.0f}: {over['return']:.1f}"),
    ]


def compiled_verdicts(sync: dict[str, Any], over_compiled: dict[str, Any], limit: float) -> list[tuple[bool, str]]:
    """Issue 25's targets for the overlapped compiled run: against the pipeline's limit, against the synchronous
    eager run (``sync``), and its final return."""
    o = over_compiled
    share, speedup = o["steady"] / limit, o["steady"] / sync["steady"]
    return [
        (share >= TARGETS["of limit"], f"overlapped compiled steady SPS >= {TARGETS['of limit']:.0%} of the "
                                       f"pipeline's limit: {o['steady']:,.0f} / {limit:,.0f} = {share:.1%}"),
        (speedup >= TARGETS["compiled speed-up"],
         f"overlapped compiled / synchronous eager steady SPS >= {TARGETS['compiled speed-up']}: "
         f"{o['steady']:,.0f} / {sync['steady']:,.0f} = {speedup:.2f}"),
        (o["return"] >= TARGETS["return"], f"overlapped compiled final return >= {TARGETS['return']:.0f}: "
                                           f"{o['return']:.1f}"),
    ]


def run_env(name: str, scale: float) -> str:
    config, budget = ENVS[name]
    total = int(budget * scale) // 512 * 512
    results: dict[str, dict[str, Any]] = {}
    tops: dict[str, float] = {}  # the ceiling with the synchronous runs' trained networks: eager, compiled acting
    batch = 0
    for mode, flags in MODES.items():
        torch._dynamo.reset()  # each compiled fit compiles its own graph, as a fresh process would
        with tempfile.TemporaryDirectory() as workdir:
            run = train(total, "cpu", workdir, config=config, extra=flags)
            results[mode] = {**measure(timeline(workdir), total), "return": run["return"]}
            if mode.startswith("synchronous"):
                data = run["datamodule"]
                batch = data.num_envs * data.num_steps
                data.setup("fit")
                tops[mode] = ceiling(run["module"], data, min(total, 100_000))
                data.teardown("fit")
    top, top_compiled = tops["synchronous"], tops["synchronous compiled"]
    limit, bound = pipeline_limit(top_compiled, batch, results["synchronous compiled"]["update"])
    rows = [(mode, f"{r['steady']:,.0f}", f"{r['whole']:,.0f}", f"{r['return']:.1f}", f"{r['lag']:.2f}",
             f"{r['learner_wait'] * 1e3:.1f}", f"{r['collector_wait'] * 1e3:.1f}", f"{r['update'] * 1e3:.1f}")
            for mode, r in results.items()]
    rows.append(("ceiling (inference only, eager acting)", f"{top:,.0f}", "", "", "", "", "", ""))
    rows.append(("ceiling (inference only, compiled acting)", f"{top_compiled:,.0f}", "", "", "", "", "", ""))
    rows.append((f"update bound ({batch} env steps / synchronous compiled update)", f"{bound:,.0f}",
                 "", "", "", "", "", ""))
    rows.append(("pipeline limit (the slower of the two above)", f"{limit:,.0f}", "", "", "", "", "", ""))
    table = markdown_table(("mode", "steady SPS", "whole-fit SPS", "final return", "mean lag", "learner wait ms/it",
                            "collector wait ms/it", f"update ms/it (median after {WARMUP})"), rows)
    lines = [table, ""]
    s, o = results["synchronous"], results["overlapped"]
    sc, oc = results["synchronous compiled"], results["overlapped compiled"]
    if name == "cartpole":
        for ok, sentence in compiled_verdicts(s, oc, limit) + verdicts(s, o, top):
            lines.append(f"- **{met(ok)}**: {sentence}.")
    else:
        lines.append(f"- overlapped / synchronous steady SPS: eager {o['steady'] / s['steady']:.2f}, compiled "
                     f"{oc['steady'] / sc['steady']:.2f}; overlapped compiled / synchronous eager "
                     f"{oc['steady'] / s['steady']:.2f}, of the pipeline's limit {oc['steady'] / limit:.1%} "
                     f"(no target set for {name}).")
    return f"### {name}: {config.relative_to(REPO)}, {total:,} env steps\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each budget (a quick look: 0.1)")
    parser.add_argument("--results", default=str(REPO / "results/benchmark_overlap.md"))
    args = parser.parse_args()
    started = stamp()
    body = "\n\n".join(run_env(name, args.scale) for name in args.only)
    text = section(started, "synchronous vs overlapped collection (policy lag 1, one collector process), eager and "
                            "compiled (model.compile)", body)
    print(text)
    write_section(args.results, "Overlapped collection benchmark results", "scripts/benchmark_overlap.py", text)


if __name__ == "__main__":
    main()
