"""configs/ppo/mujoco.yaml: CleanRL's ppo_continuous_action.py settings, and gymnasium's MuJoCo tasks (v4, which
the published numbers use, and v5) training under it from the mujoco extra."""

import pytest

pytest.importorskip("mujoco", reason="the mujoco extra is not installed (pip install 'lit-rl[mujoco]')")

import yaml  # noqa: E402

from tests.helpers import QUIET, REPO, read_metrics  # noqa: E402

CONFIG = REPO / "configs/ppo/mujoco.yaml"


def test_the_config_holds_cleanrl_s_continuous_settings():
    """Guards: an edit that leaves the file's comment (and the benchmark's comparison with CleanRL's published
    numbers) describing settings it no longer has."""
    cfg = yaml.safe_load(CONFIG.read_text())
    model, data = cfg["model"]["init_args"], cfg["data"]
    for role in ("actor", "critic"):
        assert model[f"{role}_optimizer"]["init_args"]["lr"] == 3e-4
        assert model[f"{role}_optimizer"]["init_args"]["eps"] == 1e-5
        assert model[f"{role}_max_grad_norm"] == 0.5
    assert (model["anneal_lr"], model["gamma"], model["gae_lambda"], model["clip_coef"]) == (True, 0.99, 0.95, 0.2)
    assert (model["clip_value_loss"], model["ent_coef"], model["vf_coef"], model["norm_adv"]) == (True, 0.0, 0.5, True)
    assert (model["update_epochs"], model["num_minibatches"], model["hidden_sizes"]) == (10, 32, [64, 64])
    assert (model["arch"], model["activation"], model["log_std_init"]) == ("separate", "tanh", 0.0)
    assert (data["num_envs"], data["num_steps"], data["total_timesteps"]) == (1, 2048, 1_000_000)
    assert (data["normalize_observation"], data["normalize_reward"]) == (True, True)
    assert (data["clip_observation"], data["clip_reward"]) == (10.0, 10.0)


def test_a_v5_task_trains_under_the_config(tmp_path, cli):
    """The published numbers are v4's; v5 must work too: Walker2d-v5, one short iteration (128 steps, 10 epochs of
    2 minibatches per network) and a greedy episode, in process. (tests/test_cli.py fits the config as shipped,
    HalfCheetah-v4; tests/test_learning.py trains Hopper-v4.)"""
    cli("fit", "--config", str(CONFIG), *QUIET, "--data.env_id", "Walker2d-v5", "--data.num_steps", "128",
        "--data.total_timesteps", "128", "--model.init_args.num_minibatches", "2", "--data.eval_episodes", "1",
        "--data.eval_envs", "1", "--model.init_args.compile", "false", cwd=tmp_path)  # compiling: tests/test_compile.py
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")))
    assert max(r["env_steps"] for r in rows if "env_steps" in r) == 128
    assert any(r.get("train/actor_updates") == 20 for r in rows)
    assert any("val/episodic_return_mean" in r for r in rows)
