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

        Every step writes into tensors allocated before the first: the env's arrays through numpy views of the
        CPU buffers, the policy's log-probs and values into buffers on its device (moved to the CPU once, at
        the end), so a step makes no tensors of its own and waits on the device only for the actions the envs
        need. Ended episodes are marked in a ``[T, N]`` table and read out in step order at the end.
        """
        assert self.obs is not None, "call reset() before collect()"
        start = time.perf_counter()
        T, N, device = num_steps, self.num_envs, policy.device
        obs_buf = torch.empty((T, *self.obs.shape), dtype=torch.as_tensor(self.obs).dtype)
        rewards = torch.empty((T, N))
        terminated, truncated, valid, starts = (torch.empty((T, N), dtype=torch.bool) for _ in range(4))
        logprobs, values = torch.empty((T, N), device=device), torch.empty((T, N), device=device)
        ended = np.zeros((T, N), dtype=bool)
        ep_return, ep_length = np.zeros((T, N), dtype=np.float32), np.zeros((T, N), dtype=np.float32)
        obs_np, rewards_np, term_np, trunc_np, valid_np, starts_np = (
            x.numpy() for x in (obs_buf, rewards, terminated, truncated, valid, starts))
        # Row views, made once per rollout: indexing a tensor costs more than the copy into it.
        obs_rows, logprob_rows, value_rows = obs_buf.unbind(0), logprobs.unbind(0), values.unbind(0)
        actions = action_rows = None
        if self.state is None:
            self.state = policy.initial_state(N)
        initial_state = self.state.cpu().clone() if self.state is not None else None
        noise_rows = self.noise(T, iteration).to(device).unbind(0)
        for t in range(T):
            obs_np[t] = self.obs
            starts_np[t] = self.start
            history = self._history(device)
            action, logprob, value = policy.act(obs_rows[t].to(device), noise=noise_rows[t], history=history)
            if history is not None:
                assert history.final_state is not None
                self.state = history.final_state  # stays on the device until the rollout ends
            if actions is None:
                actions = torch.empty((T, *action.shape), dtype=action.dtype)
                action_rows = actions.unbind(0)
            assert action_rows is not None
            action = action.cpu()  # the one transfer a step waits for: the envs need the actions
            action_rows[t].copy_(action)
            logprob_rows[t].copy_(logprob)
            value_rows[t].copy_(value)
            np.logical_not(self.prev_done, out=valid_np[t])
            self.obs, reward, term, trunc, info = self.envs.step(action.numpy())
            rewards_np[t], term_np[t], trunc_np[t] = reward, term, trunc
            self._after_step(self.start, self.prev_done, term, trunc)
            if "_episode" in info:
                ended[t] = info["_episode"]
                ep_return[t], ep_length[t] = info["episode"]["r"], info["episode"]["l"]
        last_obs = torch.as_tensor(self.obs)
        # The next rollout starts from this observation and state; only its value is taken here.
        last_value = policy.value(last_obs.to(device), history=self._history(device)).cpu()
        if self.state is not None:
            self.state = self.state.cpu()
        assert actions is not None
        return Rollout(
            obs=obs_buf,
            actions=actions,
            logprobs=logprobs.cpu(),
            values=values.cpu(),
            rewards=rewards,
            terminated=terminated,
            truncated=truncated,
            valid=valid,
            starts=starts,
            last_value=last_value,
            last_obs=last_obs.clone(),
            last_start=torch.from_numpy(self.start.copy()),
            initial_state=initial_state,
            # Row-major order: by step, then by env, as the episodes ended.
            episode_returns=torch.from_numpy(ep_return[ended]),
            episode_lengths=torch.from_numpy(ep_length[ended]),
            env_steps=env_steps,
            iteration=iteration,
            rollout_time=time.perf_counter() - start,
        )

    def _after_step(self, start: np.ndarray, prev_done: np.ndarray, term: np.ndarray, trunc: np.ndarray) -> None:
        """Sets, in place, ``start`` (whether the observation a step returned starts an episode) and ``prev_done``
        (whether the step ended one). Under next-step autoreset an env that ended an episode resets on the next
        step, whose observation then starts the next episode; under same-step autoreset it has already reset, so
        the returned observation starts the next episode."""
        if not self.same_step:
            # The step just taken was an autoreset step where the one before it ended an episode.
            np.copyto(start, prev_done)
            np.logical_or(term, trunc, out=prev_done)
            return
        if np.any(trunc):
            raise RuntimeError(
                "a same-step autoreset env truncated an episode: it gives no final observation to bootstrap the "
                "truncated return from. Make the env report its time limit as a termination, or use next-step "
                "autoreset (gymnasium's default).")
        np.logical_or(term, trunc, out=start)
        prev_done[:] = False

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
            obs, _, term, trunc, info = self.envs.step(action.cpu().numpy())
            self._after_step(start, prev_done, term, trunc)
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
    # A copy: the collector updates `start` in place after the step.
    return History(torch.from_numpy(start).unsqueeze(0).to(device, copy=True), state.to(device))
