"""One role's update: its optimizer steps, its epochs over minibatches, and this process's share of each.

The algorithm (:class:`~lit_rl.algos.ppo.PPO`) says which roles learn, in what order, and with which loss;
a :class:`RoleUpdater` runs them. Under any :class:`~lit_rl.distributed.placement.Placement` the code is the
same: with one process the share is the whole minibatch and the gradient sum passes through; with several
processes in a role's group, each computes its contiguous share of every minibatch, weighted by its size,
and the gradients are summed over the group, so the step is the whole minibatch's.

A loss function takes a :class:`Share` and returns ``(loss, stats)``: the loss already weighted by the
share's ``weight`` (or a tuple of weighted terms that share a trunk, combined by gradient surgery), and the
unweighted stats of the share, which the updater scales so the group's mean is the minibatch's.
"""

import contextlib
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional

import lightning as L
import torch
from torch import Tensor
from torch.optim import Optimizer

from lit_rl.distributed.placement import Placement
from lit_rl.errors import NonFiniteLossError
from lit_rl.objectives import pcgrad
from lit_rl.nets import History

Stats = dict[str, list[Tensor]]


@dataclass
class Share:
    """This process's share of one minibatch: its valid samples as flat tensors (``obs`` stays ``[L, B, ...]``
    for a recurrent pass), the :class:`History` that pass needs, the share's ``weight`` (its fraction of the
    minibatch's valid samples), and the whole minibatch's valid samples of a field, by ``whole(key)``."""

    data: dict[str, Tensor]
    history: Optional[History]
    weight: float
    whole: Callable[[str], Tensor]


LossFn = Callable[[Share], tuple[Any, dict[str, Tensor]]]


