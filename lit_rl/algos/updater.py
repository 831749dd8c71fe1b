"""Runs one role's update: its epochs over minibatches it draws itself, its optimizer steps, and this process's
share of each minibatch.

The algorithm declares each role's update (:class:`~lit_rl.algos.roles.RoleSpec`) and says which roles learn, in
what order; a :class:`RoleUpdater` runs it. Under any :class:`~lit_rl.algos.roles.Placement` the code is the
same: with one process the share is the whole minibatch and the gradient sum passes through; with several
processes in a role's group, each computes its contiguous share of every minibatch, weighted by its size, and
the gradients are summed over the group, so the step is the whole minibatch's. A non-finite loss stops training
before its update is applied (:class:`NonFiniteCheck`, :class:`DeferredCheck`).
"""

import zlib
from collections import defaultdict
from contextlib import AbstractContextManager
from typing import Any, Collection, NoReturn, Optional

import lightning as L
import torch
from torch import Tensor
from torch.optim import Optimizer

from lit_rl.algos.roles import ROLES, LossFn, Placement, RoleSpec, Share, Stats
from lit_rl.errors import NonFiniteLossError
from lit_rl.nets import History
from lit_rl.objectives import pcgrad


class Shuffler:
    """Draws minibatch orders: one random stream per role (actor, critic, PPG's aux), each seeded from the run's seed
    and the role's name, so a role's minibatches do not depend on which other roles ran before it, or on which
    process runs it. Its state goes into checkpoints."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.generators: dict[str, torch.Generator] = {}

    def split(self, size: int, stream: str, count: int, device: torch.device) -> tuple[Tensor, ...]:
        """Draws one epoch: a shuffle of ``size`` rows split into exactly ``count`` minibatches whose sizes differ by at
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


# Non-finite losses: a check watches a run of optimizer steps (a role's epochs, or PPG's auxiliary phase) and
# stops training before a non-finite loss's update is applied, naming the loss and the last good checkpoint.
# NonFiniteCheck checks each loss on the host as it comes (one sync per step); DeferredCheck costs no host sync
# until the end of the run: a fused optimizer skips every step from the first non-finite loss on, on a device
# flag, and the end raises naming that loss.


class NonFiniteCheck:
    """Checks each loss on the host as it comes. A lone process in the role's group (``lone``) raises before the
    backward pass; in a larger group every process raises after the gradient sum, which a non-finite share makes
    non-finite on every process, so all stop together."""

    def __init__(self, module: L.LightningModule, lone: bool) -> None:
        self.module = module
        self.lone = lone
        self.last: tuple[str, Tensor] = ("", torch.zeros(()))  # the step's name and loss
        self.finite = True

    def loss(self, what: str, total: Tensor) -> None:
        """Takes the step's loss before the backward pass."""
        self.last, self.finite = (what, total), bool(torch.isfinite(total))
        if not self.finite and self.lone:
            self.fail(*self.last)

    def gradients(self, summed_finite: bool) -> None:
        """Takes whether the gradients summed over the role's group are finite."""
        if not (self.finite and summed_finite):
            self.fail(*self.last)

    def step(self, optimizer: Any) -> None:
        """Steps ``optimizer``, a LightningOptimizer."""
        optimizer.step()

    def end(self) -> None:
        """Ends the run of steps; every loss has been checked already."""

    def fail(self, what: str, loss: Tensor) -> NoReturn:
        raise NonFiniteLossError(non_finite_message(self.module, what, loss))


class DeferredCheck(NonFiniteCheck):
    """Checks the losses of a run of steps with one host sync, at its end. For an optimizer that can skip a step on
    a device flag (a fused one, as AMP's grad scaler uses it) on a lone process: ``found_inf`` is 1 from the first
    non-finite loss on, and the optimizer applies nothing while it is; every role that steps under one check
    shares it (PPG's auxiliary phase), so none applies an update after it. :meth:`end` raises naming the first
    non-finite loss."""

    def __init__(self, module: L.LightningModule) -> None:
        super().__init__(module, lone=True)
        self.losses: list[tuple[str, Tensor]] = []  # every step's loss, in the order taken
        self.found_inf: Optional[Tensor] = None

    def loss(self, what: str, total: Tensor) -> None:
        self.last = (what, total.detach())
        self.losses.append(self.last)
        bad = (~torch.isfinite(self.last[1])).float()
        self.found_inf = bad if self.found_inf is None else torch.maximum(self.found_inf, bad)

    def step(self, optimizer: Any) -> None:
        raw = optimizer.optimizer
        raw.found_inf = self.found_inf  # the fused step reads it, as it reads a grad scaler's
        try:
            optimizer.step()
        finally:
            raw.__dict__.pop("found_inf", None)

    def record(self, what: str, loss: Tensor, found_inf: Tensor) -> None:
        """Takes a step that applied its own update, or none (a compiled step): its loss, and ``found_inf`` as the
        step left it."""
        self.last = (what, loss.detach())
        self.losses.append(self.last)
        self.found_inf = found_inf

    def end(self) -> None:
        if not self.losses:
            return
        finite = torch.isfinite(torch.stack([total for _, total in self.losses]))
        if not bool(finite.all()):
            self.fail(*self.losses[int((~finite).nonzero()[0])])


