"""Trains PPO with a separate actor and critic, each with its own optimizer and schedule.

One iteration:

1. The DataModule collects a rollout with the current policy (``act()``, no gradients).
2. Advantages and value targets are computed once, from the values the pre-update critic gave at
   collection (GAE). Both updates read these same targets, so they are independent of each other.
3. The critic is updated (``critic_epochs`` epochs of minibatches), then the actor (``actor_epochs``);
   ``update_order: actor_first`` swaps them. For the first ``critic_warmup`` iterations only the critic
   learns.

In the ``shared`` architecture one trunk feeds both heads and belongs to the actor optimizer. The actor
step minimizes ``policy loss - ent_coef * entropy + vf_coef * value loss`` with the value head frozen, so
the value loss reaches the trunk through the actor optimizer; the critic step minimizes the value loss
with the trunk frozen, so the critic optimizer trains the value head alone. Where the two losses pull the
trunk in opposite directions, ``gradient_surgery: pcgrad`` removes the conflicting components
(:func:`lit_rl.objectives.pcgrad`) instead of only weighting them. In ``detach`` the value head reads
detached trunk features: the value loss never reaches the trunk.
"""

import dataclasses
import time
import warnings
from collections import defaultdict
from typing import Any, Iterable, Iterator, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lit_rl.algos.compiled import CompiledSteps, check_compile_config, check_compile_placement
from lit_rl.algos.metrics import RunMetrics
from lit_rl.algos.resume import Resume
from lit_rl.algos.roles import ROLES, Placement, RoleSpec, Share, Stats
from lit_rl.algos.schedules import LinearDecay, constant
from lit_rl.algos.updater import RoleUpdater, Shuffler, count_optimizer_steps
from lit_rl.data.rollout import Rollout, flatten_valid, pad_time, to_sequences
from lit_rl.data.store import chunk_rows, in_chunks
from lit_rl.errors import ConfigError
from lit_rl.objectives import actor_objective, gae, normalize_advantages, value_loss
from lit_rl.nets import ActorCritic, Arch, Encoder, History, ImageLayout, Recurrent

UpdateOrder = Literal["critic_first", "actor_first"]
GradientSurgery = Literal["none", "pcgrad"]


