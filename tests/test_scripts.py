"""The benchmarks' plotting and summary code, on metrics a real run logged; their verdicts, on made-up
numbers either side of each target; what their results sections say and where they go."""

import importlib.util
import subprocess

import numpy as np
import pytest

import scripts.benchmark_ppg as ppg_bench
from scripts.benchmark_overlap import compiled_verdicts, pipeline_limit, verdicts as overlap_verdicts
from scripts.benchmark_placement import verdict as placement_verdict
from scripts.benchmark_ppg import compare, summarize, verdict as ppg_verdict
from scripts.benchmark_ppo import verdict as ppo_verdict
from scripts.benchmark_recurrent import verdict as recurrent_verdict
from scripts.benchmark_speed import verdicts as speed_verdicts
from scripts.plot_learning_curves import load_runs, plot, smoothed
from scripts.results import REPO, commit, section, stamp, write_section
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
    never = summarize(runs, budget=1024, threshold=1e9)  # a seed that never reaches it counts at the budget
    assert never["reached"] == 0 and never["steps"] is None and never["seed_steps"] == [1024.0, 1024.0]
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("the plot needs matplotlib (the bench extra: pip install -e '.[bench]'); the table was checked")
    out = tmp_path / "curves.png"
    plot({("CartPole-v1", "PPO"): runs}, {"CartPole-v1": 20.0}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def seeds(finals, steps):
    return {"seed_finals": finals, "seed_steps": steps}


def test_ppg_verdict_needs_at_least_ppo_everywhere_and_above_somewhere():
    assert compare([10.0, 12.0], [20.0, 22.0], higher_is_better=True)[2] == "better"
    assert compare([10.0, 12.0], [20.0, 22.0], higher_is_better=False)[2] == "worse"  # more steps is worse
    assert compare([10.0, 30.0], [12.0, 32.0], higher_is_better=True)[2] == "tie"  # within one standard error
    tie = (seeds([500.0, 500.0, 500.0], [30e3, 40e3, 20e3]), seeds([500.0, 500.0, 500.0], [29e3, 41e3, 18e3]))
    faster = (seeds([-190.0, -200.0, -180.0], [80e3, 75e3, 85e3]), seeds([-190.0, -200.0, -180.0], [40e3, 45e3, 50e3]))
    # Higher final return but never reaching the threshold on one seed (counted at the 400k budget).
    slower = (seeds([98.0, 90.0, 110.0], [190e3, 160e3, 220e3]), seeds([102.0, 95.0, 112.0], [262e3, 200e3, 400e3]))
    ok, text = ppg_verdict({"CartPole": tie, "Pendulum": faster})
    assert ok and "**Target (PPG at least PPO on every task, above it on at least one): met**" in text
    assert "above on 1 (Pendulum)" in text
    ok, text = ppg_verdict({"CartPole": tie, "Pendulum": faster, "LunarLander": slower})
    assert not ok and ": not met**" in text and "at least PPO on 2 of 3 (CartPole, Pendulum)" in text
    assert not ppg_verdict({"CartPole": tie})[0]  # at least PPO everywhere, above nowhere


def test_throughput_verdicts_from_their_numbers():
    assert ppo_verdict(5000.0, 9000.0) == (True, "**Target (training SPS at least 50% of the ceiling): met**: "
                                                 "5,000 / 9,000 = 55.6%.")
    ok, text = ppo_verdict(5000.0, 12000.0)
    assert not ok and "not met**: 5,000 / 12,000 = 41.7%" in text
    assert placement_verdict({"PPO update": 0.56, "PPG auxiliary phase": 0.6})[0]
    ok, text = placement_verdict({"PPO update": 0.56, "PPG auxiliary phase": 0.61})
    assert not ok and "not met**: PPO update 0.56, PPG auxiliary phase 0.61." in text
    assert recurrent_verdict(500.0, 43.1) == (True, "**Target (LSTM final return at least 475, MLP's below it): "
                                                    "met**: LSTM 500.0, MLP 43.1.")
    assert not recurrent_verdict(278.4, 44.3)[0] and not recurrent_verdict(500.0, 480.0)[0]
    sync, over = {"steady": 5000.0}, {"steady": 8600.0, "return": 500.0}
    assert [ok for ok, _ in overlap_verdicts(sync, over, 16000.0)] == [True, True, True]
    (speed, _), (share, text), (ret, _) = overlap_verdicts(sync, {"steady": 8400.0, "return": 470.0}, 17000.0)
    assert not speed and not share and not ret and "8,400 / 17,000 = 49.4%" in text


def test_compiled_overlap_verdicts_against_the_pipelines_limit_and_the_eager_synchronous_run():
    # The update's bound (512 steps / 40 ms = 12,800) is the slower side: the limit.
    assert pipeline_limit(16000.0, 512, 0.04) == (12800.0, 12800.0)
    assert pipeline_limit(9000.0, 512, 0.04) == (9000.0, 12800.0)
    sync = {"steady": 4000.0}
    assert [ok for ok, _ in compiled_verdicts(sync, {"steady": 10240.0, "return": 500.0}, 12800.0)] == [True] * 3
    (share, text), (speedup, said), (ret, _) = compiled_verdicts(sync, {"steady": 9900.0, "return": 474.0}, 12800.0)
    assert not share and "9,900 / 12,800 = 77.3%" in text
    assert not speedup and "9,900 / 4,000 = 2.48" in said and not ret


def test_speed_verdicts_compare_cartpoles_compiled_update_with_the_plain_loop_and_others_with_eager_lit_rl():
    m = {"plain update": 0.030, "eager update": 0.040, "compiled update": 0.022, "lit collect": 8000.0,
         "bare collect": 10000.0}
    (update, text), (collect, said) = speed_verdicts("cartpole", m)
    assert not update and "of the plain eager loop's: 22.0 / 30.0 = 0.733" in text
    assert collect and "8,000 / 10,000 = 0.800" in said
    (update, text), (collect, _) = speed_verdicts("pendulum", {**m, "lit collect": 7900.0})
    assert update and "of lit_rl's eager update's: 22.0 / 40.0 = 0.550" in text and not collect


def test_results_sections_name_the_commit_and_go_first(tmp_path):
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert commit() in (sha, f"{sha} + uncommitted changes")
    path = tmp_path / "bench.md"
    path.write_text("# Old title\n\nOld preamble.\n\n## History\n\n### 2026-11-21, recorded in commit abc1234\n")
    write_section(path, "Bench", "scripts/bench.py", section(stamp(), "first run", "numbers"))
    write_section(path, "Bench", "scripts/bench.py", section(stamp(), "second run", "numbers"))
    text = path.read_text()
    assert text.startswith("# Bench\n") and "Old preamble" not in text
    assert text.index("second run") < text.index("first run") < text.index("## History\n\n### 2026-11-21")
    assert f"commit {commit()}: second run\n\nMachine: " in text and " cores, " in text and "torch " in text


def test_ppg_runs_are_reused_only_at_the_same_clean_commit(tmp_path, monkeypatch):
    launched = []

    def fake_fit(args, **kwargs):
        launched.append(args)
        log_dir = tmp_path / "cartpole" / "ppo" / "seed1"
        log_dir.mkdir(parents=True)
        (log_dir / "metrics.csv").write_text("env_steps\n")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(ppg_bench.subprocess, "run", fake_fit)
    monkeypatch.setattr(ppg_bench, "head", lambda: ("abc1234", False))
    ppg_bench.run("cartpole", "ppo", 1, 1000, tmp_path)
    ppg_bench.run("cartpole", "ppo", 1, 1000, tmp_path)  # finished at this commit: reused
    assert len(launched) == 1
    ppg_bench.run("cartpole", "ppo", 1, 2000, tmp_path)  # another budget: run anew
    monkeypatch.setattr(ppg_bench, "head", lambda: ("abc1234", True))
    ppg_bench.run("cartpole", "ppo", 1, 2000, tmp_path)  # uncommitted changes: never reused
    monkeypatch.setattr(ppg_bench, "head", lambda: ("def5678", False))
    ppg_bench.run("cartpole", "ppo", 1, 2000, tmp_path)  # another commit
    assert len(launched) == 4


def test_procgen_benchmark_normalizes_by_the_papers_constants_and_sums_each_runs_time(tmp_path):
    from scripts.benchmark_procgen import normalized, timing

    assert normalized("starpilot", 2.5) == 0.0 and normalized("starpilot", 64.0) == 1.0
    assert normalized("bigfish", 20.5) == 0.5
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("env_steps,perf/sps,perf/rollout_time,perf/update_time,perf/aux_phase_time\n"
                       "100,10,1.0,2.0,\n200,30,1.5,2.5,6.0\n200,,,,\n")
    assert timing(metrics) == {"sps": 20.0, "rollout": 2.5, "update": 4.5, "aux": 6.0}
