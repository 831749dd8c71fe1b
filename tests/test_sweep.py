"""`lit-rl sweep`: the shipped wandb sweep file run offline, without a server, with wandb's own search
algorithms; each trial is a normal `lit-rl fit` logged offline."""

import importlib.util
import json
import os
import sys

import pytest
import yaml

from tests.helpers import QUIET, REPO, lit_rl, run_main
from tests.wandb_records import read_run

SWEEP = "configs/sweeps/ppo_cartpole.yaml"
LR, CLIP = "model.init_args.actor_optimizer.init_args.lr", "model.init_args.clip_coef"
SMALL_TRIAL = ["--data.num_envs", "4", "--data.num_steps", "64", "--data.total_timesteps", "1024",
               "--data.eval_episodes", "2", *QUIET]


# The `sweep` extra (wandb's search algorithms) pins numpy<2, so a base install lacks it; CI runs the suite
# both ways.
needs_sweeps = pytest.mark.skipif(importlib.util.find_spec("sweeps") is None,
                                  reason="needs the sweep extra (pip install -e '.[sweep]'): the `sweeps` package, "
                                         "which pins numpy<2, is not installed")


def checkout(tmp_path):
    """A working folder that sees the checkout's configs, as running from the repository root would."""
    os.symlink(REPO / "configs", tmp_path / "configs")
    return tmp_path


@needs_sweeps
@pytest.mark.integration
def test_random_sweep_runs_three_offline_trials_and_ranks_them(tmp_path):
    work = checkout(tmp_path)
    proc = lit_rl("sweep", SWEEP, "--count", "3", "--dir", "sweeps/lr_clip", "--", *SMALL_TRIAL, cwd=work)
    trials = [json.loads((work / "sweeps/lr_clip" / f"trial-{i:03d}.json").read_text()) for i in range(3)]
    assert [t["state"] for t in trials] == ["finished"] * 3, proc.stdout
    assert len({t["params"][LR] for t in trials}) == 3  # random search: three draws
    for t in trials:
        assert 1e-4 <= t["params"][LR] <= 3e-3 and t["params"][CLIP] in (0.1, 0.2, 0.3)
        # The trial's saved config holds the sampled values...
        config = yaml.safe_load(open(t["config"]))
        assert config["model"]["init_args"]["actor_optimizer"]["init_args"]["lr"] == t["params"][LR]
        assert config["model"]["init_args"]["clip_coef"] == t["params"][CLIP]
        # ...and so does its offline wandb run.
        (run_dir,) = work.glob(f"wandb/offline-run-*-{t['run_id']}")
        run = read_run(run_dir)
        assert run.config["model"]["init_args"]["clip_coef"] == t["params"][CLIP]
        assert run.history[-1]["val/episodic_return_mean"] == pytest.approx(t["metric"])
    # The table, best first by the metric (goal: maximize).
    table = proc.stdout[proc.stdout.index("rank  trial"):].splitlines()[2:5]
    ranked = [(line.split()[1], float(line.split()[3])) for line in table]
    assert [m for _, m in ranked] == sorted((t["metric"] for t in trials), reverse=True)
    by_name = {t["name"]: t for t in trials}
    assert {name for name, _ in ranked} == set(by_name)
    for line in table:  # each row shows its trial's sampled values
        params = by_name[line.split()[1]]["params"]
        assert line.split()[4:] == [f"{params[LR]:.6g}", str(params[CLIP])]

    # More trials join the same sweep; --count 0 only prints the table.
    again = lit_rl("sweep", SWEEP, "--count", "0", "--dir", "sweeps/lr_clip", cwd=work)
    assert "3 trials" in again.stdout


@needs_sweeps
@pytest.mark.integration
def test_bad_sweep_files_are_refused_with_the_key(tmp_path):
    work = checkout(tmp_path)
    bad = work / "bad.yaml"
    bad.write_text("method: random\nparameters:\n  model.init_args.clip_coef: {values: [0.1]}\n"
                   "command: [lit-rl, fit, '${args}']\n")
    proc = lit_rl("sweep", str(bad), "--count", "1", cwd=work, check=False)
    assert proc.returncode == 2 and "metric.name" in proc.stderr, proc.stderr
    bad.write_text("method: sideways\nmetric: {name: x}\nparameters: {a: {values: [1]}}\n")
    proc = lit_rl("sweep", str(bad), cwd=work, check=False)
    assert proc.returncode == 2 and "not a valid wandb sweep" in proc.stderr and "sideways" in proc.stderr
    proc = lit_rl("sweep", "nowhere.yaml", cwd=work, check=False)
    assert proc.returncode == 2 and "no sweep file" in proc.stderr


def test_a_yaml_syntax_error_gets_one_line_with_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("method: random\nmetric: {name: val/episodic_return_mean, goal: maximize\nparameters:\n"
                   "  model.init_args.clip_coef: {values: [0.1, 0.2]}\n")
    code, err = run_main(["sweep", str(bad)], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"lit-rl: error: lit-rl sweep: {bad} is not valid YAML: line 3, column 11: expected ',' or '}}', but got ':' "
        "(while parsing a flow mapping, which starts at line 2)."]


def test_without_the_sweep_extra_lit_rl_sweep_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sweeps", None)  # as if not installed: `import sweeps` raises ImportError
    code, err = run_main(["sweep", str(REPO / "configs/sweeps/ppo_cartpole.yaml"), "--dir", str(tmp_path)], capsys)
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("lit-rl: error: lit-rl sweep: needs wandb's search algorithms") and "lit-rl[sweep]" in line
