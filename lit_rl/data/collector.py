"""Steps a vector env with a policy's ``act()`` and records the rollouts (the collector never learns)."""

import time
from typing import Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from lit_rl.data.rollout import Rollout
from lit_rl.errors import ConfigError
from lit_rl.nets import History, noise_dim


class Policy(Protocol):
    """Declares what the collector needs from a module: acting and valuing, both without gradients."""

    @property
    def device(self) -> torch.device: ...

    def act(self, obs: Tensor, deterministic: bool = False, noise: Tensor | None = None,
            history: History | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(actions, logprobs, values)`` for a batch of observations; actions are drawn with
        ``noise`` (uniform, one row per observation) when it is given. A recurrent policy takes one step
        of its ``history`` and leaves the new state in ``history.final_state``."""
        ...

    def value(self, obs: Tensor, history: History | None = None) -> Tensor: ...

    def initial_state(self, batch: int) -> Tensor | None:
        """Returns a recurrent policy's state before any step (``[batch, S]``); None for a feed-forward one."""
        ...


class Collector:
    """Steps ``envs`` and records rollouts on the CPU.

    Envs reset under gymnasium's next-step autoreset (the default: the step after an episode ends only resets
    that env, and is marked invalid) or same-step autoreset (the env returns the next episode's first
    observation with the step that ended one, as Procgen does; every step is then valid). A same-step env
    gives no final observation to bootstrap from, so a truncation there is refused (:func:`autoreset_mode`).

    Env ``i`` of this collector is env ``env_offset + i`` of the run. Each env draws its actions from its own
    noise stream, seeded by ``(noise_seed, env index, iteration)``, so a rollout does not depend on how the
    run's envs are split among processes: one process with 4 envs collects what two with 2 envs each do
    (log-probs and values up to the float rounding of a different batch size).
    """

    def __init__(self, envs: gym.vector.VectorEnv, env_offset: int = 0, noise_seed: int = 0) -> None:
        self.envs = envs
        self.num_envs = envs.num_envs
        self.env_offset = env_offset
        self.noise_seed = noise_seed
        self.noise_dim = noise_dim(envs.single_action_space)
        self.same_step = autoreset_mode(envs) == gym.vector.AutoresetMode.SAME_STEP
        self.obs: np.ndarray | None = None
        self.prev_done = np.zeros(self.num_envs, dtype=bool)
        # Whether self.obs is the first of an episode, and a recurrent policy's state before it.
        self.start = np.ones(self.num_envs, dtype=bool)
        self.state: Tensor | None = None

    def reset(self, seed: int) -> None:
        """Starts new episodes; env ``i`` is seeded with ``seed + i``."""
        self.obs, _ = self.envs.reset(seed=seed)
        self.prev_done[:] = False
        self.start[:] = True
        self.state = None

    def collect(self, policy: Policy, num_steps: int, env_steps: int, iteration: int) -> Rollout:
        """Runs ``num_steps`` steps in every env with ``policy``; returns them as a :class:`Rollout`.

        ``env_steps`` is the run's count after this rollout, ``iteration`` its index; both are recorded.
        """
        assert self.obs is not None, "call reset() before collect()"
        start = time.perf_counter()
        T, N, device = num_steps, self.num_envs, policy.device
        obs_buf = torch.empty((T, N, *self.obs.shape[1:]), dtype=torch.as_tensor(self.obs).dtype)
        actions = logprobs = values = None
        rewards = torch.empty((T, N))
        terminated = torch.empty((T, N), dtype=torch.bool)
        truncated = torch.empty((T, N), dtype=torch.bool)
        valid = torch.empty((T, N), dtype=torch.bool)
        starts = torch.empty((T, N), dtype=torch.bool)
        if self.state is None:
            self.state = policy.initial_state(N)
        initial_state = self.state.clone() if self.state is not None else None
        ep_returns: list[np.ndarray] = []
        ep_lengths: list[np.ndarray] = []
        noise = self.noise(T, iteration).to(device)
        for t in range(T):
            obs = torch.as_tensor(self.obs)
            starts[t] = torch.from_numpy(self.start)
            history = self._history(device)
            action, logprob, value = policy.act(obs.to(device), noise=noise[t], history=history)
            if history is not None:
                assert history.final_state is not None
                self.state = history.final_state.cpu()
            action = action.cpu()
            if actions is None:
                actions = torch.empty((T, *action.shape), dtype=action.dtype)
                logprobs, values = torch.empty((T, N)), torch.empty((T, N))
            obs_buf[t], actions[t], logprobs[t], values[t] = obs, action, logprob.cpu(), value.cpu()
            valid[t] = torch.from_numpy(~self.prev_done)
            # Next-step autoreset: the step after an autoreset step is the first of the next episode.
            self.start = self.prev_done.copy()
            self.obs, reward, term, trunc, info = self.envs.step(action.numpy())
            rewards[t] = torch.from_numpy(np.asarray(reward, dtype=np.float32))
            terminated[t] = torch.from_numpy(np.asarray(term, dtype=bool))
            truncated[t] = torch.from_numpy(np.asarray(trunc, dtype=bool))
            self.start, self.prev_done = self._after_step(self.start, term, trunc)
            if "_episode" in info:
                ended = info["_episode"]
                ep_returns.append(info["episode"]["r"][ended])
                ep_lengths.append(info["episode"]["l"][ended])
        last_obs = torch.as_tensor(self.obs)
        # The next rollout starts from this observation and state; only its value is taken here.
        last_value = policy.value(last_obs.to(device), history=self._history(device)).cpu()
        assert actions is not None and logprobs is not None and values is not None
        return Rollout(
            obs=obs_buf,
            actions=actions,
            logprobs=logprobs,
            values=values,
            rewards=rewards,
            terminated=terminated,
            truncated=truncated,
            valid=valid,
            starts=starts,
            last_value=last_value,
            last_obs=last_obs.clone(),
            last_start=torch.from_numpy(self.start.copy()),
            initial_state=initial_state,
            episode_returns=torch.as_tensor(np.concatenate(ep_returns) if ep_returns else np.zeros(0), dtype=torch.float32),
            episode_lengths=torch.as_tensor(np.concatenate(ep_lengths) if ep_lengths else np.zeros(0), dtype=torch.float32),
            env_steps=env_steps,
            iteration=iteration,
            rollout_time=time.perf_counter() - start,
        )

    def _after_step(self, start: np.ndarray, term: np.ndarray, trunc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(start, prev_done)`` for the observation a step returned: under next-step autoreset an env
        that ended an episode resets on the next step; under same-step autoreset it has already reset, so its
        returned observation starts the next episode."""
        done = np.logical_or(term, trunc)
        if not self.same_step:
            return start, done
        if np.any(trunc):
            raise RuntimeError(
                "a same-step autoreset env truncated an episode: it gives no final observation to bootstrap the "
                "truncated return from. Make the env report its time limit as a termination, or use next-step "
                "autoreset (gymnasium's default).")
        return done, np.zeros_like(done)

    def _history(self, device: torch.device) -> History | None:
        """Returns one step of history for the current observations (None for a feed-forward policy)."""
        return one_step(self.start, self.state, device)

    def noise(self, num_steps: int, iteration: int) -> Tensor:
        """Draws ``[T, N, noise_dim]`` uniform noise: env ``i``'s from its own stream for this iteration."""
        streams = []
        for i in range(self.num_envs):
            seed = hash((self.noise_seed, self.env_offset + i, iteration)) & (2**63 - 1)
            streams.append(torch.rand((num_steps, self.noise_dim), generator=torch.Generator().manual_seed(seed)))
        return torch.stack(streams, 1)

    def evaluate(self, policy: Policy, num_episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Runs ``num_episodes`` whole episodes with the greedy action; returns (returns, lengths).

        Episodes are split evenly among the envs before anything runs, so short episodes are not
        over-represented, as they would be by taking the first ``num_episodes`` to end.
        """
        quota = np.full(self.num_envs, num_episodes // self.num_envs)
        quota[: num_episodes % self.num_envs] += 1
        returns: list[float] = []
        lengths: list[float] = []
        obs, _ = self.envs.reset(seed=seed)
        done_count = np.zeros(self.num_envs, dtype=int)
        # A recurrent policy carries its state through each episode and starts the next from zero.
        state = policy.initial_state(self.num_envs)
        start = np.ones(self.num_envs, dtype=bool)
        prev_done = np.zeros(self.num_envs, dtype=bool)
        while (done_count < quota).any():
            history = one_step(start, state, policy.device)
            action, _, _ = policy.act(torch.as_tensor(obs).to(policy.device), deterministic=True, history=history)
            if history is not None:
                state = history.final_state
            start = prev_done
            obs, _, term, trunc, info = self.envs.step(action.cpu().numpy())
            start, prev_done = self._after_step(start, term, trunc)
            if "_episode" in info:
                for i in np.flatnonzero(info["_episode"]):
                    if done_count[i] < quota[i]:
                        returns.append(float(info["episode"]["r"][i]))
                        lengths.append(float(info["episode"]["l"][i]))
                    done_count[i] += 1
        # A video of the last episode is otherwise written only at the next reset or at close(): finish it now,
        # so that it is on disk when the evaluation's results are logged.
        env = self.envs
        while env is not None:
            if isinstance(env, gym.wrappers.vector.RecordVideo) and env.recording:
                env.stop_recording()
            env = getattr(env, "env", None)
        return np.asarray(returns), np.asarray(lengths)


def autoreset_mode(envs: gym.vector.VectorEnv) -> gym.vector.AutoresetMode:
    """Returns how ``envs`` reset an ended episode (gymnasium's ``metadata["autoreset_mode"]``, next-step when
    absent); raises a ConfigError for a mode the collector cannot record."""
    mode = envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
    if mode not in (gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP):
        raise ConfigError(f"data.env_id: the vector env's autoreset mode {mode} is not supported; lit_rl's collector "
                          "needs next-step (gymnasium's default) or same-step autoreset.")
    return mode


def one_step(start: np.ndarray, state: Tensor | None, device: torch.device) -> History | None:
    """Returns a :class:`History` of one step for a batch of observations: which of them start an episode, and
    the state before them. None when there is no state (a feed-forward policy)."""
    if state is None:
        return None
    return History(torch.from_numpy(start).unsqueeze(0).to(device), state.to(device))
