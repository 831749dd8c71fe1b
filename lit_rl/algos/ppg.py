"""Trains Phasic Policy Gradient (Cobbe et al. 2020, arXiv:2009.04416): PPO plus an auxiliary phase.

PPG extends :class:`~lit_rl.algos.ppo.PPO`; it adds one step to an iteration (``after_update()``).

1. **Policy phase.** Every iteration is a PPO iteration, with ``actor_epochs`` (E_pi) and
   ``critic_epochs`` (E_V) apart. Each rollout then goes into the :class:`~lit_rl.data.store.RolloutStore`.
2. **Auxiliary phase**, after every ``n_pi`` (N_pi) iterations, over the stored rollouts:

   - value targets are recomputed for the stored data with the current critic (GAE(lambda) returns;
     the reference implementation reuses the targets of the policy phase, computed with older critics);
   - the policy's distribution is frozen as ``pi_old``;
   - ``aux_epochs`` (E_aux) epochs of minibatches, each one step of the actor optimizer on
     ``L_joint = L_aux + beta_clone * KL(pi_old || pi)`` (the paper's joint loss; ``L_aux`` is the
     squared error of the aux value head on the policy trunk), and one step of the critic optimizer on
     the value network's squared error (``L_value``), in ``update_order``.

The auxiliary phase's value losses are ``0.5 * MSE`` with weight 1, as in the reference implementation (its
``vf_aux`` and ``vf_true``), not ``vf_coef``; the stored observations and rewards keep the normalization
statistics of the iteration that collected them.

Architectures (``arch``, the names PPO uses): ``separate`` (the paper's "dual": a policy network with the aux
head, and a separate value network),
``shared`` (one trunk, policy head, aux head and value head; the value loss reaches the trunk through
the actor step, where ``gradient_surgery: pcgrad`` can resolve its conflict with the policy's losses) and
``detach`` (one trunk; the value head reads detached features). The actor optimizer owns the trunk,
the policy head and the aux head; the critic optimizer owns the value network (in ``shared`` and
``detach``, the value head).

Checkpoints hold the phase counter and, with ``store_in_checkpoint`` (default), the stored rollouts: a
run resumed in the middle of a policy phase ends that phase at the same iteration, over the same data.
Without them, the phase still ends at the same iteration, but its auxiliary phase sees only the rollouts
collected since the resume.
"""

import time
from collections import defaultdict
from typing import Any, Literal, Optional

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_rl.algos.ppo import PPO
from lit_rl.algos.roles import ROLES, RoleSpec, Share, Stats
from lit_rl.algos.updater import interleaved_epochs
from lit_rl.data.rollout import Rollout, flatten_valid, pad_time, to_sequences
from lit_rl.data.store import RolloutStore, available_memory, format_bytes, in_chunks
from lit_rl.errors import ConfigError
from lit_rl.objectives import aux_value_loss, clone_kl, gae
from lit_rl.nets import History

PPGArch = Literal["separate", "shared", "detach", "dual"]  # dual: the PPG paper's name of separate
AuxMinibatch = Literal["sequences", "samples"]


