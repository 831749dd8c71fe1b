"""Saves what an algorithm's checkpoint holds besides weights and optimizers, and lets a resumed fit take this
run's config.

A checkpoint carries, beside Lightning's own entries: the env-step count (for reading), each optimizer's class,
each LR schedule in words, the minibatch shuffle streams and every RNG's state. On resume (:class:`Resume`):

1. before anything is restored, a config that cannot apply to the saved networks or optimizer state is refused,
   with one line naming the key; every other difference is noted;
2. Lightning restores weights and optimizer state; the saved LR schedules are not loaded, only how far they ran;
3. when training starts, this run's optimizer settings replace the saved ones (moments and step counts stay), each
   schedule is rebuilt from this run's config and run forward to where the saved one was, and the differences
   from the checkpoint are printed.
"""

import random
import warnings
from typing import Any, Optional, Protocol

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lit_rl.algos.roles import ROLES, Placement
from lit_rl.algos.schedules import describe_schedule
from lit_rl.algos.updater import Shuffler
from lit_rl.errors import ConfigError


class Resumable(Protocol):
    """Describes what resuming uses of an algorithm beside a LightningModule's trainer, hyperparameters and state
    dict: its networks, env-step count, placement and shuffle streams, and how it makes each role's optimizer and
    LR schedule."""

    agent: Any
    hparams: Any
    placement: Placement
    shuffler: Shuffler
    _trainer: Any

    @property
    def trainer(self) -> Any: ...

    @property
    def env_steps(self) -> int: ...

    def make_optimizer(self, role: str, params: Optional[Any] = None) -> torch.optim.Optimizer: ...

    def make_scheduler(self, role: str, optimizer: torch.optim.Optimizer) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...


