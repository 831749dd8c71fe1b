"""lit_rl.envs.minatar, MinAtar as one native gymnasium vector env: the vector-env contract (spaces, seeding,
next-step autoreset, episode statistics, truncation against termination), options, and the configs."""

import pytest

pytest.importorskip("minatar", reason="the minatar extra is not installed (pip install 'lit-rl[minatar]')")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.wrappers import vector as vw  # noqa: E402
from minatar import Environment  # noqa: E402

from lit_rl.envs import check_vectorization, resolve_env_id  # noqa: E402
from lit_rl.envs.minatar import GAMES  # noqa: E402
from lit_rl.errors import ConfigError  # noqa: E402
from tests.helpers import QUIET, REPO  # noqa: E402

CHANNELS = {"asterix": 4, "breakout": 4, "freeway": 7, "seaquest": 10, "space_invaders": 6}


def make(game: str, num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    return gym.make_vec(resolve_env_id(f"minatar:{game}"), num_envs=num_envs, **kwargs)


def play(envs: gym.vector.VectorEnv, seed: int, actions: np.ndarray) -> tuple[np.ndarray, ...]:
    """Observations, rewards, terminations and truncations of ``actions`` after ``reset(seed=seed)``."""
    obs, _ = envs.reset(seed=seed)
    frames, rewards, terms, truncs = [obs], [], [], []
    for a in actions:
        obs, reward, terminated, truncated, _ = envs.step(a)
        frames.append(obs)
        rewards.append(reward)
        terms.append(terminated)
        truncs.append(truncated)
    return np.stack(frames), np.stack(rewards), np.stack(terms), np.stack(truncs)


@pytest.mark.parametrize("game", GAMES)
def test_each_game_builds_with_uint8_frames_and_the_documented_spaces(game):
    """Guards: minatar:<game> not resolving to a registered vector env; frames carried as bool or float; wrong
    spaces, shapes or dtypes; a missing next-step autoreset tag (the collector would misread episode ends)."""
    envs = make(game, 3)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    assert envs.single_observation_space == gym.spaces.Box(0, 1, (10, 10, CHANNELS[game]), np.uint8)
    assert envs.single_action_space == gym.spaces.Discrete(6)
    obs, info = envs.reset(seed=0)
    assert obs.shape == (3, 10, 10, CHANNELS[game]) and obs.dtype == np.uint8 and info == {}
    assert obs.max() == 1  # the player (at least) is drawn
    obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert obs in envs.observation_space and obs.dtype == np.uint8
    assert reward.shape == (3,) and reward.dtype == np.float64
    assert terminated.dtype == bool and truncated.dtype == bool and terminated.shape == truncated.shape == (3,)
    for wrong in (np.zeros(2, np.int64), np.array([0, 6, 1]), np.array([0.0, 1.0, 2.0])):
        with pytest.raises(ValueError, match=r"integers in \[0, 6\) of shape \(3,\)"):
            envs.step(wrong)
    envs.close()


def test_it_plays_the_minatar_games_exactly_seeding_env_i_with_seed_plus_i():
    """The batch against ``minatar.Environment`` played by hand, env i seeded with seed + i, sticky actions 0.1,
    through several episode ends (next-step autoreset: the step after an end resets that env, plays no action,
    gives reward 0 and neither flag). Guards: the wrong seed per env, sticky actions dropped or doubled, a reset
    that plays the action, frames or rewards of the wrong env."""
    seed, steps, n = 7, 600, 3
    actions = np.random.default_rng(1).integers(0, 6, (steps, n))
    frames, rewards, terms, truncs = play(make("breakout", n), seed, actions)
    assert terms.sum() >= 3 * n and not truncs.any()  # random play ends several episodes of every env
    for i in range(n):
        game = Environment("breakout", sticky_action_prob=0.1)
        game.seed(seed + i)
        game.reset()
        assert np.array_equal(frames[0, i], game.state())
        ended = False
        for t in range(steps):
            if ended:
                game.reset()
                game.last_action = 0
                expected_reward, expected_term = 0.0, False
            else:
                expected_reward, expected_term = game.act(int(actions[t, i]))
            assert rewards[t, i] == expected_reward and terms[t, i] == expected_term, (i, t)
            assert np.array_equal(frames[t + 1, i], game.state()), (i, t)
            ended = bool(expected_term)


def test_a_reset_starts_afresh_with_no_sticky_action_left_over():
    """Reset with the seed again, the same batch plays the same episodes as the first time: nothing of the
    previous episodes (the last action, which sticky actions would repeat) carries over. With sticky actions
    always on, the games repeat the last action forever, so one carried over shows in every frame."""
    envs = make("breakout", 3, sticky_action_prob=1.0)
    actions = np.random.default_rng(6).integers(0, 6, (200, 3))
    first = play(envs, 21, actions)
    for game in envs.unwrapped.games:
        game.last_action = 1  # left: a last action (as sticky 0.1 play leaves one) the next reset must forget
    again = play(envs, 21, actions)
    for a, b in zip(first, again):
        assert np.array_equal(a, b)


def test_seeding_is_reproducible_and_a_split_batch_sees_the_same_episodes():
    """Guards: an unseeded stream (two seeded runs differ), or env i not seeded with seed + i (a batch split over
    processes, each seeding its envs from its first env's index, would play other episodes)."""
    actions = np.random.default_rng(2).integers(0, 6, (300, 4))
    first, second = play(make("space_invaders", 4), 3, actions), play(make("space_invaders", 4), 3, actions)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    upper = play(make("space_invaders", 2), 5, actions[:, 2:])
    for whole, part in zip(first, upper):
        assert np.array_equal(whole[:, 2:], part)
    other = play(make("space_invaders", 4), 4, actions)
    assert not np.array_equal(first[0], other[0]) or not np.array_equal(first[1], other[1])
    # An unseeded first reset draws its seeds from np_random: two fresh batches differ.
    a, b = make("asterix", 2), make("asterix", 2)
    a.reset(), b.reset()
    steps = np.random.default_rng(3).integers(0, 6, (200, 2))
    trace_a = [a.step(s)[1] for s in steps]
    trace_b = [b.step(s)[1] for s in steps]
    assert not np.array_equal(np.stack(trace_a), np.stack(trace_b))


def test_max_episode_steps_truncates_and_game_ends_terminate_with_episode_statistics():
    """Truncation against termination: an episode cut by max_episode_steps is truncated, not terminated; one the
    game ends is terminated, not truncated, even on the limit's step. gymnasium's RecordEpisodeStatistics (what
    the datamodule wraps) counts each episode's return and length as the steps show them."""
    limit = 40
    envs = vw.RecordEpisodeStatistics(make("breakout", 4, max_episode_steps=limit))
    actions = np.random.default_rng(4).integers(0, 6, (500, 4))
    obs, _ = envs.reset(seed=11)
    totals, lengths, ended = np.zeros(4), np.zeros(4, int), np.zeros(4, bool)
    seen = {"terminated": 0, "truncated": 0}
    for a in actions:
        obs, reward, terminated, truncated, info = envs.step(a)
        assert not (terminated & truncated).any()
        for i in range(4):
            if ended[i]:  # the autoreset step: not part of any episode
                assert reward[i] == 0 and not terminated[i] and not truncated[i]
                totals[i], lengths[i] = 0.0, 0
                continue
            totals[i] += reward[i]
            lengths[i] += 1
            assert truncated[i] == (lengths[i] == limit and not terminated[i])
            assert lengths[i] <= limit
        done = terminated | truncated
        if done.any():
            assert np.array_equal(info["_episode"], done)
            np.testing.assert_allclose(info["episode"]["r"][done], totals[done])
            assert np.array_equal(info["episode"]["l"][done], lengths[done])
        seen["terminated"] += int(terminated.sum())
        seen["truncated"] += int(truncated.sum())
        ended = done
    assert seen["terminated"] > 0 and seen["truncated"] > 0
    # With no limit nothing is ever truncated.
    _, _, terms, truncs = play(make("breakout", 2, max_episode_steps=None), 0, actions[:, :2])
    assert not truncs.any()
    # A game that ends on the limit's own step terminates: the first episode's length as the limit.
    length = int(np.flatnonzero(terms[:, 0])[0]) + 1
    _, _, terms_at, truncs_at = play(make("breakout", 2, max_episode_steps=length), 0, actions[:, :2])
    assert terms_at[length - 1, 0] and not truncs_at[length - 1, 0]


def test_options_and_refusals_name_the_key():
    """Guards: unknown games, options, bad values or per-env vectorization failing late or obscurely; the
    minimal action set and sticky-action probability not reaching the games."""
    with pytest.raises(ConfigError, match=r"data\.env_id: 'minatar:pong' names no MinAtar game.*breakout"):
        resolve_env_id("minatar:pong")
    assert resolve_env_id("minatar:SpaceInvaders") == resolve_env_id("minatar:space_invaders")
    with pytest.raises(ConfigError, match=r"data\.env_kwargs: unknown MinAtar option\(s\) \['frame_skip'\]"):
        make("breakout", 1, frame_skip=4)
    with pytest.raises(ConfigError, match=r"data\.env_kwargs\.sticky_action_prob: must lie in \[0, 1\]"):
        make("breakout", 1, sticky_action_prob=1.5)
    with pytest.raises(ConfigError, match=r"data\.env_kwargs\.max_episode_steps: a positive integer or null"):
        make("breakout", 1, max_episode_steps=0)
    for mode in ("sync", "async"):
        with pytest.raises(ConfigError, match=r"data\.vectorization_mode: 'minatar:breakout' runs only as minatar's"):
            check_vectorization("minatar:breakout", mode, False)
    with pytest.raises(ConfigError, match=r"data\.vectorization_mode: lit_rl's MinAtar envs are vector-only"):
        gym.make(resolve_env_id("minatar:breakout"))  # gymnasium's single-env entry point
    with pytest.raises(ConfigError, match=r"data\.record_video"):
        check_vectorization("minatar:breakout", "auto", True)
    minimal = make("breakout", 2, minimal_action_set=True)
    assert minimal.single_action_space == gym.spaces.Discrete(3)
    assert list(minimal.unwrapped.actions) == Environment("breakout").minimal_action_set()
    assert all(g.env.ramping is False for g in make("asterix", 2, difficulty_ramping=False).unwrapped.games)
    assert all(g.env.ramping is True for g in make("asterix", 2).unwrapped.games)
    # Sticky actions 0 play each action as given: two envs of one seed, one with 0.1, part ways.
    actions = np.random.default_rng(5).integers(0, 6, (300, 1))
    plain = play(make("breakout", 1, sticky_action_prob=0.0), 9, actions)
    sticky = play(make("breakout", 1), 9, actions)
    assert not np.array_equal(plain[0], sticky[0])


def test_seaquest_needs_its_layout_set_and_resume_keeps_it(tmp_path, cli):
    """Seaquest's 10x10x10 frames are refused by auto layout with the key to set, before the run writes its
    config, and train with model.image_layout channels_last; a resume with the other layout is refused.
    (tests/test_cli.py fits every MinAtar config as shipped.)"""
    small = ["--data.total_timesteps", "512", "--data.num_envs", "8", "--data.num_steps", "64",
             "--data.eval_episodes", "2", "--data.eval_envs", "2", "--torch_threads", "1"]
    for name in ("seaquest", "seaquest_last"):
        (tmp_path / name).mkdir()
    refused = cli("fit", "--config", str(REPO / "configs/ppo/minatar.yaml"), *QUIET, *small,
                  "--data.env_id", "minatar:seaquest", cwd=tmp_path / "seaquest", check=False)
    assert refused.returncode != 0
    assert "model.image_layout: auto cannot tell which side of data.env_id's 10x10x10 frames" in refused.stderr
    assert "channels_last" in refused.stderr
    assert not list((tmp_path / "seaquest").rglob("config.yaml"))  # refused before the run wrote anything
    seaquest = ["--config", str(REPO / "configs/ppo/minatar.yaml"), *QUIET, *small, "--data.env_id", "minatar:seaquest"]
    cli("fit", *seaquest, "--model.init_args.image_layout", "channels_last", cwd=tmp_path / "seaquest_last")
    # The layout shapes the networks: resuming with another is refused, naming the key and the saved value.
    other = cli("fit", *seaquest, "--model.init_args.image_layout", "channels_first", "--ckpt_path", "last",
                "--data.total_timesteps", "2048", cwd=tmp_path / "seaquest_last", check=False)
    assert other.returncode != 0
    assert "model.image_layout:" in other.stderr and "image_layout='channels_last'" in other.stderr
