"""The benchmark's plotting and summary code, on metrics a real run logged."""

import numpy as np

from scripts.benchmark_ppg import summarize
from scripts.plot_learning_curves import load_runs, plot, smoothed
from tests.helpers import fit, make


def test_smoothing_is_a_trailing_mean():
    values = np.array([1.0, 3.0, 5.0, 7.0, 9.0])
    expected = [np.mean(values[max(0, i - 2):i + 1]) for i in range(len(values))]
    assert np.allclose(smoothed(values, window=3), expected)


def test_curves_and_table_from_logged_metrics(tmp_path):
    paths = []
    for seed in (1, 2):
        module, dm = make(data={"seed": seed, "total_timesteps": 1024, "num_envs": 4, "num_steps": 32})
        fit(module, dm, tmp_path / f"seed{seed}")
        paths.append(next((tmp_path / f"seed{seed}").rglob("metrics.csv")))
    runs = load_runs(paths)
    assert all(r["steps"].size and r["steps"].size == r["returns"].size for r in runs)
    summary = summarize(runs, budget=1024, threshold=0.0)
    assert summary["n"] == 2 and summary["reached"] == 2 and np.isfinite(summary["final"][0])
    out = tmp_path / "curves.png"
    plot({("CartPole-v1", "PPO"): runs}, {"CartPole-v1": 20.0}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
