"""Small registered gymnasium envs for tests: ``tests.envs:Name-v0`` imports and registers them."""

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class NanRewardEnv(gym.Env):
    """CartPole whose reward turns NaN after ``nan_after`` steps of this env instance."""

    def __init__(self, nan_after: int = 200) -> None:
        self.inner = gym.make("CartPole-v1")
        self.observation_space = self.inner.observation_space
        self.action_space = self.inner.action_space
        self.nan_after = nan_after
        self.steps = 0

    def reset(self, *, seed: Any = None, options: Any = None) -> Any:
        return self.inner.reset(seed=seed, options=options)

    def step(self, action: Any) -> Any:
        self.steps += 1
        obs, reward, terminated, truncated, info = self.inner.step(action)
        return obs, (float("nan") if self.steps > self.nan_after else reward), terminated, truncated, info


class TupleActionEnv(gym.Env):
    """An env with a Tuple action space, which the policy does not handle."""

    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3)))

    def reset(self, *, seed: Any = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action: Any) -> Any:
        return np.zeros(3, np.float32), 0.0, False, False, {}


class ChainEnv(gym.Env):
    """Discrete observations and MultiDiscrete actions: reward 1 when the two action parts match the state."""

    observation_space = spaces.Discrete(4)
    action_space = spaces.MultiDiscrete([4, 2])

    def reset(self, *, seed: Any = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.state = int(self.np_random.integers(4))
        return self.state, {}

    def step(self, action: Any) -> Any:
        reward = float(action[0] == self.state) + float(action[1] == self.state % 2)
        self.state = int(self.np_random.integers(4))
        return self.state, reward, False, False, {}


gym.register("NanReward-v0", entry_point=NanRewardEnv, max_episode_steps=500)
gym.register("TupleAction-v0", entry_point=TupleActionEnv, max_episode_steps=50)
gym.register("Chain-v0", entry_point=ChainEnv, max_episode_steps=20)


class CueEnv(gym.Env):
    """A memory task. The first observation shows a cue, +1 or -1; the next ``delay`` observations are 0. The
    episode ends after ``delay + 1`` actions, and its only reward, 1, comes at the last one if that action
    names the cue (1 for +1, 0 for -1). A policy that does not carry the cue in its state sees the same
    blank observation at the last step whatever the cue, so it is right half the time at best."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, delay: int = 2) -> None:
        self.delay = delay

    def reset(self, *, seed: Any = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.cue, self.t = int(self.np_random.integers(2)), 0
        return np.array([2.0 * self.cue - 1.0], np.float32), {}

    def step(self, action: Any) -> Any:
        self.t += 1
        last = self.t > self.delay
        reward = float(last and int(action) == self.cue)
        return np.zeros(1, np.float32), reward, last, False, {}


gym.register("Cue-v0", entry_point=CueEnv)


class StallEnv(gym.Env):
    """CartPole that misbehaves after ``after`` steps of this env instance: ``mode`` ``raise`` raises, ``hang``
    sleeps for an hour (a stuck simulator), ``slow`` takes 2 ms a step (only envs first reset with a seed of at
    least ``slow_from_seed``, when it is given)."""

    def __init__(self, after: int = 100, mode: str = "raise", slow_from_seed: Any = None) -> None:
        self.inner = gym.make("CartPole-v1")
        self.observation_space = self.inner.observation_space
        self.action_space = self.inner.action_space
        self.after, self.mode, self.steps = after, mode, 0
        self.slow_from_seed, self.misbehaves = slow_from_seed, slow_from_seed is None

    def reset(self, *, seed: Any = None, options: Any = None) -> Any:
        if seed is not None and self.slow_from_seed is not None:
            self.misbehaves = seed >= self.slow_from_seed
        return self.inner.reset(seed=seed, options=options)

    def step(self, action: Any) -> Any:
        self.steps += 1
        if self.steps > self.after and self.misbehaves:
            if self.mode == "raise":
                raise RuntimeError(f"the simulator broke at step {self.steps}")
            import time

            time.sleep(0.002 if self.mode == "slow" else 3600)
        return self.inner.step(action)


gym.register("Stall-v0", entry_point=StallEnv, max_episode_steps=500)


class QuadrantEnv(gym.Env):
    """A small image task that a CNN learns in a few thousand steps on a CPU, and a policy blind to the pixels
    cannot: each step shows a ``size x size`` uint8 RGB frame (channels last, or first with ``channels_first``)
    with a bright 3x3 patch in one of its four quadrants over dim noise; the action names the quadrant (0 top
    left, 1 top right, 2 bottom left, 3 bottom right) and earns 1 when it is right. An episode is ``length``
    steps, so a return of ``length`` is perfect and chance gets a quarter of it. With ``hint`` the observation is a
    Dict of the frame (``"image"``) and a float vector (``"hint"``) that says nothing."""

    def __init__(self, size: int = 16, length: int = 8, channels_first: bool = False, hint: bool = False) -> None:
        self.size, self.length, self.channels_first, self.hint = size, length, channels_first, hint
        shape = (3, size, size) if channels_first else (size, size, 3)
        image = spaces.Box(0, 255, shape, np.uint8)
        self.observation_space = (spaces.Dict({"image": image, "hint": spaces.Box(-1.0, 1.0, (2,), np.float32)})
                                  if hint else image)
        self.action_space = spaces.Discrete(4)
        self.quadrant, self.steps = 0, 0

    def _frame(self) -> Any:
        half = self.size // 2
        frame = self.np_random.integers(0, 40, (self.size, self.size, 3), dtype=np.uint8)
        self.quadrant = int(self.np_random.integers(4))
        row = (self.quadrant // 2) * half + int(self.np_random.integers(0, half - 2))
        col = (self.quadrant % 2) * half + int(self.np_random.integers(0, half - 2))
        frame[row:row + 3, col:col + 3] = 255
        frame = frame.transpose(2, 0, 1).copy() if self.channels_first else frame
        if self.hint:
            return {"image": frame, "hint": self.np_random.uniform(-1, 1, 2).astype(np.float32)}
        return frame

    def reset(self, *, seed: Any = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.steps = 0
        return self._frame(), {}

    def step(self, action: Any) -> Any:
        reward = float(int(action) == self.quadrant)
        self.steps += 1
        return self._frame(), reward, self.steps >= self.length, False, {}


gym.register("Quadrant-v0", entry_point=QuadrantEnv)
