"""The Atari envs (:mod:`lit_rl.envs.atari`): names, options, and the same spaces, next-step autoreset, episode
statistics and seeding on every backend."""

import pytest

pytest.importorskip("ale_py", reason="the atari extra is not installed (pip install 'lit-rl[atari]')")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.wrappers.vector import RecordEpisodeStatistics  # noqa: E402

from lit_rl.envs.make import check_env_id  # noqa: E402
from lit_rl.envs import atari, resolve_env_id  # noqa: E402
from lit_rl.errors import ConfigError  # noqa: E402

BACKENDS = ["ale_vector", "envpool", "gymnasium"]


def make(backend: str, game: str = "Breakout", num_envs: int = 2, **kwargs) -> gym.vector.VectorEnv:
    if backend == "envpool":
        pytest.importorskip("envpool", reason="envpool is not installed")
    if backend == "gymnasium":
        pytest.importorskip("cv2", reason="gymnasium's AtariPreprocessing needs opencv")
    return gym.make_vec(resolve_env_id(f"atari:{game}"), num_envs=num_envs, backend=backend, **kwargs)


def play(envs: gym.vector.VectorEnv, seed: int, steps: int) -> list[np.ndarray]:
    """Observations, rewards and ends of ``steps`` random steps after ``reset(seed=seed)``; a single env takes
    the actions of env 1 of two."""
    obs, _ = envs.reset(seed=seed)
    out = [obs]
    for actions in np.random.default_rng(0).integers(0, 4, (steps, 2))[:, -envs.num_envs:]:
        obs, reward, terminated, truncated, _ = envs.step(actions)
        out += [obs, reward, terminated, truncated]
    return out


def test_game_names() -> None:
    assert resolve_env_id("atari:Breakout") == "lit_rl/atari-Breakout-v0"
    assert resolve_env_id("atari:ms_pacman") == resolve_env_id("atari:MsPacman") == "lit_rl/atari-MsPacman-v0"
    assert check_env_id("atari:Pong").id == "lit_rl/atari-Pong-v0"
    assert len(atari.GAMES) > 100 and "Combat" not in atari.GAMES  # single-player ROMs only, as ALE v5
    with pytest.raises(ConfigError, match=r"data\.env_id: 'atari:Breakuot'.*did you mean Breakout.*GAMES"):
        resolve_env_id("atari:Breakuot")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options, shape, actions", [
    ({}, (4, 84, 84), 6),
    ({"stack": 2, "screen_size": 64, "full_action_space": True}, (2, 64, 64), 18),
])
def test_spaces(backend: str, options: dict, shape: tuple, actions: int) -> None:
    envs = make(backend, "Pong", **options)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    assert envs.single_observation_space == gym.spaces.Box(0, 255, shape, np.uint8)
    assert envs.single_action_space == gym.spaces.Discrete(actions)
    assert envs.observation_space.shape == (2, *shape) and envs.action_space.shape == (2,)
    first, _ = envs.reset(seed=0)
    assert first.dtype == np.uint8 and first.shape == (2, *shape)
    assert (first == first[:, -1:]).all()  # a new episode's stack repeats its first frame
    obs, reward, terminated, truncated, _ = envs.step(envs.action_space.sample())
    assert obs.shape == (2, *shape) and np.array_equal(obs[:, :-1], first[:, 1:])  # the stack moves on a frame
    assert reward.dtype == np.float64 and reward.shape == (2,)
    assert terminated.dtype == truncated.dtype == bool and terminated.shape == truncated.shape == (2,)
    envs.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.integration
def test_per_env_modes(mode: str) -> None:
    """``sync`` / ``async`` build the per-env pipeline, whatever the backend."""
    pytest.importorskip("cv2", reason="gymnasium's AtariPreprocessing needs opencv")
    envs = gym.make_vec(resolve_env_id("atari:Pong"), num_envs=2, vectorization_mode=mode, backend="ale_vector")
    assert envs.single_observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and envs.step(np.array([0, 1]))[1].dtype == np.float64
    envs.close()


