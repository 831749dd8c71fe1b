"""Defines the default LR schedules (linear annealing, constant) and puts any schedule's settings in words (what a
checkpoint records, so a resumed run can say how its schedule differs)."""

from typing import Any

from torch.optim.lr_scheduler import LambdaLR


class LinearDecay:
    """Gives the LR factor ``1 - iteration / num_iterations`` (CleanRL's annealing), floored at 0."""

    def __init__(self, num_iterations: int) -> None:
        self.num_iterations = num_iterations

    def __call__(self, iteration: int) -> float:
        return max(0.0, 1.0 - iteration / self.num_iterations)

    def __repr__(self) -> str:
        return f"linear decay to 0 over {self.num_iterations} iterations"


def constant(_: int) -> float:
    """Returns the LR factor 1: a constant learning rate."""
    return 1.0


# A schedule's progress, as opposed to its settings.
_SCHEDULE_PROGRESS = {"last_epoch", "_step_count", "_last_lr", "base_lrs", "_get_lr_called_within_step", "_is_initial",
                      "verbose", "lr_lambdas"}


def describe_schedule(scheduler: Any) -> str:
    """Puts an LR schedule's settings in words, e.g. ``linear decay to 0 over 64 iterations``."""
    if isinstance(scheduler, LambdaLR):
        return ", ".join("constant" if f is constant else repr(f) for f in scheduler.lr_lambdas)
    settings = {k: v for k, v in scheduler.state_dict().items() if k not in _SCHEDULE_PROGRESS}
    return f"{type(scheduler).__name__}({', '.join(f'{k}={v!r}' for k, v in sorted(settings.items()))})"
