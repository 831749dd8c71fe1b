"""The wandb preset, offline (no login here): a run writes a wandb run directory, and reading its
transaction log back (tests/wandb_records.py, wandb's own protobuf records) shows the resolved config,
the return and loss metrics against env steps, and the evaluation video."""

import pytest

from tests.helpers import REPO, QUIET, lit_rl
from tests.wandb_records import read_run

pytestmark = pytest.mark.integration

WANDB = ["--config", str(REPO / "configs/ppo/cartpole.yaml"), "--config", str(REPO / "configs/loggers/wandb.yaml")]


def test_offline_run_reads_back_with_config_metrics_and_video(tmp_path):
    lit_rl("fit", *WANDB, "--data.num_envs", "4", "--data.num_steps", "64", "--data.total_timesteps", "1024",
           "--model.init_args.clip_coef", "0.25", "--model.init_args.actor_optimizer.init_args.lr", "0.0007",
           "--data.record_video", "true", "--data.eval_episodes", "1", *QUIET, cwd=tmp_path)
    runs = list(tmp_path.glob("wandb/offline-run-*"))
    assert len(runs) == 1, "one offline wandb run (not logged in)"
    run = read_run(runs[0])

    # The whole resolved config: command-line overrides, the config file's values, Lightning's trainer.
    model = run.config["model"]["init_args"]
    assert run.config["model"]["class_path"] == "lit_rl.algos.PPO"
    assert model["clip_coef"] == 0.25 and model["actor_optimizer"]["init_args"]["lr"] == 0.0007
    assert model["gamma"] == 0.98 and model["hidden_sizes"] == [64, 64]
    assert run.config["data"]["env_id"] == "CartPole-v1" and run.config["data"]["total_timesteps"] == 1024
    assert run.config["data"]["gamma"] == model["gamma"]  # linked to model.gamma
    assert run.config["trainer"]["logger"]["class_path"] == "lit_rl.run.loggers.WandbLogger"

    # Metrics against env steps: one row per iteration, 256 env steps apart.
    train_rows = [row for row in run.history if "train/policy_loss" in row]
    assert [row["env_steps"] for row in train_rows] == [256, 512, 768, 1024]
    assert all("train/value_loss" in row and "train/explained_variance" in row for row in train_rows)
    assert any("train/episodic_return" in row for row in train_rows)
    # The last definition of "*" wins: env_steps, not Lightning's trainer/global_step.
    assert [m.step_metric for m in run.metrics if m.glob_name == "*"][-1] == "env_steps"
    evaluation = [row for row in run.history if "val/episodic_return_mean" in row]
    assert evaluation and evaluation[-1]["env_steps"] == 1024
    # The evaluation video, uploaded with the run.
    assert any(f.startswith("media/videos/val/") and f.endswith(".mp4") for f in run.files)
    assert list(runs[0].glob("files/media/videos/val/*.mp4"))


def test_checkpoint_artifacts_from_an_offline_run_are_refused_with_the_fix(tmp_path):
    proc = lit_rl("fit", *WANDB, "--trainer.logger.init_args.offline", "true",
                  "--trainer.logger.init_args.log_model", "true", *QUIET, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "log_model" in proc.stderr and "wandb login" in proc.stderr
    assert not list(tmp_path.glob("wandb/offline-run-*"))