def differences(prefix: str, saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Lists ``prefix.key: old -> new`` for each setting whose value differs (internal ``_`` keys left out)."""
    unset = "(unset)"
    return [f"{prefix}.{key}: {saved.get(key, unset)!r} -> {current.get(key, unset)!r}"
            for key in sorted(set(saved) | set(current))
            if not key.startswith("_") and saved.get(key, unset) != current.get(key, unset)]


def rng_states() -> dict[str, Any]:
    """Returns every RNG's state (torch, CUDA, numpy, Python), in a form ``torch.load(weights_only=True)`` reads."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restores what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(states["python"])


class Resume:
    """Writes an algorithm's checkpoint entries, and resumes a fit from them (see the module docstring).

    The algorithm calls :meth:`save` and :meth:`load` from its checkpoint hooks and :meth:`apply_config` when a
    resumed fit starts training.
    """

    #: Hyperparameters that shape the networks, or only set their initial weights: with other values than the
    #: checkpoint's they could not take effect, so resuming with them is refused.
    network_hparams: tuple[str, ...] = ("arch", "hidden_sizes", "encoder", "image_layout", "activation",
                                        "log_std_init", "recurrent", "recurrent_size")

    def __init__(self) -> None:
        self.env_steps = 0  # the loaded checkpoint's count, for reading it without a datamodule
        # Of the checkpoint a fit resumes from: how its config differs, how far its LR schedules had run, and what
        # they were (noted by load, used by apply_config).
        self.notes: list[str] = []
        self.schedule_progress: list[int] = []
        self.saved_schedules: dict[str, str] = {}

    def save(self, module: Resumable, checkpoint: dict[str, Any]) -> None:
        trainer = module.trainer
        checkpoint["env_steps"] = module.env_steps  # for reading a checkpoint; the datamodule's state restores the count
        checkpoint["optimizer_classes"] = {role: type(opt).__name__ for role, opt in zip(ROLES, trainer.optimizers)}
        checkpoint["lr_schedules"] = {role: describe_schedule(config.scheduler)
                                      for role, config in zip(ROLES, trainer.lr_scheduler_configs)}
        # The critic's stream as the critic's first rank has it, the others as the actor's has them.
        by_actor, by_critic = (module.placement.from_role(module.shuffler.state_dict(), role) for role in ROLES)
        checkpoint["shuffle_generators"] = {**{k: v for k, v in by_actor.items() if k != "critic"},
                                            **{k: v for k, v in by_critic.items() if k == "critic"}}
        checkpoint["rng_states"] = rng_states()

    def load(self, module: Resumable, checkpoint: dict[str, Any]) -> None:
        self.notes = self.check(module, checkpoint)
        if module._trainer is not None and module.trainer.state.fn == "fit":
            # The schedules are rebuilt from this run's config (apply_config); of the checkpoint's, only how far
            # they have run is kept, so Lightning loads no scheduler state (of another class, it could not).
            self.schedule_progress = [int(state["last_epoch"]) for state in checkpoint.get("lr_schedulers", [])]
            self.saved_schedules = checkpoint.get("lr_schedules", {})
            checkpoint["lr_schedulers"] = []
        check_compatible(module, checkpoint.get("state_dict", {}))
        module.shuffler.load_state_dict(checkpoint.get("shuffle_generators", {}))
        self.env_steps = int(checkpoint.get("env_steps", 0))
        if checkpoint.get("rng_states"):
            set_rng_states(checkpoint["rng_states"])

    def check(self, module: Resumable, checkpoint: dict[str, Any]) -> list[str]:
        """Refuses, before anything is restored, a config that cannot apply to the checkpoint's networks and
        optimizer state (one line naming the key); returns how this run's model and data config differ from the
        checkpoint's, as ``key: old -> new`` lines. Everything else in this run's config applies."""
        trainer = module._trainer
        source = f"the checkpoint {trainer.ckpt_path}" if trainer is not None else "the checkpoint"
        hparams = checkpoint.get("hyper_parameters", {})
        saved_class = str(hparams.get("_class_path", "")).rpartition(".")[2]
        name = type(module).__name__
        if saved_class and saved_class != name:
            raise ConfigError(f"model.class_path: {source} was trained by {saved_class}, not {name}; "
                              f"resume it with model.class_path of {saved_class}, or start without --ckpt_path.")
        for key in self.network_hparams:
            if key in hparams and hparams[key] != module.hparams.get(key):
                if key in ("encoder", "image_layout") and same_networks(module, checkpoint, key, hparams[key]):
                    continue  # another spelling of the networks the checkpoint has (``same_networks``)
                raise ConfigError(
                    f"model.{key}: {source} was trained with {key}={hparams[key]!r}, this run asks for "
                    f"{module.hparams.get(key)!r}; that cannot apply to the saved networks. Resume with "
                    f"model.{key}={hparams[key]!r}, or start a new run without --ckpt_path.")
        fitting = trainer is not None and trainer.state.fn == "fit"  # not for evaluation alone
        for role, saved in checkpoint.get("optimizer_classes", {}).items() if fitting else ():
            configured = type(module.make_optimizer(role, [torch.nn.Parameter(torch.zeros(1))])).__name__
            if configured != saved:
                raise ConfigError(
                    f"model.{role}_optimizer: {source} was trained with {saved}, whose state cannot be loaded into "
                    f"{configured}. Resume with {saved}, or start a new run without --ckpt_path.")
        notes = differences("model", hparams, dict(module.hparams))
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        saved_data = checkpoint.get("datamodule_hyper_parameters", {})
        if datamodule is not None and saved_data:
            notes += differences("data", saved_data, dict(datamodule.hparams))
        return notes

    def apply_config(self, module: Resumable) -> None:
        """Lets this run's config take over, once Lightning has restored the optimizers from the checkpoint, where it
        can: each optimizer's hyperparameters (LR, betas, eps, ...) are the configured ones (its moments and step
        counts stay the checkpoint's), and each schedule is rebuilt from the config and run forward over the
        iterations the checkpoint's had run, so ``anneal_lr`` anneals over this run's budget and rollout size (an
        extended run does not train at LR 0). Prints what differs from the checkpoint."""
        trainer = module.trainer
        notes = list(self.notes)
        progress = self.schedule_progress
        for i, (role, optimizer, config) in enumerate(zip(ROLES, trainer.optimizers, trainer.lr_scheduler_configs)):
            for group, new in zip(optimizer.param_groups, module.make_optimizer(role).param_groups):
                for key, value in new.items():
                    old = group.get("initial_lr", group.get("lr")) if key == "lr" else group.get(key)
                    if key != "params" and old != value:
                        notes.append(f"model.{role}_optimizer.{key}: {old!r} -> {value!r}")
                group.update({key: value for key, value in new.items() if key != "params"}, initial_lr=new["lr"])
            done = progress[i] if i < len(progress) else 0
            with warnings.catch_warnings():  # the schedule is run forward before this run's first step
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                scheduler = module.make_scheduler(role, optimizer)
                for _ in range(done):
                    scheduler.step()
            after = describe_schedule(scheduler)
            before = self.saved_schedules.get(role, after)
            if before != after:
                notes.append(f"model.{role}_scheduler: {before} -> {after}")
            config.scheduler = scheduler
        if notes:
            rank_zero_info(f"Resuming from {trainer.ckpt_path} with this run's config, which differs from the "
                           "checkpoint's in:\n  " + "\n  ".join(notes))


def same_networks(module: Resumable, checkpoint: dict[str, Any], key: str, saved: str) -> bool:
    """Says whether this run's ``model.encoder`` / ``model.image_layout``, other than the checkpoint's ``saved``,
    names the networks the checkpoint has.

    - ``encoder``: one of the two is ``auto`` and this run's networks have the checkpoint's parameters, names and
      shapes (``auto`` picks by frame size since the MinAtar network came; a checkpoint from before, when it
      gave every image the IMPALA CNN, resumes with ``encoder: impala``).
    - ``image_layout``: every CNN of this run reads its frames as ``saved`` would read them (``auto`` and the
      layout it reads a shape as are the same networks; ``channels_last`` and ``channels_first`` never are).
    """
    from lit_rl.nets.encoders import ImageEncoder, image_layout

    if module.agent is None:
        return False
    if key == "encoder":
        own = {k: tuple(v.shape) for k, v in module.state_dict().items() if k.startswith("agent.")}
        theirs = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("agent.")}
        return "auto" in (saved, module.hparams.get(key)) and own == theirs
    encoders = [m for m in module.agent.modules() if isinstance(m, ImageEncoder)]
    try:
        return all(image_layout(m.space, "data.env_id", saved) == ((m.channels, m.height, m.width), m.channels_last)
                   for m in encoders)
    except ConfigError:
        return False


def check_compatible(module: torch.nn.Module, saved: dict[str, Tensor]) -> None:
    """Refuses, with one clear error instead of a shape dump, a checkpoint whose networks do not fit ``module``'s."""
    own = {k: v.shape for k, v in module.state_dict().items()}
    problems = [k for k in own if k not in saved] + [k for k in saved if k not in own]
    problems += [f"{k} {tuple(saved[k].shape)} vs {tuple(own[k])}" for k in own if k in saved and saved[k].shape != own[k]]
    if problems:
        raise ConfigError(
            f"ckpt_path: the checkpoint's networks do not match this model/env ({'; '.join(problems[:4])}). "
            "Use the config the checkpoint was trained with (same data.env_id, model.arch, model.hidden_sizes), "
            "or start without --ckpt_path."
        )