class Shuffler:
    """Minibatch orders: one random stream per role (actor, critic, PPG's aux), each seeded from the run's seed
    and the role's name, so a role's minibatches do not depend on which other roles ran before it, or on which
    process runs it. Its state goes into checkpoints."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.generators: dict[str, torch.Generator] = {}

    def split(self, size: int, stream: str, count: int, device: torch.device) -> tuple[Tensor, ...]:
        """One epoch: a shuffle of ``size`` rows split into exactly ``count`` minibatches whose sizes differ by at
        most one row; as many one-row minibatches as there are rows where there are fewer rows than that."""
        if stream not in self.generators:
            # crc32, not hash(): str hashes differ between processes.
            self.generators[stream] = torch.Generator().manual_seed(hash((self.seed, zlib.crc32(stream.encode()))) & (2**63 - 1))
        order = torch.randperm(size, generator=self.generators[stream]).to(device)
        return torch.tensor_split(order, max(1, min(count, size)))

    def state_dict(self) -> dict[str, Tensor]:
        return {stream: g.get_state() for stream, g in self.generators.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for stream, value in state.items():
            self.generators[stream] = torch.Generator()
            self.generators[stream].set_state(value)


class RoleUpdater:
    """Runs one role's optimizer steps (``role``: ``actor`` or ``critic``) for ``module``, which owns the
    optimizer (Lightning's ``module.optimizers()[index]``) and the networks.

    Args:
        module: The LightningModule under manual optimization.
        role: The role's name.
        index: The position of the role's optimizer in ``module.optimizers()``.
        placement: Where the roles run.
        max_grad_norm: The role's gradient-norm clip; None for none.
        on_non_finite: Builds the error message for a non-finite loss, given the step's name and the loss.
    """

    def __init__(self, module: L.LightningModule, role: str, index: int, placement: Placement,
                 max_grad_norm: Optional[float], on_non_finite: Callable[[str, Tensor], str]) -> None:
        self.module = module
        self.role = role
        self.index = index
        self.placement = placement
        self.max_grad_norm = max_grad_norm
        self.on_non_finite = on_non_finite
        self.steps = 0  # optimizer steps taken by this process

    @property
    def optimizer(self) -> Any:
        return self.module.optimizers()[self.index]

    # ------------------------------------------------------------------ epochs
    def epochs(self, batch: dict[str, Tensor], loss_fn: LossFn, epochs: int, minibatches: Callable[[], tuple[Tensor, ...]],
               what: str, stop: Optional[Callable[[Tensor], bool]] = None) -> Stats:
        """``epochs`` epochs of one optimizer step per minibatch (``minibatches()`` gives an epoch's row
        indices into ``batch``). ``stop``, given the epoch's mean approx KL over the role's group, ends the
        epochs early; every process of the group sees the same value, so all stop together."""
        stats: Stats = defaultdict(list)
        check = DeferredCheck()
        with self.module.toggled_optimizer(self.optimizer):  # once for all the role's steps
            for _ in range(epochs):
                epoch_kl: list[Tensor] = []
                for idx in minibatches():
                    step_stats = self.step(lambda: self.call(loss_fn, batch, idx), what, toggle=False, check=check)
                    for key, value in step_stats.items():
                        stats[key].append(value)
                    if stop is not None:
                        epoch_kl.append(step_stats["approx_kl"])
                if stop is not None and stop(self.placement.reduce_mean(torch.stack(epoch_kl).mean(), self.role)):
                    break
        check.raise_if_non_finite(self.on_non_finite)
        return stats

    def call(self, loss_fn: LossFn, batch: dict[str, Tensor], idx: Tensor) -> tuple[Any, dict[str, Tensor]]:
        """``loss_fn`` on this process's share of minibatch ``idx``; its stats scaled by the share."""
        share = self.share(batch, idx)
        loss, stats = loss_fn(share)
        return loss, {key: self.scale_stat(value, share.weight) for key, value in stats.items()}

    # ------------------------------------------------------------------ shares
    def share(self, batch: dict[str, Tensor], idx: Tensor) -> Share:
        """This process's share of minibatch ``idx`` of ``batch``, as its place in the role's group says."""
        return share_of(batch, idx, *self.placement.member(self.role))

    def scale_stat(self, value: Tensor, weight: float) -> Tensor:
        """A statistic of this process's share, scaled so that the mean over the role's group (how stats are
        merged, and the target-KL check averages) is the whole minibatch's, weighted by the shares' sizes; an
        empty share adds nothing. One process: ``value`` itself."""
        group = self.placement.group_size(self.role)
        return value if group == 1 else value * (weight * group)

    # ------------------------------------------------------------------ one step
    def step(self, loss_fn: Callable[[], tuple[Any, dict[str, Tensor]]], what: str, toggle: bool = True,
             check: Optional["DeferredCheck"] = None) -> dict[str, Tensor]:
        """One step of the role's optimizer: toggle, loss, zero_grad, backward, the group's gradient sum, clip,
        step, untoggle (``toggle=False``: the caller has toggled the optimizer for all its steps).

        The toggle freezes every parameter this optimizer does not own, so a shared trunk is trained only by
        the optimizer that owns it. A non-finite loss stops training before its update is applied (on every
        process of the group). Given a ``check`` (the epochs' :class:`DeferredCheck`), an optimizer that can
        skip a step on a device flag (a fused one, as AMP's grad scaler uses it; not under a grad scaler, which
        sets its own) and one process in the role's group, the check costs no host sync: the flag makes the
        optimizer skip this step and every later one of the check, and the caller raises at the end, naming
        the first non-finite loss. ``loss_fn`` may return a tuple of loss terms: their gradients are combined by
        gradient surgery.
        """
        module, optimizer = self.module, self.optimizer
        raw = optimizer.optimizer
        scaler = getattr(getattr(module.trainer, "precision_plugin", None), "scaler", None)
        defer = (check is not None and getattr(raw, "_step_supports_amp_scaling", False) and scaler is None
                 and self.placement.group_size(self.role) == 1)
        with module.toggled_optimizer(optimizer) if toggle else contextlib.nullcontext():
            loss, stats = loss_fn()
            terms = loss if isinstance(loss, tuple) else (loss,)
            total = sum(terms)
            if defer:
                assert check is not None
                check.add(what, total)
                finite = True
            else:
                finite = bool(torch.isfinite(total))
            if not finite and self.placement.group_size(self.role) == 1:
                raise NonFiniteLossError(self.on_non_finite(what, total))
            optimizer.zero_grad(set_to_none=True)
            if len(terms) > 1:
                stats = {**stats, **self.backward_with_surgery(optimizer, terms)}
            else:
                module.manual_backward(total)
            # A non-finite share makes the group's sum non-finite on every process: all stop together.
            summed_finite = self.placement.reduce_gradients(trainable(optimizer), self.role)
            if not (finite and summed_finite):
                raise NonFiniteLossError(self.on_non_finite(what, total))
            if self.max_grad_norm is not None:
                module.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
            if defer:
                assert check is not None
                raw.found_inf = check.found_inf  # the fused step applies nothing while it is 1
            try:
                optimizer.step()
            finally:
                if defer:
                    raw.__dict__.pop("found_inf", None)
            self.steps += 1
        return stats

    def backward_with_surgery(self, optimizer: Optimizer, terms: tuple[Tensor, ...]) -> dict[str, Tensor]:
        """Backward of each term apart, then PCGrad on the parameters that two or more terms reach (the shared
        trunk); a parameter one term reaches keeps that gradient, one no term reaches keeps none."""
        params = trainable(optimizer)
        per_term: list[list[Optional[Tensor]]] = []
        for i, term in enumerate(terms):
            self.module.manual_backward(term, retain_graph=i < len(terms) - 1)
            per_term.append([p.grad for p in params])
            optimizer.zero_grad(set_to_none=True)
        shared = [j for j in range(len(params)) if sum(g[j] is not None for g in per_term) > 1]
        for j, p in enumerate(params):
            grads = [g[j] for g in per_term if g[j] is not None]
            p.grad = grads[0] if len(grads) == 1 else None
        if not shared:
            return {}
        flat = [torch.cat([(g[j] if g[j] is not None else torch.zeros_like(params[j])).flatten() for j in shared])
                for g in per_term]
        combined, stats = pcgrad(flat)
        offset = 0
        for j in shared:
            params[j].grad = combined[offset:offset + params[j].numel()].view_as(params[j]).clone()
            offset += params[j].numel()
        return stats


def share_of(batch: dict[str, Tensor], idx: Tensor, member: int = 0, ranks: int = 1) -> Share:
    """Share ``member`` of ``ranks`` of minibatch ``idx`` of ``batch`` (by default: the whole minibatch).

    ``batch`` holds flat samples, or sequences (``[U, L, ...]`` with ``valid`` and ``starts``; a recurrent batch
    also has each sequence's initial ``state``); ``idx`` picks rows of it. With several ranks, each takes a
    contiguous share of the rows, weighted by its fraction of the minibatch's valid samples, so the summed
    gradients are the whole minibatch's mean gradient. One rank: all rows (a view, no copy), weight 1.
    """
    if ranks == 1:
        part, fraction = slice(None), 1.0
    else:
        start, stop = member * len(idx) // ranks, (member + 1) * len(idx) // ranks
        part, fraction = slice(start, stop), (stop - start) / max(len(idx), 1)
    if "valid" not in batch:
        # An empty share (a minibatch smaller than the group) computes its loss on one row with weight 0: it
        # adds nothing, and reaches the same parameters as the other ranks' shares.
        rows = idx[part] if fraction > 0 else idx[:1]
        return Share({key: value[rows] for key, value in batch.items()}, None, fraction, lambda key: batch[key][idx])
    counts = batch["valid"][idx].sum(1)
    weight = float(counts[part].sum() / counts.sum().clamp(min=1))
    rows = idx[part] if weight > 0 else idx[counts.argmax()].view(1)
    seq = {key: value[rows].transpose(0, 1) for key, value in batch.items() if key != "state"}  # [L, B, ...]
    valid, starts = seq.pop("valid").flatten(), seq.pop("starts", None)
    data = {key: value.flatten(0, 1)[valid] for key, value in seq.items()}
    whole = lambda key: batch[key][idx][batch["valid"][idx]]  # noqa: E731
    if "state" not in batch:  # sequences of a feed-forward policy: flat samples
        return Share(data, None, weight, whole)
    assert starts is not None
    data["obs"] = seq["obs"]
    return Share(data, History(starts, batch["state"][rows], valid), weight, whole)


class DeferredCheck:
    """The non-finite check of a run of optimizer steps, with one host sync at its end: each step's loss in
    the order taken, and ``found_inf``, a device flag that is 1 from the first non-finite loss on (for the
    fused optimizers' skip; shared by every role that steps under it, so none applies an update after it)."""

    def __init__(self) -> None:
        self.losses: list[tuple[str, Tensor]] = []
        self.found_inf: Optional[Tensor] = None

    def add(self, what: str, total: Tensor) -> None:
        total = total.detach()
        self.losses.append((what, total))
        bad = (~torch.isfinite(total)).float()
        self.found_inf = bad if self.found_inf is None else torch.maximum(self.found_inf, bad)

    def raise_if_non_finite(self, on_non_finite: Callable[[str, Tensor], str]) -> None:
        """A NonFiniteLossError naming the first non-finite loss, if there was one."""
        if not self.losses:
            return
        finite = torch.isfinite(torch.stack([total for _, total in self.losses]))
        if bool(finite.all()):
            return
        raise NonFiniteLossError(on_non_finite(*self.losses[int((~finite).nonzero()[0])]))


def interleaved_epochs(steps: list[tuple["RoleUpdater", LossFn]], batch: dict[str, Tensor], epochs: int,
                       minibatches: Callable[[], tuple[Tensor, ...]], what: str) -> Stats:
    """``epochs`` epochs in which every minibatch gets one step of each role in ``steps``, in that order (PPG's
    auxiliary phase: the roles take turns on the same minibatches). One deferred non-finite check covers
    every role's steps."""
    stats: Stats = defaultdict(list)
    check = DeferredCheck()
    for _ in range(epochs):
        for idx in minibatches():
            for updater, loss_fn in steps:
                step_stats = updater.step(lambda: updater.call(loss_fn, batch, idx), f"{what} {updater.role}", check=check)
                for key, value in step_stats.items():
                    stats[key].append(value)
    if steps:
        check.raise_if_non_finite(steps[0][0].on_non_finite)
    return stats


def count_steps_of_other_roles(trainer: L.Trainer, steps: int) -> None:
    """Adds ``steps`` optimizer steps that other processes took (for the roles this one does not train) to
    Lightning's count, so ``trainer.global_step`` is the run's on every process: what one process holding
    every role counts. Lightning's checkpoint callbacks compare it between saves on every process; a
    process whose count stood still (a rollout rank, or an actor rank during the critic warm-up) would skip
    a save the others make, and their collectives would no longer match."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    for _ in range(steps):
        progress.increment_ready()
        progress.increment_completed()


def trainable(optimizer: Optimizer) -> list[Tensor]:
    """The parameters ``optimizer`` steps that the toggle left trainable."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
