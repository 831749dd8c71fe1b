"""Stops training at a non-finite loss before its update is applied, naming the loss and the last good checkpoint.

A :class:`NonFiniteCheck` watches a run of optimizer steps (a role's epochs, or PPG's auxiliary phase). The
updater tells it each step's loss before the backward pass (:meth:`~NonFiniteCheck.loss`), whether the gradients
summed over the role's group are finite (:meth:`~NonFiniteCheck.gradients`), lets it take the step
(:meth:`~NonFiniteCheck.step`), and ends the run with :meth:`~NonFiniteCheck.end`. Two forms:

- :class:`NonFiniteCheck` checks each loss on the host as it comes, one sync per step;
- :class:`DeferredCheck` costs no host sync until the end of the run: a fused optimizer skips every step from the
  first non-finite loss on, on a device flag, and the end raises naming that loss.
"""

from typing import Any, NoReturn, Optional

import lightning as L
import torch
from torch import Tensor

from lit_rl.errors import NonFiniteLossError


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
