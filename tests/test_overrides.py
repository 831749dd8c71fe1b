"""What a resumed run takes from its command line: overrides that can apply to a running model win and are
printed, those that cannot apply to the saved networks are refused; interpolations resolve after every
override, so model.gamma set on the command line or by a sweep reaches reward normalization."""

import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, QUIET, lit_rl, read_metrics

CARTPOLE = str(REPO / "configs/ppo/cartpole.yaml")  # 8 envs x 32 steps, 20 epochs of 1 minibatch, Adam lr 1e-3


def test_resume_applies_model_overrides_and_prints_what_differs(tmp_path, cli):
    cli("fit", "--config", CARTPOLE, "--data.total_timesteps", "2048", *QUIET, cwd=tmp_path)
    proc = cli("fit", "--config", CARTPOLE, "--data.total_timesteps", "4096", "--ckpt_path", "last",
                  "--model.init_args.update_epochs", "2", "--model.ent_coef", "0.05",
                  "--model.init_args.actor_optimizer.init_args.lr", "5e-4", *QUIET, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    for line in ("model.ent_coef: 0.0 -> 0.05", "model.update_epochs: 20 -> 2", "data.total_timesteps: 2048 -> 4096",
                 "model.actor_optimizer.lr: 0.001 -> 0.0005",
                 "model.actor_scheduler: linear decay to 0 over 8 iterations -> linear decay to 0 over 16 iterations"):
        assert line in out, out[-3000:]
    first, second = sorted(tmp_path.rglob("metrics.csv"))
    before = [r for r in read_metrics(first) if "train/actor_updates" in r]
    after = [r for r in read_metrics(second) if "train/actor_updates" in r]
    assert {r["train/actor_updates"] for r in before} == {20.0}
    assert {r["train/actor_updates"] for r in after} == {2.0}  # the override ran, not the checkpoint's 20 epochs
    # The new LR, annealed over the new budget from where the run is (iteration 8 of 16).
    assert after[0]["env_steps"] == 2048 + 256
    assert after[0]["train/lr_actor"] == pytest.approx(5e-4 * (1 - 9 / 16))
    assert after[0]["train/lr_critic"] == pytest.approx(1e-3 * (1 - 9 / 16))
    saved = torch.load(next(second.parent.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["ent_coef"] == 0.05 and saved["hyper_parameters"]["update_epochs"] == 2
    assert saved["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 5e-4


def test_resume_with_another_rollout_size_schedule_and_gamma_then_test_without_the_config(tmp_path, cli):
    """Trained with a StepLR actor schedule, 4 envs x 32 steps, gamma 0.98 and [32] networks; extended with the
    default linear annealing, 8 envs x 64 steps and gamma 0.95. The extension anneals over its own iterations
    (2 done + 3 of 512 steps = 5), never loads the StepLR state into another schedule, and gamma reaches
    the data side too. `lit-rl test` then takes the networks' settings from the checkpoint alone."""
    net = ["--model.init_args.hidden_sizes", "[32]"]
    cli("fit", "--config", CARTPOLE, "--data.total_timesteps", "256", "--data.num_envs", "4", *net,
           "--model.actor_scheduler", "torch.optim.lr_scheduler.StepLR", "--model.actor_scheduler.step_size", "1",
           *QUIET, cwd=tmp_path)
    proc = cli("fit", "--config", CARTPOLE, "--data.total_timesteps", "1792", "--data.num_steps", "64", *net,
                  "--model.gamma", "0.95", "--ckpt_path", "last", *QUIET, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    for line in ("model.gamma: 0.98 -> 0.95", "data.num_envs: 4 -> 8", "data.num_steps: 32 -> 64",
                 "model.actor_scheduler: StepLR(", "-> linear decay to 0 over 5 iterations"):
        assert line in out, out[-3000:]
    second = sorted(tmp_path.rglob("metrics.csv"))[1]
    after = [r for r in read_metrics(second) if "train/lr_actor" in r]
    assert [r["env_steps"] for r in after] == [768, 1280, 1792]
    assert [r["train/lr_actor"] for r in after] == pytest.approx([1e-3 * (1 - k / 5) for k in (3, 4, 5)])
    ckpt = next(second.parent.rglob("last.ckpt"))
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["gamma"] == 0.95 and saved["datamodule_hyper_parameters"]["gamma"] == 0.95

    proc = cli("test", "--model", "lit_rl.algos.PPO", "--ckpt_path", str(ckpt), "--data.eval_episodes", "2",
                  "--trainer.logger", "false", *QUIET, cwd=tmp_path)
    assert "test: episodic return" in proc.stdout


def test_data_gamma_in_a_config_file_is_refused_unless_it_follows_model_gamma(tmp_path, cli):
    config = tmp_path / "mine.yaml"
    config.write_text("data:\n  gamma: 0.5\n  normalize_reward: true\n")
    proc = cli("fit", "--config", CARTPOLE, "--config", str(config), *QUIET, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "lit-rl: error: data.gamma:" in proc.stderr and "0.5" in proc.stderr
    assert "Traceback" not in proc.stderr
    # What configs used to say, and a saved config's own value, follow model.gamma: taken.
    config.write_text("data:\n  gamma: ${model.init_args.gamma}\n  total_timesteps: 256\n")
    cli("fit", "--config", CARTPOLE, "--config", str(config), "--trainer.limit_val_batches", "0", *QUIET,
           cwd=tmp_path)


def test_resume_with_num_envs_that_do_not_split_the_rest_of_the_budget_is_refused(tmp_path, cli):
    cli("fit", "--config", CARTPOLE, "--data.total_timesteps", "512", *QUIET, cwd=tmp_path)
    proc = cli("fit", "--config", CARTPOLE, "--data.total_timesteps", "528", "--data.num_envs", "12",
                  "--ckpt_path", "last", *QUIET, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "lit-rl: error: data.num_envs:" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "e.g. 536" in proc.stderr  # 512 + 2 x 12


@pytest.mark.parametrize("extra,key", [
    (["--model.init_args.hidden_sizes", "[32, 32]"], "model.hidden_sizes"),
    (["--model.init_args.arch", "shared"], "model.arch"),
    (["--model.init_args.recurrent", "lstm", "--model.init_args.num_minibatches", "1"], "model.recurrent"),
    (["--model.init_args.actor_optimizer", "torch.optim.SGD", "--model.init_args.actor_optimizer.lr", "0.01"],
     "model.actor_optimizer"),
    (["--model", "lit_rl.algos.PPG"], "model.class_path"),
], ids=["hidden_sizes", "arch", "recurrent", "optimizer", "class"])
def test_resume_refuses_what_cannot_apply_to_the_saved_networks(tmp_path, extra, key, cli):
    cli("fit", "--config", CARTPOLE, "--data.total_timesteps", "512", *QUIET, cwd=tmp_path)
    proc = cli("fit", "--config", CARTPOLE, "--data.total_timesteps", "1024", "--ckpt_path", "last", *extra, *QUIET,
                  cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lit-rl: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"lit-rl: error: {key}:") and "Traceback" not in proc.stderr, \
        proc.stderr[-3000:]
    assert len(list(tmp_path.rglob("metrics.csv"))) == 1  # nothing trained


def test_command_line_gamma_reaches_reward_normalization(tmp_path, cli):
    """configs/ppo/pendulum.yaml normalizes rewards with the discount being learned (data.gamma follows
    model.gamma); a command-line gamma must reach both."""
    cli("fit", "--config", str(REPO / "configs/ppo/pendulum.yaml"), "--model.gamma", "0.95", "--model.compile", "false",
           "--data.total_timesteps", "512", "--data.num_envs", "2", "--data.num_steps", "64",
           "--model.init_args.num_minibatches", "2", "--trainer.limit_val_batches", "0", *QUIET, cwd=tmp_path)
    saved = torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["gamma"] == 0.95 and saved["datamodule_hyper_parameters"]["gamma"] == 0.95
    proc = cli("fit", "--config", str(REPO / "configs/ppo/pendulum.yaml"), "--data.gamma", "0.9", *QUIET,
                  cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "model.init_args.gamma" in proc.stderr  # one key: data.gamma follows it


@pytest.mark.integration  # lit-rl sweep runs each trial as a process
def test_sweep_over_gamma_trains_every_trial(tmp_path):
    pytest.importorskip("sweeps", reason="lit-rl sweep needs the 'sweep' extra (pip install 'lit-rl[sweep]')")
    os.symlink(REPO / "configs", tmp_path / "configs")
    sweep = tmp_path / "gamma.yaml"
    sweep.write_text(
        "program: lit-rl\nmethod: grid\nmetric: {name: val/episodic_return_mean, goal: maximize}\n"
        "parameters:\n  model.gamma: {values: [0.9, 0.95]}\n  model.init_args.gae_lambda: {values: [0.9]}\n"
        "command: [lit-rl, fit, --config, configs/ppo/pendulum.yaml, '${args}']\n")
    small = ["--data.num_envs", "2", "--data.num_steps", "64", "--data.total_timesteps", "256",
             "--model.init_args.num_minibatches", "2", "--data.eval_episodes", "1", *QUIET]
    proc = lit_rl("sweep", str(sweep), "--count", "2", "--dir", "sweeps/gamma", "--", *small, cwd=tmp_path)
    trials = [json.loads((tmp_path / "sweeps/gamma" / f"trial-{i:03d}.json").read_text()) for i in range(2)]
    assert [t["state"] for t in trials] == ["finished"] * 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(t["params"]["model.gamma"] for t in trials) == [0.9, 0.95]
    for trial in trials:  # each trial trained with its gamma, and normalized rewards with it
        (ckpt,) = Path(trial["config"]).parent.rglob("last.ckpt")
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert saved["hyper_parameters"]["gamma"] == trial["params"]["model.gamma"]
        assert saved["datamodule_hyper_parameters"]["gamma"] == trial["params"]["model.gamma"]