def non_finite_message(module: Any, what: str, loss: Tensor) -> str:
    """Says which loss became non-finite and when, that its update was not applied, which checkpoint is the last
    good one, and what to try; ``module`` is the algorithm (it counts the run's ``env_steps``)."""
    callback = getattr(module.trainer, "checkpoint_callback", None)
    last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    kept = f"The last good checkpoint is {last}." if last else "No checkpoint had been saved yet."
    return (f"The {what} loss is {loss.item()} in the update after {module.env_steps} env steps were collected; "
            "training stopped before "
            f"this update was applied. {kept} Lower the learning rate, turn on data.normalize_observation / "
            "data.normalize_reward, or check the env's rewards and observations for NaN/inf.")


class RoleUpdater:
    """Runs one role's optimizer steps (``role``: ``actor`` or ``critic``) for ``module``, which owns the networks
    and the role's optimizer (Lightning's ``module.optimizers()``, in :data:`~lit_rl.algos.roles.ROLES` order).

    Args:
        module: The LightningModule under manual optimization.
        role: The role's name.
        placement: Where the roles run.
        shuffler: The minibatch orders, one stream per role, shared by every role's updater.
        max_grad_norm: The role's gradient-norm clip; None for none.
    """

    def __init__(self, module: L.LightningModule, role: str, placement: Placement, shuffler: Shuffler,
                 max_grad_norm: Optional[float]) -> None:
        self.module = module
        self.role = role
        self.placement = placement
        self.shuffler = shuffler
        self.max_grad_norm = max_grad_norm
        self.steps = 0  # optimizer steps taken by this process

    @property
    def optimizer(self) -> Any:
        """Returns the role's optimizer, as Lightning wraps it."""
        return self.module.optimizers()[ROLES.index(self.role)]

    def toggled(self) -> AbstractContextManager:
        """Freezes, for a ``with`` block, every parameter that the role's optimizer does not own, so a shared trunk is
        trained only by the optimizer that owns it."""
        return self.module.toggled_optimizer(self.optimizer)

    def check(self, run: Optional[DeferredCheck] = None) -> NonFiniteCheck:
        """Picks the non-finite check of the role's steps: ``run``, the deferred check of the steps they belong to,
        where the optimizer can skip a step on a device flag, no grad scaler sets that flag (a scaler sets its own,
        per step) and the role's group is this process alone; else an eager check."""
        scaler = getattr(getattr(self.module.trainer, "precision_plugin", None), "scaler", None)
        lone = self.placement.group_size(self.role) == 1
        fused = getattr(self.optimizer.optimizer, "_step_supports_amp_scaling", False)
        return run if run is not None and fused and scaler is None and lone else NonFiniteCheck(self.module, lone)

    # ------------------------------------------------------------------ epochs
    def epochs(self, batch: dict[str, Tensor], spec: RoleSpec) -> Stats:
        """Runs the role's update as ``spec`` declares it: its epochs of one optimizer step per minibatch of
        ``batch``, each epoch's minibatches drawn from the spec's stream. With ``spec.target_kl`` the epochs end once
        an epoch's mean approx KL over the role's group exceeds it; every process of the group sees the same mean,
        so all stop together."""
        stats: Stats = defaultdict(list)
        rows, run = len(batch["returns"]), DeferredCheck(self.module)
        check = self.check(run)
        with self.toggled():  # once for all the role's steps
            for _ in range(spec.epochs):
                minibatches = self.shuffler.split(rows, spec.stream, spec.minibatches, self.module.device)
                for idx in minibatches:
                    append_step(stats, self.step(spec.loss, self.share(batch, idx), self.role, check))
                if self.kl_stops(stats, len(minibatches), spec):
                    break
        run.end()
        return stats

    def kl_stops(self, stats: Stats, steps: int, spec: RoleSpec) -> bool:
        """Says whether the role's epochs end after the epoch of the last ``steps`` steps: its mean approx KL over
        the role's group exceeds ``spec.target_kl``."""
        return spec.target_kl is not None and bool(self.epoch_kl(stats, steps) > spec.target_kl)

    def epoch_kl(self, stats: Stats, steps: int) -> Tensor:
        """Averages the approx KL of the last ``steps`` steps (an epoch's) over them and over the role's group."""
        return self.placement.reduce_mean(torch.stack(stats["approx_kl"][-steps:]).mean(), self.role)

    # ------------------------------------------------------------------ shares
    def share(self, batch: dict[str, Tensor], idx: Tensor) -> Share:
        """Cuts this process's share of minibatch ``idx`` of ``batch``, as its place in the role's group says."""
        return share_of(batch, idx, *self.placement.member(self.role))

    def scale_stat(self, value: Tensor, weight: float) -> Tensor:
        """Scales a statistic of this process's share so that the mean over the role's group (how stats are
        merged, and the target-KL check averages) is the whole minibatch's, weighted by the shares' sizes; an
        empty share adds nothing. One process: ``value`` itself."""
        group = self.placement.group_size(self.role)
        return value if group == 1 else value * (weight * group)

    # ------------------------------------------------------------------ one step
    def step(self, loss_fn: LossFn, share: Share, what: str,
             check: Optional[NonFiniteCheck] = None) -> dict[str, Tensor]:
        """Takes one step of the role's optimizer on ``loss_fn`` of ``share``, inside the role's :meth:`toggled`:
        loss, backward (gradient surgery where the loss is a tuple of terms), the sum over the role's group, clip,
        step. ``check`` (default: an eager one) stops training at a non-finite loss, named ``what``, before its
        update is applied. Returns the step's stats, the loss's scaled by the share (:meth:`scale_stat`)."""
        optimizer, check = self.optimizer, check or self.check()
        loss, stats = loss_fn(share)
        stats = {key: self.scale_stat(value, share.weight) for key, value in stats.items()}
        terms = loss if isinstance(loss, tuple) else (loss,)
        total = sum(terms)
        check.loss(what, total)
        optimizer.zero_grad(set_to_none=True)
        if len(terms) > 1:
            stats.update(self.backward_with_surgery(optimizer, terms))
        else:
            self.module.manual_backward(total)
        check.gradients(self.placement.reduce_gradients(trainable(optimizer), self.role))
        if self.max_grad_norm is not None:
            self.module.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        check.step(optimizer)
        self.steps += 1
        return stats

    def backward_with_surgery(self, optimizer: Optimizer, terms: tuple[Tensor, ...]) -> dict[str, Tensor]:
        """Runs the backward pass of each term apart, then PCGrad on the parameters that two or more terms reach
        (the shared trunk); a parameter one term reaches keeps that gradient, one no term reaches keeps none."""
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
    """Cuts share ``member`` of ``ranks`` of minibatch ``idx`` of ``batch`` (by default: the whole minibatch).

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


def interleaved_epochs(updaters: list[RoleUpdater], specs: dict[str, RoleSpec], learning: Collection[str],
                       batch: dict[str, Tensor], what: str) -> Stats:
    """Runs several roles' updates together (PPG's auxiliary phase): every minibatch gets one step of each role in
    ``learning``, in the order of ``updaters`` (every role's), on its loss in ``specs``. The specs share their epochs,
    stream and minibatch count. The first updater draws the minibatches on every process, whether or not it steps,
    so the stream stays the same on every process; one deferred non-finite check covers every role's steps."""
    first = updaters[0]
    spec = shared_minibatches(specs, first.role)
    stats: Stats = defaultdict(list)
    run = DeferredCheck(first.module)
    steps = [(updater, updater.check(run)) for updater in updaters if updater.role in learning]
    for _ in range(spec.epochs):
        for idx in first.shuffler.split(len(batch["returns"]), spec.stream, spec.minibatches, first.module.device):
            for updater, check in steps:
                with updater.toggled():
                    share = updater.share(batch, idx)
                    append_step(stats, updater.step(specs[updater.role].loss, share, f"{what} {updater.role}", check))
    run.end()
    return stats


def shared_minibatches(specs: dict[str, RoleSpec], first: str) -> RoleSpec:
    """Returns ``first``'s spec, checking that the roles updated together (PPG's auxiliary phase) take turns on
    the same minibatches: their specs share epochs, stream and minibatch count."""
    if len({(s.epochs, s.stream, s.minibatches) for s in specs.values()}) > 1:
        raise ValueError(f"roles updated together take turns on the same minibatches; their specs differ: {specs}")
    return specs[first]


def append_step(stats: Stats, step: dict[str, Tensor]) -> None:
    """Appends one step's values to ``stats``, by name."""
    for key, value in step.items():
        stats[key].append(value)


def count_optimizer_steps(trainer: L.Trainer, steps: int) -> None:
    """Adds ``steps`` optimizer steps that Lightning's optimizer wrapper did not take to Lightning's count: compiled
    steps (:mod:`lit_rl.algos.compiled`), and steps other processes took for the roles this one does not train, so
    ``trainer.global_step`` is the run's on every process: what one process holding every role counts.
    Lightning's checkpoint callbacks compare it between saves on every process; a process whose count stood still
    (a rollout rank, or an actor rank during the critic warm-up) would skip a save the others make, and their
    collectives would no longer match."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    for _ in range(steps):
        progress.increment_ready()
        progress.increment_completed()


def trainable(optimizer: Optimizer) -> list[Tensor]:
    """Lists the parameters ``optimizer`` steps that the toggle left trainable."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
