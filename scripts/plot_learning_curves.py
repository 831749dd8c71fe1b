"""Learning curves from lit-rl's logged metrics: mean and band over seeds, one panel per task.

    python scripts/plot_learning_curves.py OUT.png LABEL=run1/metrics.csv,run2/metrics.csv [LABEL=...]

A label is ``Task/Algo``; runs of one label are seeds of one setting. Curves are the training episodic
return (``train/episodic_return``) against env steps, smoothed over 10 iterations and interpolated onto a
common grid.
"""

import csv
import sys
from pathlib import Path
from typing import Optional

import numpy as np


def load_runs(paths: list[Path]) -> list[dict]:
    """Per run: ``steps`` and ``returns`` arrays (iterations with ended episodes), final ``eval`` or None."""
    runs = []
    for path in paths:
        steps, returns, evaluation = [], [], None
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("train/episodic_return"):
                    steps.append(float(row["env_steps"]))
                    returns.append(float(row["train/episodic_return"]))
                if row.get("val/episodic_return_mean"):
                    evaluation = float(row["val/episodic_return_mean"])
        runs.append({"steps": np.asarray(steps), "returns": np.asarray(returns), "eval": evaluation})
    return runs


def smoothed(returns: np.ndarray, window: int = 10) -> np.ndarray:
    """Trailing mean over the last ``window`` logged iterations (fewer at the start)."""
    idx = np.arange(len(returns))
    low = np.maximum(0, idx + 1 - window)
    cumsum = np.concatenate([[0.0], np.cumsum(returns)])
    return (cumsum[idx + 1] - cumsum[low]) / (idx + 1 - low)


def plot(curves: dict[tuple[str, str], list[dict]], thresholds: Optional[dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = list(dict.fromkeys(task for task, _ in curves))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (t, algo), runs in curves.items():
            if t != task:
                continue
            end = min(r["steps"][-1] for r in runs)
            grid = np.linspace(0, end, 200)
            ys = np.stack([np.interp(grid, r["steps"], smoothed(r["returns"])) for r in runs])
            line, = ax.plot(grid, ys.mean(0), label=f"{algo} ({len(runs)} seeds)")
            ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
        if thresholds and task in thresholds:
            ax.axhline(thresholds[task], color="grey", linestyle=":", linewidth=1)
        ax.set_title(task)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
        ax.set_xlabel("env steps")
        ax.set_ylabel("training episodic return")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    out = Path(sys.argv[1])
    curves = {}
    for spec in sys.argv[2:]:
        label, paths = spec.split("=", 1)
        task, algo = label.split("/", 1)
        curves[(task, algo)] = load_runs([Path(p) for p in paths.split(",")])
    plot(curves, None, out)
    print(out)


if __name__ == "__main__":
    main()
