"""lit_rl.envs.procgen, Procgen as a native gymnasium vector env: registration, options, seeding, autoreset."""

import subprocess
import sys

import pytest

pytest.importorskip("procgen", reason="the procgen extra is not installed (pip install 'lit-rl[procgen]')")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.wrappers import vector as vw  # noqa: E402

from lit_rl.envs import resolve_env_id  # noqa: E402
from lit_rl.envs.procgen import GAMES  # noqa: E402
from lit_rl.errors import ConfigError  # noqa: E402


def make(game: str, num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    return gym.make_vec(resolve_env_id(f"procgen:{game}"), num_envs=num_envs, **kwargs)


def rollout(envs: gym.vector.VectorEnv, seed: int, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observations, rewards and terminations of ``steps`` random steps after ``reset(seed=seed)``."""
    obs, _ = envs.reset(seed=seed)
    actions = np.random.default_rng(0).integers(0, 15, (steps, envs.num_envs))
    frames, rewards, dones = [obs], [], []
    for a in actions:
        obs, reward, terminated, _, _ = envs.step(a)
        frames.append(obs)
        rewards.append(reward)
        dones.append(terminated)
    return np.stack(frames), np.stack(rewards), np.stack(dones)


@pytest.mark.parametrize("mode", [None, "vector_entry_point"])
def test_builds_with_the_documented_spaces_and_outputs(mode):
    """Guards: procgen:<game> not resolving to a registered vector env, wrong spaces, shapes or dtypes, or a
    missing same-step autoreset tag (the collector and RecordEpisodeStatistics would assume next-step)."""
    envs = make("starpilot", 3, vectorization_mode=mode)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    assert envs.single_observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert envs.single_action_space == gym.spaces.Discrete(15)
    assert envs.observation_space.shape == (3, 64, 64, 3) and envs.action_space.shape == (3,)
    obs, info = envs.reset(seed=0)
    assert obs.shape == (3, 64, 64, 3) and obs.dtype == np.uint8 and info == {}
    obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert obs.shape == (3, 64, 64, 3) and obs.dtype == np.uint8 and obs in envs.observation_space
    assert reward.shape == (3,) and np.issubdtype(reward.dtype, np.floating)
    assert terminated.dtype == bool and truncated.dtype == bool and terminated.shape == truncated.shape == (3,)
    for wrong in (np.zeros(2, np.int64), np.array([0, 15, 1]), np.array([0.0, 1.0, 2.0])):
        with pytest.raises(ValueError, match=r"integers in \[0, 15\) of shape \(3,\)"):
            envs.step(wrong)
    envs.close()
    assert envs.unwrapped.env is None


def test_configuration_errors_name_the_key_and_the_choices():
    """Guards: an unknown game, option, distribution mode or vectorization mode failing late or obscurely."""
    with pytest.raises(ConfigError, match="data.env_id.*'procgen:pong'.*bigfish.*starpilot"):
        resolve_env_id("procgen:pong")
    with pytest.raises(ConfigError, match=r"data.env_kwargs.*\['num_level'\].*num_levels"):
        make("starpilot", 2, num_level=1)
    with pytest.raises(ConfigError, match="data.env_kwargs.*'bogus' is not one of easy, hard"):
        make("starpilot", 2, distribution_mode="bogus")
    with pytest.raises(ConfigError, match="data.env_kwargs.*starpilot does not support exploration"):
        make("starpilot", 2, distribution_mode="exploration")
    for mode in ("sync", "async"):
        with pytest.raises(ConfigError, match="vector-only"):
            make("starpilot", 2, vectorization_mode=mode)
    assert len(GAMES) == 16 and all(gym.spec(resolve_env_id(f"procgen:{g}")).vector_entry_point for g in GAMES)


def test_same_seed_same_trajectory_and_other_seeds_differ():
    """Guards: the reset seed not reaching procgen's rand_seed (runs would not be reproducible, nor match procgen
    used directly), a seeded reset of a stepped env not restarting from that seed, and all envs of a batch
    sharing one level."""
    from procgen import ProcgenGym3Env

    a, b = make("starpilot", 4), make("starpilot", 4)
    frames, rewards, dones = rollout(a, seed=7, steps=300)
    assert dones.any() and rewards.any()
    direct = ProcgenGym3Env(num=4, env_name="starpilot", distribution_mode="easy", rand_seed=7)
    np.testing.assert_array_equal(direct.observe()[1]["rgb"], frames[0])
    direct.close()
    for again in (rollout(b, seed=7, steps=300), rollout(a, seed=7, steps=300)):
        np.testing.assert_array_equal(again[0], frames)
        np.testing.assert_array_equal(again[1], rewards)
        np.testing.assert_array_equal(again[2], dones)
    other, _ = b.reset(seed=8)
    assert not np.array_equal(other, frames[0])
    assert len({frame.tobytes() for frame in frames[0]}) == 4


def test_level_options_reach_procgen():
    """Guards: num_levels, start_level or distribution_mode dropped on the way to procgen, and an unseeded reset
    after steps that does not start new episodes. With one level every episode starts on the same frame."""
    envs = make("coinrun", 3, num_levels=1, start_level=3)
    start, _ = envs.reset(seed=0)
    assert all(np.array_equal(frame, start[0]) for frame in start)
    for _ in range(10):
        obs, *_ = envs.step(np.full(3, 7))  # run right
    assert not np.array_equal(obs, start)
    np.testing.assert_array_equal(envs.reset()[0], start)
    other_seed, _ = make("coinrun", 1, num_levels=1, start_level=3).reset(seed=5)
    np.testing.assert_array_equal(other_seed[0], start[0])
    other_level, _ = make("coinrun", 1, num_levels=1, start_level=4).reset(seed=0)
    assert not np.array_equal(other_level[0], start[0])
    hard, _ = make("coinrun", 1, num_levels=1, start_level=3, distribution_mode="hard").reset(seed=0)
    assert not np.array_equal(hard[0], start[0])


def test_episode_end_returns_the_next_episodes_first_frame():
    """Guards: the done flag one step off the episode end (gym3's ``first`` marks the step whose action ended the
    episode), or the final observation returned instead of the next episode's first. With one level, every
    terminated step must show the level's first frame, and the step after it continues that episode."""
    envs = make("starpilot", 4, num_levels=1, start_level=3)
    frames, _, dones = rollout(envs, seed=1, steps=400)
    assert dones.sum() >= 10
    np.testing.assert_array_equal(frames[1:][dones], np.broadcast_to(frames[0, 0], frames[1:][dones].shape))
    assert not (dones[1:] & dones[:-1]).any()


def test_completion_reward_comes_with_the_termination():
    """Guards: rewards misaligned with episode ends. coinrun's only reward, 10, is for reaching the coin, which
    ends the episode, so it must arrive in a step with terminated=True, never in a step of a running episode."""
    _, rewards, dones = rollout(make("coinrun", 16), seed=0, steps=800)
    assert (rewards == 10).sum() >= 3
    assert set(np.unique(rewards)) <= {0.0, 10.0} and not (rewards[~dones]).any()


def test_episode_statistics_match_counted_episodes():
    """Guards: RecordEpisodeStatistics (same-step mode, read from the metadata) reporting lengths or returns that
    differ from the steps and rewards between terminations, e.g. if the env declared next-step autoreset."""
    envs = vw.RecordEpisodeStatistics(make("starpilot", 4))
    envs.reset(seed=3)
    length, ret = np.zeros(4, int), np.zeros(4)
    counted, reported = [], []
    rng = np.random.default_rng(0)
    for _ in range(400):
        _, reward, terminated, truncated, info = envs.step(rng.integers(0, 15, 4))
        assert not truncated.any()
        length += 1
        ret += reward
        for i in np.flatnonzero(terminated):
            counted.append((length[i], ret[i]))
            reported.append((info["episode"]["l"][i], info["episode"]["r"][i]))
            length[i], ret[i] = 0, 0.0
    assert len(counted) >= 10 and any(r > 0 for _, r in counted)
    np.testing.assert_allclose(reported, counted)


def test_datamodule_builds_wrapped_procgen_envs():
    """Guards: data.env_id=procgen:<game> failing in the datamodule (check_env_id, make_envs with env_kwargs and
    the reward wrappers), or vectorization_mode=sync failing with anything but a ConfigError."""
    from lit_rl.data.datamodule import RolloutDataModule

    data = RolloutDataModule(env_id="procgen:starpilot", env_kwargs={"num_levels": 1}, num_envs=2,
                             total_timesteps=64, normalize_reward=True, clip_reward=0.5)
    envs = data.make_envs(2, training=True)
    envs.reset(seed=0)
    rewards = np.stack([envs.step(np.random.default_rng(t).integers(0, 15, 2))[1] for t in range(200)])
    assert rewards.any() and np.all(np.abs(rewards) <= 0.5)
    envs.close()
    # Refused when the datamodule is configured, before any env or process starts.
    with pytest.raises(ConfigError, match="data.vectorization_mode: 'procgen:starpilot' runs only as procgen's own"):
        RolloutDataModule(env_id="procgen:starpilot", num_envs=2, total_timesteps=64, vectorization_mode="sync")


@pytest.mark.integration
def test_garbage_collected_env_does_not_deadlock_a_build():
    """Guards: a deadlock seen when a test failed: building a procgen env holds cffi's lock while it binds C
    functions; an env the garbage collector frees meanwhile closes itself in __del__ and binds libenv_close
    under the same lock. Runs in a subprocess, as a deadlock would hang this one."""
    script = """if True:
        import gc, gymnasium as gym
        from lit_rl.envs import resolve_env_id
        envs = gym.make_vec(resolve_env_id("procgen:starpilot"), num_envs=2)
        lock = envs.unwrapped.env._ffi._lock
        cycle = {"envs": envs}
        cycle["self"] = cycle
        del envs, cycle
        gc.disable()
        with lock:  # what building another env holds
            gc.collect()
    """
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, capture_output=True)