class PPG(PPO):
    """Runs Phasic Policy Gradient. The defaults are the paper's (see configs/ppg/defaults.yaml).

    Args:
        arch: ``separate``, ``shared`` or ``detach`` (see the module docstring).
        n_pi: Policy-phase iterations per auxiliary phase (N_pi).
        aux_epochs: Epochs of the auxiliary phase over the stored rollouts (E_aux); 0 turns it off (PPO).
        beta_clone: Weight of the behaviour-cloning term ``KL(pi_old || pi)`` in the auxiliary phase.
        aux_minibatch: ``sequences``: minibatches of whole per-env rollout sequences (as the reference
            implementation; what recurrent policies need); ``samples``: of shuffled single steps.
        aux_minibatch_size: Sequences per auxiliary minibatch (the reference's ``aux_mbsize``, 4); with
            ``aux_minibatch: samples``, a minibatch holds as many single steps as that many sequences have
            (``aux_minibatch_size * data.num_steps``). An auxiliary epoch has ``ceil(stored / size)``
            minibatches of near-equal size.
        aux_memory_fraction: Refuse, at start, a setting whose store and auxiliary phase would need more
            than this fraction of the memory available on the training device.
        store_in_checkpoint: Save the stored rollouts in checkpoints (see the module docstring).
        actor_epochs: E_pi.
        critic_epochs: E_V.
        **kwargs: Everything else is PPO's (optimizers, gamma, clip_coef, ...).
    """

    loss_metrics = (*PPO.loss_metrics, "aux_value_loss", "bc_kl", "aux_phase_value_loss")
    uses_aux_head = True

    def __init__(
        self,
        *,
        arch: PPGArch = "separate",
        n_pi: int = 32,
        aux_epochs: int = 6,
        beta_clone: float = 1.0,
        aux_minibatch: AuxMinibatch = "sequences",
        aux_minibatch_size: int = 4,
        aux_memory_fraction: float = 0.5,
        store_in_checkpoint: bool = True,
        actor_epochs: Optional[int] = 1,
        critic_epochs: Optional[int] = 1,
        **kwargs: Any,
    ) -> None:
        if arch == "dual":  # configs and checkpoints that use the paper's name keep working
            rank_zero_warn("model.arch: 'dual' (the PPG paper's name) is now called 'separate', as in PPO; using "
                           "'separate'. Set model.arch=separate to silence this.")
            arch = "separate"
        if arch not in ("separate", "shared", "detach"):
            raise ConfigError(f"model.arch: {arch!r} is not one of ['separate', 'shared', 'detach'].")
        super().__init__(arch=arch, actor_epochs=actor_epochs,
                         critic_epochs=critic_epochs, **kwargs)
        for key, value, low in (("n_pi", n_pi, 1), ("aux_epochs", aux_epochs, 0), ("aux_minibatch_size", aux_minibatch_size, 1)):
            if value < low:
                raise ConfigError(f"model.{key}: must be an integer >= {low}, got {value}.")
        if beta_clone < 0:
            raise ConfigError(f"model.beta_clone: must be >= 0, got {beta_clone}.")
        if kwargs.get("recurrent") is not None and aux_minibatch != "sequences":
            raise ConfigError("model.aux_minibatch: a recurrent PPG (model.recurrent set) trains on whole sequences; "
                              "set aux_minibatch=sequences.")
        if not 0 < aux_memory_fraction <= 1:
            raise ConfigError(f"model.aux_memory_fraction: must lie in (0, 1], got {aux_memory_fraction}.")
        self.store = RolloutStore()
        self.phase_iteration = 0  # policy-phase iterations since the last auxiliary phase
        self.policy_phase_time = 0.0  # their update seconds
        self.aux_phases = 0

    # ------------------------------------------------------------------ configuration
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and datamodule is not None and self.hparams.aux_epochs:
            envs = datamodule.num_envs  # the run's: every process stores the gathered rollouts
            self.check_memory(envs, datamodule.num_steps, datamodule.single_observation_space,
                              datamodule.single_action_space)

    def check_memory(self, num_envs: int, num_steps: int, observation_space: Any, action_space: Any) -> int:
        """Returns the auxiliary phase's peak memory in bytes; raises a ConfigError where it would not fit."""
        from lit_rl.nets import PolicyHead
        from lit_rl.nets.encoders import activation_elements, check_encoder

        hp = self.hparams
        dist_params = PolicyHead(1, action_space).num_params
        # Floats of the recurrent state: an LSTM's h and c (a GRU's h), one summarizer per network in separate.
        state_size = 0 if hp.recurrent is None else (
            hp.recurrent_size * (2 if hp.recurrent == "lstm" else 1) * (2 if hp.arch == "separate" else 1))
        # The auxiliary phase runs the policy's encoder and, in separate, the critic's.
        total, largest = activation_elements(check_encoder(observation_space, hp.encoder, layout=hp.image_layout),
                                              observation_space)
        encoders = 2 if hp.arch == "separate" else 1
        needed = RolloutStore.estimate_bytes(hp.n_pi, num_envs, num_steps, observation_space, dist_params,
                                             -(-hp.n_pi * num_envs // hp.aux_minibatch_size), state_size,
                                             (encoders * total, largest))
        device = self.device if self._trainer is None else self.trainer.strategy.root_device
        budget = hp.aux_memory_fraction * available_memory(device)
        if needed > budget:
            raise ConfigError(
                f"model.n_pi: the PPG store of {hp.n_pi} rollouts of {num_envs} envs x {num_steps} steps of "
                f"observations {observation_space} needs about {format_bytes(needed)} at the auxiliary phase, more than "
                f"model.aux_memory_fraction={hp.aux_memory_fraction} of the {format_bytes(budget / hp.aux_memory_fraction)} "
                f"available on {device}. Lower model.n_pi, data.num_envs or data.num_steps."
            )
        return needed

    # ------------------------------------------------------------------ learning
    def after_update(self, rollout: Rollout, stats: Stats, info: dict[str, float]) -> None:
        """Stores the rollout of the PPO iteration (the policy phase); after every ``n_pi`` of them, runs the
        auxiliary phase."""
        self.policy_phase_time += info["perf/update_time"]
        hp = self.hparams
        if hp.aux_epochs:
            self.store.add(rollout)
        self.phase_iteration += 1
        if self.phase_iteration >= hp.n_pi:  # >=: a run resumed with a smaller n_pi ends its phase now
            start = time.perf_counter()
            if hp.aux_epochs and len(self.store):
                # The policy phase ended with the weight exchange, so every rank computes the targets with
                # the new critic and pi_old with the new policy.
                for key, values in self.auxiliary_phase(rollout.iteration).items():
                    stats[key] += values
                self.sync_weights()  # the phase's wall time ends when every rank holds its result
                self.aux_phases += 1
            self.store.clear()
            self.phase_iteration = 0
            # Update time of the whole phase (rollout collection is perf/rollout_time, per iteration).
            info["perf/policy_phase_time"], self.policy_phase_time = self.policy_phase_time, 0.0
            info["perf/aux_phase_time"] = time.perf_counter() - start
            info["perf/update_time"] += info["perf/aux_phase_time"]
        info["train/aux_phases"] = float(self.aux_phases)

    def auxiliary_phase(self, iteration: int) -> Stats:
        """Runs E_aux epochs over the stored rollouts: each minibatch gets one step of L_joint with the actor
        optimizer and one of L_value with the critic's, in ``update_order``."""
        hp = self.hparams
        data = self.take_aux_batch()
        size = hp.aux_minibatch_size  # sequences
        if hp.aux_minibatch == "samples":  # single steps: the valid ones, flat; as many as `size` sequences hold
            size *= data["returns"].shape[1]
            valid = data.pop("valid")
            data = flatten_valid({key: value for key, value in data.items() if key != "starts"}, valid)
        # Minibatches of whole sequences (each with its initial state, when recurrent) or of single steps.
        specs = self.aux_role_specs(-(-len(data["returns"]) // size))
        learning = [role for role in ROLES if self.learns(role, iteration)]
        if self.compiled is not None:
            return self.compiled.interleaved(data, specs, self.role_order(), learning, "auxiliary-phase",
                                             joint=hp.arch == "separate")
        return interleaved_epochs([self.updaters[role] for role in self.role_order()], specs, learning, data,
                                  "auxiliary-phase")

    def aux_role_specs(self, minibatches: int) -> dict[str, RoleSpec]:
        """Declares each role's update in the auxiliary phase: ``aux_epochs`` epochs of ``minibatches`` minibatches
        from the ``aux`` stream, which both roles step on in turn; the actor's loss is L_joint, the critic's L_value."""
        hp = self.hparams
        return {"actor": RoleSpec(self.aux_actor_loss, hp.aux_epochs, "aux", minibatches),
                "critic": RoleSpec(self.aux_critic_loss, hp.aux_epochs, "aux", minibatches)}

    @torch.no_grad()
    def take_aux_batch(self) -> dict[str, Tensor]:
        """Empties the store into the auxiliary phase's batch: ``[sequences, T, ...]`` tensors (one sequence per
        env and rollout, with its ``valid`` and ``starts`` flags, and its initial ``state`` when recurrent), with
        value targets from the current critic and the current policy's parameters as ``old_params``."""
        assert self.agent is not None
        hp = self.hparams
        length = max(r["rewards"].shape[0] for r in self.store.rollouts)
        time_fields = self.store.time_fields()
        parts: dict[str, list[Tensor]] = defaultdict(list)
        for stored in self.store.rollouts:
            r = {key: t.to(self.device) for key, t in stored.items()}
            T, N = r["rewards"].shape
            if self.agent.recurrent:  # the current networks unrolled from the state stored at the rollout start
                history = History(r["starts"], r["initial_state"])
                dist, values = self.agent(r["obs"], history)
                old_params = dist.params().view(T, N, -1)
                assert history.final_state is not None
                last = History(r["last_start"].unsqueeze(0), history.final_state)
                last_value = self.agent.value(r["last_obs"].unsqueeze(0), last)
                values = values.view(T, N)
            else:
                values = in_chunks(self.agent.value, r["obs"].flatten(0, 1)).view(T, N)
                old_params = in_chunks(lambda o: self.agent.dist(o).params(), r["obs"].flatten(0, 1)).view(T, N, -1)
                last_value = self.agent.value(r["last_obs"])
            next_values = torch.cat([values[1:], last_value.unsqueeze(0)])
            _, returns = gae(r["rewards"], values, next_values, r["terminated"], r["truncated"], hp.gamma, hp.gae_lambda)
            # Every stored time-major field (obs, flags, rewards, and any a Rollout subclass declares stored).
            fields = {**{key: r[key] for key in time_fields}, "returns": returns, "old_params": old_params}
            # Time-major [T, N, ...] -> [N, T, ...] sequences; a shorter last rollout is padded as invalid.
            for key, value in to_sequences({key: pad_time(value, length) for key, value in fields.items()}, length).items():
                parts[key].append(value)
            if self.agent.recurrent:
                parts["state"].append(r["initial_state"])
        self.store.clear()
        return {key: torch.cat(values) for key, values in parts.items()}

    def aux_actor_loss(self, share: Share) -> tuple[Any, dict[str, Tensor]]:
        """Computes ``L_joint = L_aux + beta_clone * KL(pi_old || pi)`` (+ the value head's loss on a shared trunk)."""
        assert self.agent is not None
        mb, weight = share.data, share.weight
        dist, aux_values, values = self.agent.forward_aux(mb["obs"], self.agent.shares_trunk, share.history)
        bc_kl = clone_kl(self.agent.policy_head.from_params(mb["old_params"]), dist)
        loss_aux = aux_value_loss(aux_values, mb["returns"])
        loss = loss_aux + self.hparams.beta_clone * bc_kl
        if values is not None:  # shared trunk: the value head's loss reaches the trunk here
            loss = self.combine(loss, aux_value_loss(values, mb["returns"]))
        loss = tuple(weight * term for term in loss) if isinstance(loss, tuple) else weight * loss
        return loss, {"aux_value_loss": loss_aux.detach(), "bc_kl": bc_kl.detach()}

    def aux_critic_loss(self, share: Share) -> tuple[Tensor, dict[str, Tensor]]:
        """Computes ``L_value``: the value network's squared error on the recomputed targets."""
        assert self.agent is not None
        loss = aux_value_loss(self.agent.value(share.data["obs"], share.history), share.data["returns"])
        return share.weight * loss, {"aux_phase_value_loss": loss.detach()}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ppg"] = {"phase_iteration": self.phase_iteration, "aux_phases": self.aux_phases,
                             "policy_phase_time": self.policy_phase_time,
                             "store": self.store.state_dict() if self.hparams.store_in_checkpoint else []}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {})
        if saved.get("arch") == "dual":  # the paper's name for separate: the same networks, which resuming must accept
            saved["arch"] = "separate"
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("ppg")
        if state is None:
            raise ConfigError("ckpt_path: the checkpoint was not written by PPG (no 'ppg' state); resume it with "
                              "the model class that wrote it, or start without --ckpt_path.")
        self.phase_iteration = int(state["phase_iteration"])
        self.aux_phases = int(state["aux_phases"])
        self.policy_phase_time = float(state.get("policy_phase_time", 0.0))
        self.store.load_state_dict(state["store"])