class PPO(L.LightningModule):
    """Runs Proximal Policy Optimization (Schulman et al. 2017) with separate actor and critic optimizers.

    Args:
        actor_optimizer: Builds the actor's optimizer from its parameters.
        critic_optimizer: Builds the critic's optimizer from its parameters.
        actor_scheduler: LR schedule of the actor, stepped once per iteration. Default: linear
            annealing to 0 over the run when ``anneal_lr``, else constant.
        critic_scheduler: Likewise for the critic.
        anneal_lr: Anneal both learning rates linearly to 0 when no scheduler is given.
        arch: ``separate`` networks, a ``shared`` trunk with two heads, or ``detach`` (shared trunk, the
            value head reads detached features).
        hidden_sizes: Widths of the MLP trunk(s). After a CNN encoder the first is its dense layer (the PPG
            paper's IMPALA network: ``[256]``; the Nature CNN: ``[512]``).
        encoder: What turns observations into features (:mod:`lit_rl.nets.encoders`): ``auto`` (a CNN for
            ``uint8`` images: MinAtar's for frames under 32 pixels a side, IMPALA's for larger ones; flat
            otherwise), ``minatar``, ``nature``, ``impala`` or ``flat``. In ``separate`` each network has its own;
            in ``shared``/``detach`` the one encoder is part of the shared trunk.
        image_layout: Where a rank-3 image keeps its channels: ``channels_last`` (H x W x C), ``channels_first``
            (C x H x W), or ``auto``, which reads them beside two equal sides or at an end of at most 4, and
            refuses a shape it cannot tell (MinAtar Seaquest's 10x10x10), naming this setting.
        activation: ``tanh``, ``relu``, ``elu`` or ``silu``.
        log_std_init: Initial log std of the Gaussian policy (Box actions).
        gamma: Discount factor, in (0, 1].
        gae_lambda: GAE lambda, in (0, 1].
        clip_coef: PPO ratio clip epsilon, > 0.
        clip_value_loss: Clip value updates to ``old value +- clip_coef`` (PPO2 value clipping).
        ent_coef: Entropy bonus coefficient.
        vf_coef: Value loss coefficient.
        actor_max_grad_norm: Gradient-norm clip of the actor update; null for none.
        critic_max_grad_norm: Gradient-norm clip of the critic update; null for none.
        norm_adv: Normalize advantages per minibatch.
        target_kl: Stop the actor's epochs early once an epoch's mean approx KL exceeds this.
        update_epochs: Epochs over the rollout for both networks, unless set apart below.
        actor_epochs: Epochs of the actor (PPG's E_pi); defaults to ``update_epochs``.
        critic_epochs: Epochs of the critic (PPG's E_V); defaults to ``update_epochs``.
        num_minibatches: Minibatches per epoch; ``num_envs * num_steps`` must divide by it.
        update_order: ``critic_first`` (default, as verl) or ``actor_first``.
        critic_warmup: Iterations at the start in which only the critic learns.
        gradient_surgery: ``pcgrad`` projects away the conflicting parts of the policy and value
            gradients on a ``shared`` trunk (Yu et al. 2020); ``none`` adds them as weighted.
        recurrent: ``lstm`` or ``gru``: a history summarizer before the trunk(s), one per network in
            ``separate``, one shared (owned by the actor optimizer) in ``shared``/``detach``. Null: none.
        recurrent_size: Hidden width of the summarizer.
        bptt_length: Steps per training sequence: rollouts are cut into chunks of this length, each
            starting from the state the pre-update networks reach there (truncated BPTT). Null: whole
            rollouts. Minibatches are made of whole chunks, never of shuffled single steps.
        compile: Run each optimizer step (loss, gradients, clip, Adam) as one ``torch.compile`` graph
            (:mod:`lit_rl.algos.compiled`), the actor's and the critic's in one where they share no parameters;
            and the collectors' acting (:meth:`~lit_rl.nets.networks.ActorCritic.compile_acting`).
            Compiling takes 15-40 s at the start of a fit on a CPU, so it pays on long updates (the
            continuous-control configs turn it on); the same numbers as eager to float rounding. Refused (naming
            the setting) with a recurrent policy, gradient surgery, a role on several processes, mixed precision,
            or an optimizer other than Adam/AdamW.
    """

    # Per-iteration training metrics (logged as ``train/<name>``); stable, so dashboards and tests can rely on them.
    loss_metrics: tuple[str, ...] = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction",
                                     "grad_conflict", "grad_cosine")

    def __init__(
        self,
        *,
        actor_optimizer: OptimizerCallable = torch.optim.Adam,
        critic_optimizer: OptimizerCallable = torch.optim.Adam,
        actor_scheduler: Optional[LRSchedulerCallable] = None,
        critic_scheduler: Optional[LRSchedulerCallable] = None,
        anneal_lr: bool = True,
        arch: Arch = "separate",
        hidden_sizes: list[int] = [64, 64],
        encoder: Encoder = "auto",
        image_layout: ImageLayout = "auto",
        activation: str = "tanh",
        log_std_init: float = 0.0,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_coef: float = 0.2,
        clip_value_loss: bool = True,
        ent_coef: float = 0.01,
        vf_coef: float = 0.5,
        actor_max_grad_norm: Optional[float] = 0.5,
        critic_max_grad_norm: Optional[float] = 0.5,
        norm_adv: bool = True,
        target_kl: Optional[float] = None,
        update_epochs: int = 4,
        actor_epochs: Optional[int] = None,
        critic_epochs: Optional[int] = None,
        num_minibatches: int = 4,
        update_order: UpdateOrder = "critic_first",
        critic_warmup: int = 0,
        gradient_surgery: GradientSurgery = "none",
        recurrent: Optional[Recurrent] = None,
        recurrent_size: int = 128,
        bptt_length: Optional[int] = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["actor_optimizer", "critic_optimizer", "actor_scheduler", "critic_scheduler"])
        # The architecture built: save_hyperparameters records a subclass's own arguments, which may spell it otherwise.
        self.hparams.arch = arch
        self.automatic_optimization = False
        self.actor_optimizer = actor_optimizer
        self.critic_optimizer = critic_optimizer
        self.actor_scheduler = actor_scheduler
        self.critic_scheduler = critic_scheduler
        self.actor_epochs = update_epochs if actor_epochs is None else actor_epochs
        self.critic_epochs = update_epochs if critic_epochs is None else critic_epochs
        self._check_hparams()
        self.agent: Optional[ActorCritic] = None
        self.metrics = RunMetrics(self.loss_metrics)  # what each iteration and evaluation logs
        self.shuffler = Shuffler()  # minibatch orders, one stream per role
        self._one_process = Placement()  # where the roles run without a placement strategy: all here
        self.updaters: dict[str, RoleUpdater] = {}  # by role; made with the optimizers
        self.resume = Resume()  # the checkpoint's entries, and a resumed fit's config
        self.compiled: Optional[CompiledSteps] = None  # with model.compile; made with the optimizers

    # ------------------------------------------------------------------ configuration
    def _check_hparams(self) -> None:
        hp = self.hparams
        for key in ("gamma", "gae_lambda"):
            if not 0.0 < hp[key] <= 1.0:
                raise ConfigError(f"model.{key}: must lie in (0, 1], got {hp[key]}.")
        if hp.clip_coef <= 0:
            raise ConfigError(f"model.clip_coef: must be > 0, got {hp.clip_coef}.")
        for key, value in (("update_epochs", hp.update_epochs), ("actor_epochs", self.actor_epochs),
                           ("critic_epochs", self.critic_epochs), ("num_minibatches", hp.num_minibatches)):
            if value < 1:
                raise ConfigError(f"model.{key}: must be a positive integer, got {value}.")
        for key in ("ent_coef", "vf_coef", "critic_warmup"):
            if hp[key] < 0:
                raise ConfigError(f"model.{key}: must be >= 0, got {hp[key]}.")
        for key in ("actor_max_grad_norm", "critic_max_grad_norm", "target_kl"):
            if hp[key] is not None and hp[key] <= 0:
                raise ConfigError(f"model.{key}: must be > 0 or null, got {hp[key]}.")
        optimizers = {role: self.make_optimizer(role, [torch.nn.Parameter(torch.zeros(1))]) for role in ROLES}
        for role, optimizer in optimizers.items():
            for group in optimizer.param_groups:
                lr = group.get("lr", 1.0)
                if not (isinstance(lr, (int, float)) and lr > 0) and not (isinstance(lr, Tensor) and lr.item() > 0):
                    raise ConfigError(f"model.{role}_optimizer: the learning rate (init_args.lr) must be > 0, got {lr}.")
        if hp.bptt_length is not None and hp.bptt_length < 1:
            raise ConfigError(f"model.bptt_length: must be a positive integer or null, got {hp.bptt_length}.")
        if hp.compile:
            check_compile_config(hp, optimizers)
        ActorCritic.check_config(hp.arch, hp.hidden_sizes, hp.activation, hp.recurrent, hp.recurrent_size, hp.encoder,
                                 hp.image_layout)
        if hp.gradient_surgery != "none" and hp.arch != "shared":
            raise ConfigError(
                f"model.gradient_surgery: {hp.gradient_surgery!r} only acts where two losses share a trunk; with "
                f"model.arch={hp.arch!r} each loss has its own parameters. Use model.arch=shared or gradient_surgery=none."
            )

    @staticmethod
    def check_batch(num_envs: int, num_steps: int, num_minibatches: int, recurrent: Optional[str] = None,
                    bptt_length: Optional[int] = None) -> None:
        """Refuses a rollout of ``num_envs * num_steps`` samples (recurrent: of ``num_envs * num_steps /
        bptt_length`` sequences) that does not split into ``num_minibatches`` equal parts."""
        if recurrent is not None:
            length = bptt_length or num_steps
            if num_steps % length:
                raise ConfigError(f"model.bptt_length: data.num_steps={num_steps} is not a multiple of "
                                  f"bptt_length={length}; pick a divisor of num_steps, or null for whole rollouts.")
            units = num_envs * (num_steps // length)
            if units % num_minibatches:
                raise ConfigError(
                    f"model.num_minibatches: a recurrent rollout has data.num_envs * data.num_steps / bptt_length "
                    f"= {units} sequences, which do not split into {num_minibatches} equal minibatches; pick one of "
                    f"{[d for d in range(1, units + 1) if units % d == 0][:16]}, or change bptt_length or num_envs."
                )
            return
        batch = num_envs * num_steps
        if batch % num_minibatches:
            divisors = [d for d in range(1, min(batch, 64) + 1) if batch % d == 0]
            raise ConfigError(
                f"model.num_minibatches: data.num_envs * data.num_steps = {num_envs} * {num_steps} = {batch} "
                f"does not split into {num_minibatches} minibatches; pick one of {divisors} or change num_steps."
            )

    def check_data(self, datamodule: Any) -> None:
        """Checks what training needs of the datamodule's rollouts: they split into the minibatches, and reward
        normalization uses the discount being learned. ``setup`` calls it; the ``lit-rl`` command calls it
        before the trainer starts, so a bad combination leaves no run folder behind."""
        hp = self.hparams
        self.check_batch(datamodule.num_envs, datamodule.num_steps, hp.num_minibatches, hp.recurrent, hp.bptt_length)
        data_hp = getattr(datamodule, "hparams", {})
        if data_hp.get("normalize_reward") and data_hp.get("gamma", hp.gamma) != hp.gamma:
            raise ConfigError(f"data.gamma ({data_hp['gamma']}) differs from model.gamma ({hp.gamma}); reward "
                              "normalization must use the discount being learned. Give the datamodule model.gamma "
                              "(the lit-rl command links the two: set model.gamma alone).")

    uses_aux_head = False  # PPG adds an auxiliary value head to the policy trunk
    compile_backend = "inductor"  # torch.compile's backend for model.compile

    def build(self, observation_space: Any, action_space: Any) -> None:
        """Creates the networks for these spaces (once)."""
        if self.agent is None:
            hp = self.hparams
            self.agent = ActorCritic(observation_space, action_space, hp.hidden_sizes, hp.activation, hp.arch,
                                     hp.log_std_init, aux_head=self.uses_aux_head, recurrent=hp.recurrent,
                                     recurrent_size=hp.recurrent_size, encoder=hp.encoder,
                                     image_layout=hp.image_layout)
            if hp.compile:
                self.agent.compile_acting(self.compile_backend)

    def configure_model(self) -> None:
        datamodule = self.trainer.datamodule
        # The initial weights come from data.seed alone, whatever used the global RNG before: every process
        # of a distributed run, and a single process, build the same networks.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(getattr(datamodule, "seed", 0)))
            self.build(datamodule.single_observation_space, datamodule.single_action_space)

    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1 and not isinstance(self.trainer.strategy, Placement):
            raise ConfigError(
                f"trainer.strategy: {type(self.trainer.strategy).__name__} cannot train this module on "
                f"{self.trainer.world_size} processes (it updates two networks with their own optimizers, and "
                "rollouts must be gathered); use lit_rl.distributed.ActorCriticPlacement, e.g. "
                "--config configs/placement/data_parallel.yaml (every rank trains both networks) or another "
                "preset in configs/placement/.")
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and datamodule is not None:
            self.check_data(datamodule)
            hp = self.hparams
            placement = self.placement
            if hp.gradient_surgery != "none" and placement.group_size("actor") > 1:
                raise ConfigError(
                    f"model.gradient_surgery: {hp.gradient_surgery!r} is not linear, so it cannot be split over the "
                    f"{placement.group_size('actor')} ranks of the actor group (trainer.strategy.init_args.actor_ranks). "
                    "Give the actor one rank, or set gradient_surgery=none."
                )
        if stage == "fit":
            self.shuffler = Shuffler(int(getattr(datamodule, "seed", 0)))
            if self.hparams.compile:
                check_compile_placement(self, self.placement)

    def configure_optimizers(self) -> Any:
        """Makes one optimizer and schedule per role, in :data:`ROLES` order; tells the placement which optimizer
        is whose, and gives each role its :class:`~lit_rl.algos.updater.RoleUpdater`."""
        optimizers = [self.make_optimizer(role) for role in ROLES]
        self.placement.assign_optimizers(dict(zip(ROLES, optimizers)))
        self.updaters = {role: RoleUpdater(self, role, self.placement, self.shuffler, self.hparams[f"{role}_max_grad_norm"])
                         for role in ROLES}
        if self.hparams.compile:
            self.compiled = CompiledSteps(self, self.updaters, self.compile_backend)
        return optimizers, [self.make_scheduler(role, opt) for role, opt in zip(ROLES, optimizers)]

    def make_optimizer(self, role: str, params: Optional[Iterable[Tensor]] = None) -> Optimizer:
        """Makes ``role``'s optimizer, as configured, over ``params`` (default: the role's parameters)."""
        make = self.actor_optimizer if role == "actor" else self.critic_optimizer
        if params is None:
            assert self.agent is not None
            params = self.agent.actor_parameters() if role == "actor" else self.agent.critic_parameters()
        return make(params)

    def make_scheduler(self, role: str, optimizer: Optimizer) -> Any:
        """Makes ``role``'s LR schedule, as configured: the given scheduler, else linear annealing to 0 over the
        run's iterations (``anneal_lr``), else constant."""
        make = self.actor_scheduler if role == "actor" else self.critic_scheduler
        if make is not None:
            return make(optimizer)
        num_iterations = getattr(getattr(self.trainer, "datamodule", None), "num_iterations", None)
        if self.hparams.anneal_lr and num_iterations:
            return LambdaLR(optimizer, LinearDecay(num_iterations))
        return LambdaLR(optimizer, constant)

    # ------------------------------------------------------------------ acting
    def act(self, obs: Tensor, deterministic: bool = False, noise: Optional[Tensor] = None,
            history: Optional[History] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Returns actions, log-probs and values of the current policy, without gradients (:meth:`ActorCritic.act`)."""
        assert self.agent is not None
        return self.agent.act(obs, deterministic, noise, history)

    def value(self, obs: Tensor, history: Optional[History] = None) -> Tensor:
        assert self.agent is not None
        return self.agent.act_value(obs, history)

    def initial_state(self, batch: int) -> Optional[Tensor]:
        """Returns the recurrent state before any step (None without a summarizer)."""
        assert self.agent is not None
        return self.agent.initial_state(batch, self.device) if self.agent.recurrent else None

    # ------------------------------------------------------------------ learning
    def training_step(self, dataloader_iter: Iterator) -> None:
        """Runs one iteration: collect a rollout, gather every rank's, revalue it if it is lagged, compute the
        advantages, update each role, exchange the weights, add what the algorithm adds (:meth:`after_update`), step
        the LR schedules, log the metrics."""
        # next() collects the rollout here, with the current policy: Lightning's usual prefetching would collect
        # it one update too early. StopIteration at the budget ends training.
        rollout: Rollout = next(dataloader_iter)[0].to(self.device)
        rollout = self.placement.gather_rollout(rollout)  # every rank's shard: all compute the same advantages
        if rollout.policy_lag:  # collected with older weights (overlapped collection)
            rollout = self.revalue(rollout)
        batch = self.prepare_batch(rollout)
        before = {role: updater.steps for role, updater in self.updaters.items()}
        start = time.perf_counter()
        stats = self.update_roles(batch, rollout.iteration)
        self.sync_weights()
        # Until every rank has the new weights (in parallel mode: the slower group's update, plus the exchange).
        info = {"perf/update_time": time.perf_counter() - start}
        self.after_update(rollout, stats, info)
        taken = {role: updater.steps - before[role] for role, updater in self.updaters.items()}
        # Every rank logs the stats of the roles it did not run, too, and counts the run's optimizer steps.
        stats, run_steps = self.placement.merge_stats(stats, taken)
        count_optimizer_steps(self.trainer, run_steps - sum(taken.values()))
        with warnings.catch_warnings():
            # During critic warm-up the actor's schedule advances with the run while its optimizer does not step.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            for scheduler in self.lr_schedulers():
                scheduler.step()
        self.metrics.log_iteration(self, rollout, batch, stats, info)

    def role_specs(self) -> dict[str, RoleSpec]:
        """Declares each role's update: the critic's ``critic_epochs`` of :meth:`critic_loss`; the actor's
        ``actor_epochs`` of :meth:`actor_loss`, stopped early once an epoch's mean approx KL exceeds ``target_kl``.
        Each draws ``num_minibatches`` minibatches an epoch from its own shuffle stream."""
        hp = self.hparams
        return {"actor": RoleSpec(self.actor_loss, self.actor_epochs, "actor", hp.num_minibatches,
                                  target_kl=hp.target_kl),
                "critic": RoleSpec(self.critic_loss, self.critic_epochs, "critic", hp.num_minibatches)}

    def update_roles(self, batch: dict[str, Tensor], iteration: int) -> Stats:
        """Runs the update of each role this rank trains at ``iteration``, in :meth:`role_order`; compiled, the roles
        of a ``separate`` architecture step together (no parameter of one is read by the other's loss)."""
        learning = [role for role in self.role_order() if self.learns(role, iteration)]
        if self.compiled is not None and self.hparams.arch == "separate" and len(learning) > 1:
            stats = self.compiled.epochs(batch, self.role_specs(), learning)
            self.placement.wait_for_role()  # as the serial update does between its roles, on every rank
            return stats
        stats: Stats = defaultdict(list)
        for i, role in enumerate(self.role_order()):
            if i:
                self.placement.wait_for_role()  # serial mode: the second role starts when the first is done
            if role in learning:
                for key, values in self.update_role(role, batch).items():
                    stats[key] += values
        return stats

    def update_role(self, role: str, batch: dict[str, Tensor]) -> Stats:
        """Runs ``role``'s update on ``batch``, as :meth:`role_specs` declares it."""
        if self.compiled is not None:
            return self.compiled.epochs(batch, self.role_specs(), [role])
        return self.updaters[role].epochs(batch, self.role_specs()[role])

    def after_update(self, rollout: Rollout, stats: Stats, info: dict[str, float]) -> None:
        """Runs what the algorithm adds to an iteration after the roles' update and the weight exchange (PPO:
        nothing), adding to its ``stats`` and ``info``."""

    @property
    def env_steps(self) -> int:
        """Counts the env steps taken by the run, this iteration's rollout included: the datamodule's count (its
        one owner); without a datamodule, the loaded checkpoint's (for reading); else 0."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return int(getattr(datamodule, "env_steps", self.resume.env_steps))

    def role_order(self) -> tuple[str, ...]:
        """Orders the roles as they update: ``update_order``."""
        return ROLES[::-1] if self.hparams.update_order == "critic_first" else ROLES

    def learns(self, role: str, iteration: int) -> bool:
        """Says whether this rank trains ``role`` at ``iteration``: its placement gives it the role, and the actor
        waits out the critic warm-up."""
        return role in self.placement.roles and not (role == "actor" and iteration < self.hparams.critic_warmup)

    def sync_weights(self) -> None:
        """Gives every rank the actor from the actor's ranks and the critic from the critic's."""
        assert self.agent is not None
        self.placement.sync_weights({"actor": self.agent.actor_parameters(), "critic": self.agent.critic_parameters()})

    @torch.no_grad()
    def revalue(self, rollout: Rollout) -> Rollout:
        """Gives a rollout collected by an older policy ``values`` and ``last_value`` from the current critic.

        Advantages, returns and the value clip then come from the critic being updated, as when collection
        and update take turns; the log-probs stay those of the policy that acted (the PPO ratio is the current
        policy over the behaviour policy). A recurrent critic runs from the state recorded at collection. The
        critic sees at most :data:`~lit_rl.data.store.FORWARD_CHUNK` observations at a time (a recurrent one: spans
        of whole steps, the state carried from one span to the next).
        """
        assert self.agent is not None
        T, N = rollout.num_steps, rollout.num_envs
        if self.agent.recurrent:
            assert rollout.initial_state is not None
            spans, state, rows = [], rollout.initial_state, chunk_rows(N)
            for obs, starts in zip(rollout.obs.split(rows), rollout.starts.split(rows)):
                history = History(starts, state)
                spans.append(self.agent(obs, history)[1].view(len(starts), N))
                assert history.final_state is not None
                state = history.final_state
            values = torch.cat(spans)
            last = self.agent.value(rollout.last_obs.unsqueeze(0), History(rollout.last_start.unsqueeze(0), state))
        else:
            values = in_chunks(self.agent.value, rollout.obs.flatten(0, 1)).view(T, N)
            last = in_chunks(self.agent.value, rollout.last_obs)
        return dataclasses.replace(rollout, values=values, last_value=last)

    def prepare_batch(self, rollout: Rollout) -> dict[str, Tensor]:
        """Computes advantages and returns from the pre-update critic, with every time-major field of the rollout: the
        valid samples, flat; or, for a recurrent policy, sequences of ``bptt_length`` steps with their initial
        states (:meth:`sequences`)."""
        hp = self.hparams
        advantages, returns = gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                  rollout.truncated, hp.gamma, hp.gae_lambda)
        fields = {**{name: getattr(rollout, name) for name in rollout.time_fields()},
                  "advantages": advantages, "returns": returns}
        assert self.agent is not None
        if self.agent.recurrent:
            assert rollout.initial_state is not None
            return self.sequences(fields, rollout.initial_state, hp.bptt_length or rollout.num_steps)
        valid = fields.pop("valid")
        del fields["starts"]
        return flatten_valid(fields, valid)

    @torch.no_grad()
    def sequences(self, fields: dict[str, Tensor], initial_state: Tensor, length: int) -> dict[str, Tensor]:
        """Cuts ``[T, N, ...]`` fields into sequences of ``length`` steps (:func:`~lit_rl.data.rollout.to_sequences`),
        with ``state``: each sequence's initial state, as the current networks reach it from ``initial_state``
        (for the first chunk, that one)."""
        assert self.agent is not None
        chunks = -(-fields["valid"].shape[0] // length)
        obs, starts = pad_time(fields["obs"], chunks * length), pad_time(fields["starts"], chunks * length)
        states, state = [], initial_state
        for k in range(chunks):
            states.append(state)
            if k + 1 < chunks:  # run this chunk to get the next one's state
                history = History(starts[k * length:(k + 1) * length], state)
                self.agent(obs[k * length:(k + 1) * length], history)
                assert history.final_state is not None
                state = history.final_state
        return {**to_sequences(fields, length), "state": torch.stack(states).flatten(0, 1)}

    # ------------------------------------------------------------------ losses
    def critic_loss(self, share: Share) -> tuple[Tensor, dict[str, Tensor]]:
        """Computes ``vf_coef * value loss`` of the value network on a share of a minibatch."""
        assert self.agent is not None
        mb = share.data
        new_values = self.agent.value(mb["obs"], share.history)
        loss_value, _ = value_loss(new_values, mb["values"], mb["returns"], self._value_clip())
        return share.weight * self.hparams.vf_coef * loss_value, {"value_loss": loss_value.detach()}

    def actor_loss(self, share: Share) -> tuple[Any, dict[str, Tensor]]:
        """Computes ``-clipped surrogate - ent_coef * entropy`` (+ ``vf_coef * value loss`` on a shared trunk), with the
        advantages normalized over the whole minibatch (also when ranks share it).

        With gradient surgery on a shared trunk the loss comes back as its two terms, policy and value.
        """
        assert self.agent is not None
        hp = self.hparams
        mb, weight = share.data, share.weight
        advantages = normalize_advantages(mb["advantages"], share.whole("advantages")) if hp.norm_adv else mb["advantages"]
        if self.agent.shares_trunk:
            dist, new_values = self.agent(mb["obs"], share.history)
        else:
            dist, new_values = self.agent.dist(mb["obs"], share.history), None
        terms, stats = actor_objective(dist, mb["actions"], mb["logprobs"], advantages, hp.clip_coef, new_values,
                                       mb["values"], mb["returns"], self._value_clip())
        loss = weight * (terms["policy"] - hp.ent_coef * terms["entropy"])
        if "value" in terms:
            loss = self.combine(loss, weight * hp.vf_coef * terms["value"])
        return loss, stats

    def combine(self, *terms: Tensor) -> Any:
        """Sums loss terms that share the trunk, or keeps them apart for gradient surgery."""
        return terms if self.hparams.gradient_surgery != "none" else sum(terms)

    def _value_clip(self) -> Optional[float]:
        return self.hparams.clip_coef if self.hparams.clip_value_loss else None

    @property
    def placement(self) -> Placement:
        """Says where the roles run: the :class:`~lit_rl.distributed.ActorCriticPlacement` strategy when training runs
        under it, else one process holding every role."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        return strategy if isinstance(strategy, Placement) else self._one_process

    # ------------------------------------------------------------------ metrics and checkpoints
    def on_train_start(self) -> None:
        self.metrics.start(self.trainer.datamodule.env_steps if self.trainer.datamodule else 0)
        if self.trainer.ckpt_path:
            self.resume.apply_config(self)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.metrics.log_evaluation(self, "val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.metrics.log_evaluation(self, "test", batch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.resume.save(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.resume.load(self, checkpoint)
