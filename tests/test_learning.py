"""Learning tests (slow): fixed seed, env-step budget, return threshold. `.ci/run` runs them."""

import pytest

from tests.helpers import REPO, QUIET, lit_rl, read_metrics


def train(config: str, tmp_path, *more: str) -> tuple[float, float]:
    """Trains with a config as shipped (``more``: flags added); returns (mean training return over the episodes
    that ended in the last 5% of the budget, mean greedy evaluation return at the end)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    lit_rl("fit", "--config", str(REPO / config), *QUIET, *more, cwd=tmp_path)
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")))
    budget = max(r["env_steps"] for r in rows if "env_steps" in r)
    late = [r["train/episodic_return"] for r in rows if "train/episodic_return" in r and r["env_steps"] > 0.95 * budget]
    evaluation = [r["val/episodic_return_mean"] for r in rows if "val/episodic_return_mean" in r]
    print(f"{config} {' '.join(more)}: budget {budget:.0f}, training return (last 5%) {sum(late) / len(late):.1f}, "
          f"greedy evaluation {evaluation[-1]:.1f}")
    return sum(late) / len(late), evaluation[-1]


@pytest.mark.slow
def test_ppo_cartpole_reaches_475_within_100k_steps(tmp_path):
    train_return, eval_return = train("configs/ppo/cartpole.yaml", tmp_path)
    assert train_return >= 475 and eval_return >= 475


@pytest.mark.slow
def test_ppo_pendulum_reaches_minus_300_within_300k_steps(tmp_path):
    train_return, eval_return = train("configs/ppo/pendulum.yaml", tmp_path)
    assert train_return >= -300 and eval_return >= -300


@pytest.mark.slow
def test_ppg_cartpole_reaches_475_within_150k_steps(tmp_path):
    train_return, eval_return = train("configs/ppg/cartpole.yaml", tmp_path)
    assert train_return >= 475 and eval_return >= 475



@pytest.mark.slow
def test_lstm_ppo_solves_cartpole_without_velocities_within_200k_steps_and_the_mlp_does_not(tmp_path):
    lstm_train, lstm_eval = train("configs/ppo/cartpole_novel_lstm.yaml", tmp_path / "lstm")
    mlp_train, mlp_eval = train("configs/ppo/cartpole_novel_mlp.yaml", tmp_path / "mlp")
    assert lstm_train >= 475 and lstm_eval >= 475
    # Without memory the positions alone cannot tell which way the pole moves.
    assert mlp_train <= 0.5 * 475 and mlp_eval <= 0.5 * 475


@pytest.mark.slow
@pytest.mark.parametrize("config", ["tests/configs/ppo_quadrant.yaml", "tests/configs/ppg_quadrant_dict.yaml"])
def test_a_cnn_learns_the_small_image_task_to_7_of_8_within_12k_steps(tmp_path, config):
    """tests.envs:Quadrant-v0, uint8 frames through the IMPALA CNN: PPO on channels-last frames, PPG on a Dict of a
    channels-first frame and an uninformative vector. Chance is 2 of 8; a policy that cannot read the frame stays
    there."""
    train_return, eval_return = train(config, tmp_path)
    assert train_return >= 7 and eval_return >= 7


@pytest.mark.slow
def test_ppo_on_minatar_breakout_learns_within_150k_steps(tmp_path):
    """configs/ppo/minatar.yaml as shipped on a 150k-step budget (MinAtar's network on 10x10x4 uint8 frames,
    sticky actions). A random policy scores about 0.5; measured on an AMD 2-core machine, seeds 1, 2, 3: training
    return (last 5%) 3.28, 3.26, 3.09 and greedy 5, 3, 3."""
    pytest.importorskip("minatar", reason="the minatar extra is not installed (pip install 'lit-rl[minatar]')")
    train_return, eval_return = train("configs/ppo/minatar.yaml", tmp_path, "--data.total_timesteps", "151552",
                                      "--torch_threads", "1")
    assert train_return >= 2.0 and eval_return >= 2.0


@pytest.mark.slow
def test_ppo_on_mujoco_hopper_learns_within_60k_steps(tmp_path):
    """configs/ppo/mujoco.yaml (CleanRL's continuous settings) on Hopper-v4 with a 61,440-step budget (30
    iterations). A random policy returns about 18 (the first rollout: 17); measured on an AMD 2-core machine,
    seeds 1, 2, 3: training return (last 5%) 386, 454, 347 and greedy 416, 727, 428."""
    pytest.importorskip("mujoco", reason="the mujoco extra is not installed (pip install 'lit-rl[mujoco]')")
    train_return, eval_return = train("configs/ppo/mujoco.yaml", tmp_path, "--data.env_id", "Hopper-v4",
                                      "--data.total_timesteps", "61440", "--torch_threads", "1")
    assert train_return >= 200 and eval_return >= 200


# Overlapped collection (data.collection=overlapped, policy lag 1: each rollout collected with the weights from
# one update back while the learner updates), at the budgets the issue sets.
OVERLAPPED = ("--data.collection", "overlapped")


# The LSTM runs 4 epochs, not its config's 20: at lag 1 a rollout is one update behind, 20 actor steps with 20 epochs
# of one minibatch, and a recurrent policy is sensitive to lag in optimizer steps (Sample Factory's docs). Measured
# on an AMD 2-core machine (seeds 1, 2, 3; training return over the last 5%): 20 epochs 260, 452, 500 (it passed
# on the Intel machine that first ran it with seed 1); 4 epochs 498, 492, 500; greedy 500 in all three.
LSTM_UNDER_LAG = ("--model.init_args.update_epochs", "4")


@pytest.mark.slow
@pytest.mark.parametrize("config, budget, threshold, more", [
    ("configs/ppo/cartpole.yaml", 150_000, 475, ()),
    ("configs/ppo/cartpole_cleanrl.yaml", 500_000, 475, ()),
    ("configs/ppo/pendulum.yaml", 300_000, -300, ()),
    ("configs/ppg/cartpole.yaml", 200_000, 475, ()),
    ("configs/ppo/cartpole_novel_lstm.yaml", 250_000, 475, LSTM_UNDER_LAG),
])
def test_overlapped_collection_learns(tmp_path, config, budget, threshold, more):
    train_return, eval_return = train(config, tmp_path, *OVERLAPPED, "--data.total_timesteps", str(budget), *more)
    assert train_return >= threshold and eval_return >= threshold

