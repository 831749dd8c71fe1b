"""Splits the run's envs over the processes that collect, hands the module one rollout per iteration (collected in
turn with the update, overlapped with it, or none on a process that collects nothing) and evaluates the policy."""

import dataclasses
import math
from typing import Any, Iterator, Literal, Optional

import gymnasium as gym
import lightning as L
import torch

from lit_rl.data.collector import Collector, Policy
from lit_rl.data.normalization import Normalization
from lit_rl.data.overlap import CollectorSpec, OverlappedCollection, check_overlap_keys
from lit_rl.data.rollout import NoRollout, Rollout, Schedule
from lit_rl.envs.make import EnvSpec, VectorizationMode, make_envs
from lit_rl.errors import ConfigError

Collection = Literal["sync", "overlapped"]


class RolloutDataModule(L.LightningDataModule):
    """Steps vector envs with the module's current policy, one rollout per training iteration, and evaluates it.

    ``num_envs`` is the run's: with several processes that collect, each steps ``num_envs / processes`` of
    them (:attr:`envs_per_process`) and the rollouts are gathered, so a placement preset does not change
    the experiment. The processes that collect are the placement's rollout ranks (default: every process);
    one that collects nothing yields a :class:`~lit_rl.data.rollout.NoRollout` per iteration.

    Normalization statistics stay fixed while a rollout is collected and take the whole rollout's moments at
    its end, merged over all processes (:class:`lit_rl.data.normalization.Normalization`, their owner), so
    every layout normalizes alike and checkpoints hold the run's statistics. The first rollout runs with the
    initial statistics (mean 0, variance 1); the first observation of each later rollout was normalized when
    the previous rollout ended. Evaluation envs apply the training statistics and never update them.

    Args:
        env_id: A registered gymnasium id; ``module:Name-v0`` imports ``module`` to register it.
        env_kwargs: Keyword arguments for ``gymnasium.make_vec`` / the env constructor.
        num_envs: Parallel environments of the run, over all processes; it must divide by their number.
        num_steps: Steps per env in one rollout; a rollout has ``num_envs * num_steps`` env steps.
        total_timesteps: The env-step budget, over all processes. Training stops exactly there: the last
            rollout is shorter when the budget is not a multiple of the steps of one iteration.
        seed: Env ``i`` of the run (the ``k``-th process that collects holds envs ``k * envs_per_process``
            onwards) is seeded with ``seed + i``, however the envs are split; also the run's torch seed.
        vectorization_mode: ``sync``, ``async`` (one process per env), ``vector_entry_point`` (the env's
            native vectorized implementation) or ``auto`` (native where the env registers one, else sync).
        hide_observation: Indices of observation components to remove (a 1-D Box) to make the task partially
            observable, e.g. ``[1, 3]``: CartPole without velocities (:class:`lit_rl.envs.wrappers.MaskObservation`).
        normalize_observation: Running mean/std normalization of observations (gymnasium's wrapper).
        normalize_reward: Scale rewards by the running std of the discounted return (gymnasium's wrapper, the
            return reset at every episode end, truncation included: :class:`lit_rl.envs.wrappers.NormalizeReward`).
        clip_observation: Clip (normalized) observations to ``[-c, c]``.
        clip_reward: Clip (normalized) rewards to ``[-c, c]``.
        gamma: Discount of the return whose std scales rewards; keep it equal to ``model.gamma``.
        eval_episodes: Episodes for ``validate`` / ``test`` (greedy actions).
        eval_envs: Envs that run those episodes in parallel.
        record_video: Record evaluation episodes of the first eval env (needs ``moviepy``).
        video_dir: Where videos go; defaults to the logger's folder.
        collection: ``sync`` (default): a rollout is collected when the module asks for it, with the current
            policy, while the update waits. ``overlapped``: collector processes collect the next rollouts while
            the module updates on this one, with weights ``policy_lag`` updates old (:mod:`lit_rl.data.overlap`).
        policy_lag: Overlapped only (default 1): rollout ``j`` is collected with the weights after update
            ``j - policy_lag``, exactly. 0 collects with the newest weights (no overlap; the synchronous run).
        num_collectors: Overlapped only (default 1): collector processes of each process that collects; its
            share of ``num_envs`` must divide by it.
        collector_timeout: Overlapped only (default 300): seconds without a rollout after which the run stops
            with an error naming the collector.
    """

    def __init__(
        self,
        *,
        env_id: str = "CartPole-v1",
        env_kwargs: Optional[dict[str, Any]] = None,
        num_envs: int = 4,
        num_steps: int = 128,
        total_timesteps: int = 500_000,
        seed: int = 1,
        vectorization_mode: VectorizationMode = "auto",
        hide_observation: Optional[list[int]] = None,
        normalize_observation: bool = False,
        normalize_reward: bool = False,
        clip_observation: Optional[float] = None,
        clip_reward: Optional[float] = None,
        gamma: float = 0.99,
        eval_episodes: int = 10,
        eval_envs: int = 10,
        record_video: bool = False,
        video_dir: Optional[str] = None,
        collection: Collection = "sync",
        policy_lag: Optional[int] = None,
        num_collectors: Optional[int] = None,
        collector_timeout: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.env_spec = EnvSpec(**{f.name: self.hparams[f.name] for f in dataclasses.fields(EnvSpec)})
        for key, value in (("num_envs", num_envs), ("num_steps", num_steps), ("total_timesteps", total_timesteps),
                           ("eval_episodes", eval_episodes), ("eval_envs", eval_envs)):
            if value < 1:
                raise ConfigError(f"data.{key}: must be a positive integer, got {value}.")
        if total_timesteps % num_envs:
            raise ConfigError(
                f"data.total_timesteps: {total_timesteps} is not a multiple of data.num_envs={num_envs}, so the "
                f"run could not stop exactly at the budget; use e.g. {total_timesteps - total_timesteps % num_envs}."
            )
        self.policy_lag, self.num_collectors, self.collector_timeout = check_overlap_keys(
            collection, policy_lag, num_collectors, collector_timeout, num_envs)
        self.env_id = env_id
        self.env_kwargs = self.env_spec.env_kwargs
        self.num_envs = num_envs
        self.num_steps = num_steps
        self.total_timesteps = total_timesteps
        self.seed = seed
        self.env_steps = 0
        self.iteration = 0
        self.normalization = Normalization(self.env_spec.normalized)
        self.collector: Optional[Collector] = None
        self.eval_collector: Optional[Collector] = None
        # Overlapped collection, or a process that collects nothing: envs built here for their spaces and the
        # shapes of the run's normalization statistics, never stepped (the collector processes step theirs),
        # and the collector processes themselves while a fit runs.
        self.reference_envs: Optional[gym.vector.VectorEnv] = None
        self.overlap: Optional[OverlappedCollection] = None

    # ----------------------------------------------------------------- environments
    def collector_slot(self, trainer: Optional[L.Trainer] = None) -> tuple[Optional[int], int]:
        """Gives ``(index of this process among those that collect, or None where it collects nothing; how many
        collect)``: the placement's rollout ranks (:meth:`lit_rl.distributed.Placement.collector_slot`), else
        every process. ``trainer``: the one this datamodule is not attached to yet (default: its own)."""
        trainer = trainer or self.trainer
        if trainer is None:
            return 0, 1
        slot = getattr(trainer.strategy, "collector_slot", None)
        return slot() if slot is not None else (trainer.global_rank, trainer.world_size)

    @property
    def envs_per_process(self) -> int:
        """Counts the envs this process steps: its share of ``num_envs`` (0 where it collects nothing)."""
        index, count = self.collector_slot()
        return 0 if index is None else self.num_envs // count

    @property
    def first_env(self) -> int:
        """Gives the run's index of this process's first env."""
        index, _ = self.collector_slot()
        return (index or 0) * self.envs_per_process

    def check_processes(self, trainer: Optional[L.Trainer] = None) -> None:
        """Raises a ConfigError unless the run's envs split evenly over the processes that collect (and,
        overlapped, each process's share over its collectors). The ``lit-rl`` command checks before the trainer
        starts."""
        n, (_, p) = self.num_envs, self.collector_slot(trainer)
        if n % p:
            near = " or ".join(str(k) for k in (n - n % p, n - n % p + p) if k > 0)
            raise ConfigError(
                f"data.num_envs: {n} envs cannot be split evenly over the {p} processes that collect "
                f"(trainer.num_nodes x trainer.devices, or the placement's rollout_ranks); data.num_envs counts "
                f"the run's envs, so set it to a multiple of {p}, e.g. {near}."
            )
        c = self.num_collectors
        if self.hparams.collection == "overlapped" and (n // p) % c:
            raise ConfigError(
                f"data.num_collectors: each of the {p} processes that collect steps {n // p} of data.num_envs={n} "
                f"envs, which cannot be split evenly over {c} collector processes; use a divisor of {n // p}, or "
                f"set data.num_envs to a multiple of {p * c}.")

    def make_envs(self, num_envs: int, training: bool, video_folder: Optional[str] = None) -> gym.vector.VectorEnv:
        """Builds the run's wrapped vector env with its normalization statistics (:func:`lit_rl.envs.make.make_envs`).
        Nothing is reset or stepped here."""
        return make_envs(self.env_spec, num_envs, training, self.normalization.statistics, video_folder)

    @property
    def single_observation_space(self) -> gym.Space:
        return self._any_envs().single_observation_space

    @property
    def single_action_space(self) -> gym.Space:
        return self._any_envs().single_action_space

    def _any_envs(self) -> gym.vector.VectorEnv:
        envs = self.training_envs or (self.eval_collector.envs if self.eval_collector is not None else None)
        if envs is None:
            raise RuntimeError("RolloutDataModule.setup() has not built any environments yet")
        return envs

    @property
    def training_envs(self) -> Optional[gym.vector.VectorEnv]:
        """Gives the training envs: the collector's, or the reference envs (None before setup)."""
        return self.collector.envs if self.collector is not None else self.reference_envs

    def setup(self, stage: str) -> None:
        from lit_rl.nets import check_spaces

        if stage == "fit":
            self.check_processes()
        if stage == "fit" and self.training_envs is None:
            if self.hparams.collection == "overlapped" or not self.envs_per_process:
                self.reference_envs = self.make_envs(1, training=True)
            else:
                self.collector = Collector(self.make_envs(self.envs_per_process, training=True),
                                           env_offset=self.first_env, noise_seed=self.seed)
            envs = self.training_envs
            assert envs is not None
            check_spaces(envs.single_observation_space, envs.single_action_space, *self._model_encoder())
        if self.eval_collector is None:
            self.eval_collector = Collector(self.make_envs(min(self.hparams.eval_envs, self.hparams.eval_episodes),
                                                           training=False, video_folder=self._video_folder()))
            check_spaces(self.eval_collector.envs.single_observation_space,
                         self.eval_collector.envs.single_action_space, *self._model_encoder())

    def _model_encoder(self) -> tuple[str, str]:
        """Gives the attached model's ``encoder`` and ``image_layout``, so that ``setup`` refuses frames the
        model's networks cannot read before anything of the run is written; ``flat`` and ``auto`` without a model."""
        hparams = getattr(getattr(self.trainer, "lightning_module", None), "hparams", None) if self.trainer else None
        hparams = hparams or {}
        return hparams.get("encoder", "flat"), hparams.get("image_layout", "auto")

    def _video_folder(self) -> Optional[str]:
        if not self.hparams.record_video:
            return None
        if self.hparams.video_dir:
            return self.hparams.video_dir
        from lit_rl.run.loggers import run_dir

        log_dir = run_dir(self.trainer) if self.trainer is not None else None
        return f"{log_dir or '.'}/videos"

    def teardown(self, stage: str) -> None:
        if self.overlap is not None:
            self.overlap.close()
            self.overlap = None
        for envs in (self.training_envs, self.eval_collector.envs if self.eval_collector is not None else None):
            if envs is not None:
                envs.close()
        # The statistics outlive the envs: a validate or test after the fit normalizes with the run's.
        self.normalization.drop_pending()
        self.collector = self.eval_collector = self.reference_envs = None

    # ----------------------------------------------------------------- rollouts
    @property
    def steps_per_iteration(self) -> int:
        """Counts the env steps of one iteration, over all processes."""
        return self.num_envs * self.num_steps

    @property
    def num_iterations(self) -> int:
        """Counts the run's iterations: those done, plus those the rest of the budget takes at the current
        ``num_envs * num_steps`` (a resumed run may have changed either, or the budget)."""
        return self.iteration + math.ceil(max(0, self.total_timesteps - self.env_steps) / self.steps_per_iteration)

    def rollouts(self, policy: Policy) -> Iterator[Rollout | NoRollout]:
        """Yields rollouts collected with ``policy`` until ``total_timesteps`` env steps are taken.

        Each rollout is collected when it is asked for, so it always comes from the current policy; in
        overlapped mode (:meth:`overlapped_rollouts`) with the policy ``policy_lag`` updates back. A process that
        collects nothing (a learner beside the placement's rollout ranks) yields each iteration's index and env
        count as a :class:`NoRollout`, in step with the processes that collect, and takes its part (no moments)
        in merging the normalization statistics.
        """
        if self.envs_per_process and self.hparams.collection == "overlapped":
            yield from self.overlapped_rollouts(policy)
            return
        collector = self.collector if self.envs_per_process else None
        assert collector is not None or not self.envs_per_process, "setup('fit') builds the collector"
        if collector is not None:
            collector.reset(self.reset_seed(self.first_env))
        for iteration, steps, env_steps in self.schedule():
            self.env_steps = env_steps
            rollout = (collector.collect(policy, steps, env_steps=env_steps, iteration=iteration)
                       if collector is not None else NoRollout(iteration, env_steps))
            self.normalization.commit(self._sum_over_processes)
            self._next_iteration()
            yield rollout
        self._stop_at_budget()

    def overlapped_rollouts(self, module: Any) -> Iterator[Rollout]:
        """Yields the same rollouts as :meth:`rollouts` (envs, seeds, noise, budget), collected by
        ``num_collectors`` processes while the module learns (:meth:`OverlappedCollection.rollouts`). A rollout
        is counted when it is taken, and the collectors stop with the fit (a rollout in flight is dropped)."""
        assert self.reference_envs is not None and module.agent is not None
        n = self.envs_per_process // self.num_collectors
        offsets = [self.first_env + c * n for c in range(self.num_collectors)]
        specs = [CollectorSpec(c, self.env_spec, n, offset, self.reset_seed(offset), self.seed, self.schedule(),
                               self.policy_lag, self.iteration)
                 for c, offset in enumerate(offsets)]
        self.overlap = OverlappedCollection(specs, module.agent, self.normalization, self.policy_lag,
                                            self.collector_timeout)
        try:
            for rollout, moments in self.overlap.rollouts(self.schedule(), module.agent, self.normalization):
                self.env_steps = rollout.env_steps
                self.normalization.commit_moments(moments, self._sum_over_processes)
                self._next_iteration()
                yield rollout
            self._stop_at_budget()
        finally:
            if self.overlap is not None:
                self.overlap.close()
                self.overlap = None

    def _next_iteration(self) -> None:
        """Counts the iteration just collected, its moments folded in; stops training at the budget."""
        self.iteration += 1
        self._stop_at_budget()

    def schedule(self) -> Schedule:
        """Lists the rollouts left from the current count: ``num_steps`` steps each until the budget, the last
        shorter."""
        return Schedule(self.iteration, self.env_steps, self.num_envs, self.num_steps, self.total_timesteps)

    def reset_seed(self, first_env: int) -> int:
        """Gives the seed of env ``first_env`` of the run (env ``i`` gets ``seed + i``); a resumed run starts fresh
        episodes, seeded apart from those the run already saw."""
        return self.seed + first_env + self.iteration * 7919

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sums ``tensor`` over every process, through the strategy's collectives (one process: itself)."""
        if self.trainer is None:
            return tensor
        strategy = self.trainer.strategy
        return strategy.reduce(tensor.to(strategy.root_device), reduce_op="sum").cpu()

    def _stop_at_budget(self) -> None:
        """Stops training at the env-step budget, not an epoch count (also for a resumed, finished run)."""
        if self.env_steps >= self.total_timesteps and self.trainer is not None:
            self.trainer.should_stop = True

    def train_dataloader(self) -> "_Stream":
        return _Stream(lambda: self.rollouts(self.trainer.lightning_module))

    def _eval_batches(self) -> "_Stream":
        def episodes() -> Iterator[dict[str, torch.Tensor]]:
            assert self.eval_collector is not None
            returns, lengths = self.eval_collector.evaluate(
                self.trainer.lightning_module, self.hparams.eval_episodes, seed=self.seed + 1_000_000
            )
            yield {"episode_returns": torch.as_tensor(returns), "episode_lengths": torch.as_tensor(lengths)}

        return _Stream(episodes)

    val_dataloader = _eval_batches
    test_dataloader = _eval_batches

    # ----------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "iteration": self.iteration, **self.normalization.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.env_steps = int(state_dict["env_steps"])
        self.iteration = int(state_dict["iteration"])
        left = self.total_timesteps - self.env_steps
        if left > 0 and left % self.num_envs and self.trainer is not None and self.trainer.state.fn == "fit":
            fits = self.env_steps + -(-left // self.num_envs) * self.num_envs
            raise ConfigError(
                f"data.num_envs: the checkpoint has taken {self.env_steps} env steps; the {left} left of "
                f"data.total_timesteps={self.total_timesteps} do not split over {self.num_envs} envs, so the run "
                f"could not stop exactly at the budget. Set data.total_timesteps to e.g. {fits}, or num_envs to "
                f"a divisor of {left}.")
        fn = self.trainer.state.fn if self.trainer is not None else None
        if fn in ("validate", "test") and "obs_rms" in state_dict and not self.env_spec.normalize_observation:
            # The policy was trained on normalized observations: raw ones would give it other inputs, and the
            # evaluation's returns would be wrong without a sign.
            raise ConfigError("data.normalize_observation: the checkpoint's policy was trained on normalized "
                              "observations (it holds their statistics); set data.normalize_observation=true (and "
                              "the run's clip_observation) to evaluate it as it was trained.")
        self.normalization.load_state_dict(state_dict)


class _Stream:
    """Wraps a generator function as an iterable Lightning can take as a dataloader: each ``iter()`` starts
    ``make()`` anew."""

    def __init__(self, make: Any) -> None:
        self.make = make

    def __iter__(self) -> Iterator[Any]:
        return iter(self.make())