@pytest.mark.parametrize("backend, options, match", [
    ("ale_vector", {"frame_skipp": 2}, r"unknown Atari option\(s\) \['frame_skipp'\]; the options are .*frame_skip"),
    ("gymnasium", {"max_episode_steps": 9}, r"unknown Atari option\(s\) \['max_episode_steps'\].*frames"),
    ("envpool", {"sticky": 0.1}, r"unknown Atari option\(s\) \['sticky'\]"),
    ("cuda", {}, r"data\.env_kwargs\.backend: 'cuda' is not one of ale_vector, envpool, gymnasium"),
    ("envpool", {"terminal_on_life_loss": True}, r"terminal_on_life_loss: envpool plays on"),
    ("envpool", {"noop_max": 0}, r"noop_max: envpool crashes"),
])
def test_refused_options(backend: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make(backend, **options)


def test_default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """ale-py's vector env where its build has one, else gymnasium's per-env pipeline."""
    pytest.importorskip("cv2", reason="gymnasium's AtariPreprocessing needs opencv")
    env_id = resolve_env_id("atari:Pong")
    assert type(gym.make_vec(env_id, num_envs=1).unwrapped).__name__ == "AtariVectorEnv"
    monkeypatch.setattr(atari, "NATIVE", False)
    assert isinstance(gym.make_vec(env_id, num_envs=1), gym.vector.SyncVectorEnv)
    with pytest.raises(ConfigError, match="no vector interface; use backend 'gymnasium'"):
        gym.make_vec(env_id, num_envs=1, backend="ale_vector")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("limit", ["truncation", "game over"])
def test_next_step_autoreset(backend: str, limit: str) -> None:
    """After an episode ends, the next step only resets (reward 0, no end, the new episode's first observation),
    and RecordEpisodeStatistics reports the return and length counted here."""
    truncate = limit == "truncation"  # 80 frames of 2 per step: 40 steps, too few to lose all 5 lives
    envs = RecordEpisodeStatistics(make(backend, **({"max_num_frames_per_episode": 80, "frame_skip": 2}
                                                    if truncate else {})))
    first, _ = envs.reset(seed=1)  # Breakout's start screen stays still through the no-ops: every reset looks alike
    rng = np.random.default_rng(0)
    returns, lengths, episodes = np.zeros(2), np.zeros(2, int), [[], []]
    ended = np.zeros(2, bool)
    for _ in range(85 if truncate else 1000):
        obs, reward, terminated, truncated, info = envs.step(rng.integers(0, 4, 2))
        for i in range(2):
            if ended[i]:
                assert reward[i] == 0 and not terminated[i] and not truncated[i]
                assert np.array_equal(obs[i], first[i]) and info["lives"][i] == 5
                returns[i], lengths[i] = 0, 0
            else:
                returns[i] += reward[i]
                lengths[i] += 1
        ended = terminated | truncated
        assert np.array_equal(info.get("_episode", np.zeros(2, bool)), ended)
        for i in np.flatnonzero(ended):
            assert info["episode"]["r"][i] == returns[i] and info["episode"]["l"][i] == lengths[i]
            assert truncated[i] == truncate and terminated[i] != truncate
            assert info["lives"][i] == (0 if not truncate else 5)
            episodes[i].append(lengths[i])
        if not truncate and all(episodes) and not ended.any():
            break
    assert all(e == [40, 40] for e in episodes) if truncate else all(episodes) and not ended.any()
    envs.close()


@pytest.mark.parametrize("backend", ["ale_vector", "gymnasium"])
def test_terminal_on_life_loss(backend: str) -> None:
    """A lost life ends the episode and the next one is a new game, with every life."""
    envs = make(backend, terminal_on_life_loss=True)
    envs.reset(seed=2)
    ended, seen = np.zeros(2, bool), np.zeros(2, bool)
    for _ in range(300):
        _, _, terminated, truncated, info = envs.step(np.ones(2, np.int64))  # FIRE: the ball comes
        assert (info["lives"][ended] == 5).all() and (info["lives"][terminated] == 4).all()
        seen |= ended
        ended = terminated | truncated
    assert seen.all()
    envs.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeding(backend: str) -> None:
    """The same seed gives the same steps, again after steps; env ``i`` is seeded ``seed + i``; seeds differ."""
    envs, single = make(backend), make(backend, num_envs=1)
    run = play(envs, 3, 60)
    for a, b in zip(run, play(envs, 3, 60)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(run, play(single, 4, 60)):
        np.testing.assert_array_equal(a[1], b[0])
    assert any(not np.array_equal(a, b) for a, b in zip(run, play(envs, 5, 60)))
    envs.close()
    single.close()


def test_backends_agree_frame_for_frame() -> None:
    """Without sticky actions and no-ops, ale-py's vector env and gymnasium's per-env pipeline play the same
    frames, rewards and ends (episodes end in game over and restart here). envpool is left out: its grayscale
    differs by a few levels and its emulation drifts, so only its spaces and semantics are checked above."""
    options = {"noop_max": 0, "repeat_action_probability": 0.0}
    runs = [play(make(backend, **options), seed, 300) for backend, seed in (("ale_vector", 0), ("gymnasium", 7))]
    assert any(ended.any() for ended in runs[0][3::4])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
